// The only reader of process.env. Every variable is checked once at start-up, converted to the
// units the code uses (seconds -> ...Ms) and frozen; a bad value stops start-up naming it.
import { existsSync } from 'node:fs'
import { isIP } from 'node:net'
import { qtyPerHoldMax } from './domain/products.js'
import { sqlitePath, type EngineName } from './store/engines/engine.js'
import { batchLimit, type BatchVariable } from './store/statement-limits.js'

export type { EngineName } from './store/engines/engine.js'

export interface Config {
  readonly nodeEnv: string
  readonly port: number
  readonly host: string
  readonly databaseUrl: string
  readonly engine: EngineName
  readonly redisUrl: string | undefined
  readonly holdTtlMs: number
  readonly orderTtlMs: number
  readonly maxQtyPerHold: number
  readonly sweepIntervalMs: number
  readonly sweepBatchMax: number
  readonly idempotencyTtlMs: number
  readonly webhookSecret: string | undefined
  readonly webhookToleranceMs: number
  // Stripe's endpoint signing secret (whsec_…); POST /api/payments/stripe exists only when set.
  readonly stripeWebhookSecret: string | undefined
  readonly adminToken: string | undefined
  // HS256 secret of buyer tokens (SPEC §8); unset: the service takes no buyers.
  readonly buyerTokenSecret: string | undefined
  readonly logLevel: string
  readonly logFile: string | undefined
  readonly workers: number
  readonly trustProxy: boolean | number | string
  readonly rateLimitReadPerMin: number
  readonly rateLimitHoldPerMin: number
  readonly rateLimitOrderPerMin: number
  readonly holdBatchMax: number
  readonly orderBatchMax: number
  readonly webhookBatchMax: number
  // Requests waiting in one product's queue (each batcher, the coalesced reads); past it, 503 busy.
  readonly queueDepthMax: number
  // Products with a queue at once, per queue kind; past it, 503 busy.
  readonly queuedProductsMax: number
  // Idempotency keys being served at once in this process, per use case; past it, 503 busy.
  readonly inFlightKeysMax: number
  readonly txAttemptsMax: number
  readonly sqliteLockWaitMs: number
  // PostgreSQL and MySQL: how long a request waits for the database before 503 busy (0: for ever).
  readonly dbTimeoutMs: number
  readonly bodyBytesMax: number
  readonly seedStock: number
  // Registers POST /bench/hold-ceiling (the bench's ceiling phase); off by default.
  readonly benchCeilingRoute: boolean
}

export class ConfigError extends Error {
  override name = 'ConfigError'
}

const logLevels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']

type Env = Readonly<Record<string, string | undefined>>

function read(env: Env, name: string): string | undefined {
  const value = env[name]
  return value === undefined || value.trim() === '' ? undefined : value.trim()
}

function integer(env: Env, name: string, fallback: number, min: number, max: number): number {
  const raw = read(env, name)
  if (raw === undefined) return fallback
  if (!/^-?\d+$/.test(raw)) throw new ConfigError(`${name} must be an integer, got "${raw}"`)
  const value = Number(raw)
  if (value < min || value > max) throw new ConfigError(`${name} must be between ${min} and ${max}, got "${raw}"`)
  return value
}

// TTLs accept fractions ("0.5") so tests and demos can use sub-second expiry without sleeping long.
// Returned in milliseconds, at least 1: HOLD_TTL_SECONDS=0.0001 passed as positive and rounded to
// 0 ms, and every hold was created expired (the seventh probe).
function durationMs(env: Env, name: string, fallback: number, max: number, msPerUnit: number): number {
  const raw = read(env, name)
  if (raw === undefined) return Math.round(fallback * msPerUnit)
  const value = Number(raw)
  if (!/^\d+(\.\d+)?$/.test(raw) || !(value > 0) || value > max) {
    throw new ConfigError(`${name} must be a positive number up to ${max}, got "${raw}"`)
  }
  const ms = Math.round(value * msPerUnit)
  if (ms < 1) throw new ConfigError(`${name} must be at least one millisecond (${1 / msPerUnit}), got "${raw}"`)
  return ms
}

// A URL's password is never printed (configuration errors go to stderr and to logs).
function withoutPassword(url: string): string {
  return url.replace(/^([a-z][a-z0-9+.-]*:\/\/[^:/@]*:)[^@/]*@/i, '$1***@')
}

// Proxy-addr's forms: `true`/`false`, a hop count, or addresses, CIDR ranges and its three names.
// Anything else stopped the process with a stack trace from the library (TRUST_PROXY=yes), or,
// like `1`, was taken as an address no proxy has (the seventh probe).
function trustProxyOf(raw: string | undefined): boolean | number | string {
  if (raw === undefined || raw === 'false') return false
  if (raw === 'true') return true
  if (/^\d+$/.test(raw)) {
    const hops = Number(raw)
    if (hops >= 1 && hops <= 64) return hops
  }
  const entries = raw.split(',').map((entry) => entry.trim())
  const valid = (entry: string): boolean => {
    if (['loopback', 'linklocal', 'uniquelocal'].includes(entry)) return true
    const [address, prefix, ...rest] = entry.split('/')
    const version = isIP(address ?? '')
    if (version === 0 || rest.length > 0) return false
    if (prefix === undefined) return true
    return /^\d+$/.test(prefix) && Number(prefix) <= (version === 4 ? 32 : 128)
  }
  if (entries.length > 0 && entries.every(valid)) return raw
  throw new ConfigError(`TRUST_PROXY must be true, false, a hop count (1-64), or proxy addresses or CIDR ranges (or loopback, linklocal, uniquelocal) separated by commas, got "${raw}"`)
}

// The address to listen on: an IP address, or localhost. A name that does not resolve stopped
// the process with getaddrinfo's stack trace, never naming HOST (the seventh probe).
function hostOf(raw: string | undefined): string {
  if (raw === undefined) return '127.0.0.1'
  if (raw === 'localhost' || isIP(raw) !== 0) return raw
  throw new ConfigError(`HOST must be an IP address to listen on (or localhost), got "${raw}"`)
}

// A batch is written with multi-row statements; one statement takes a limited number of
// parameters on each engine, so a batch size whose statements cannot fit is refused here rather
// than failing every full batch at run time.
function batchSize(env: Env, name: BatchVariable, engine: EngineName, fallback: number, max: number): number {
  const value = integer(env, name, fallback, 1, max)
  const limit = batchLimit(engine, name)
  if (limit && value > limit.rowsMax) {
    throw new ConfigError(
      `${name} must be at most ${limit.rowsMax} on ${engine}: ${limit.statement} takes ${limit.parametersPerRow} parameters a row ` +
        `and ${engine} takes at most ${limit.statementParametersMax} in one statement, got "${read(env, name)}"`,
    )
  }
  return value
}

function engineOf(databaseUrl: string): EngineName {
  const engine = databaseUrl.startsWith('sqlite:')
    ? 'sqlite'
    : databaseUrl.startsWith('postgres://') || databaseUrl.startsWith('postgresql://')
      ? 'postgres'
      : databaseUrl.startsWith('mysql://') || databaseUrl.startsWith('mariadb://')
        ? 'mysql'
        : undefined
  if (engine === undefined) throw new ConfigError(`DATABASE_URL must start with sqlite:, postgres:// or mysql://, got "${withoutPassword(databaseUrl)}"`)
  // Checked here, so a bad one stops the start naming it: a URL the driver could not parse was a
  // stack trace printing the password, and an empty SQLite path (or :memory:) was a database
  // that lost every acknowledged write at exit (with WORKERS>1, one per process: 500s). The
  // seventh probe.
  if (engine === 'sqlite') {
    const path = sqlitePath(databaseUrl)
    if (path === '' || path === ':memory:') throw new ConfigError(`DATABASE_URL must name a SQLite file (the data must outlive the process), got "${databaseUrl}"`)
    return engine
  }
  let url: URL
  try {
    url = new URL(databaseUrl)
  } catch {
    throw new ConfigError(`DATABASE_URL is not a URL the ${engine} driver can read, got "${withoutPassword(databaseUrl)}"`)
  }
  if (url.hostname === '') throw new ConfigError(`DATABASE_URL must name the server's host, got "${withoutPassword(databaseUrl)}"`)
  if (engine === 'mysql' && url.pathname.replace(/^\//, '') === '')
    throw new ConfigError(`DATABASE_URL must name the database (mysql://user@host/name), got "${withoutPassword(databaseUrl)}"`)
  return engine
}

export function loadConfig(env: Env = process.env): Config {
  const nodeEnv = read(env, 'NODE_ENV') ?? 'development'
  const databaseUrl = read(env, 'DATABASE_URL') ?? 'sqlite:./data/flash-sale.db'
  const webhookSecret = read(env, 'WEBHOOK_SECRET')
  if (nodeEnv === 'production' && webhookSecret === undefined) {
    throw new ConfigError('WEBHOOK_SECRET is required when NODE_ENV=production')
  }
  const logLevel = read(env, 'LOG_LEVEL') ?? 'info'
  if (!logLevels.includes(logLevel)) throw new ConfigError(`LOG_LEVEL must be one of ${logLevels.join(', ')}, got "${logLevel}"`)
  const trustProxy = trustProxyOf(read(env, 'TRUST_PROXY'))
  const redisUrl = read(env, 'REDIS_URL')
  if (redisUrl !== undefined && !/^rediss?:\/\//.test(redisUrl)) throw new ConfigError(`REDIS_URL must start with redis://, got "${withoutPassword(redisUrl)}"`)

  const engine = engineOf(databaseUrl)
  const config: Config = {
    nodeEnv,
    port: integer(env, 'PORT', 8000, 0, 65_535),
    host: hostOf(read(env, 'HOST')),
    databaseUrl,
    engine,
    redisUrl,
    holdTtlMs: durationMs(env, 'HOLD_TTL_SECONDS', 120, 86_400, 1000),
    orderTtlMs: durationMs(env, 'ORDER_TTL_SECONDS', 900, 7 * 86_400, 1000),
    maxQtyPerHold: integer(env, 'MAX_QTY_PER_HOLD', 10, 1, qtyPerHoldMax),
    sweepIntervalMs: integer(env, 'SWEEP_INTERVAL_MS', 1000, 10, 3_600_000),
    sweepBatchMax: batchSize(env, 'SWEEP_BATCH_MAX', engine, 500, 100_000),
    idempotencyTtlMs: durationMs(env, 'IDEMPOTENCY_TTL_HOURS', 24, 24 * 365, 3_600_000),
    webhookSecret,
    webhookToleranceMs: 300_000,
    stripeWebhookSecret: read(env, 'STRIPE_WEBHOOK_SECRET'),
    adminToken: read(env, 'ADMIN_TOKEN'),
    buyerTokenSecret: read(env, 'BUYER_TOKEN_SECRET'),
    logLevel,
    logFile: read(env, 'LOG_FILE'),
    workers: integer(env, 'WORKERS', 1, 1, 64),
    trustProxy,
    rateLimitReadPerMin: integer(env, 'RATE_LIMIT_READ_PER_MIN', 6000, 0, 100_000_000),
    rateLimitHoldPerMin: integer(env, 'RATE_LIMIT_HOLD_PER_MIN', 600, 0, 100_000_000),
    rateLimitOrderPerMin: integer(env, 'RATE_LIMIT_ORDER_PER_MIN', 600, 0, 100_000_000),
    holdBatchMax: batchSize(env, 'HOLD_BATCH_MAX', engine, 256, 10_000),
    orderBatchMax: batchSize(env, 'ORDER_BATCH_MAX', engine, 256, 10_000),
    webhookBatchMax: batchSize(env, 'WEBHOOK_BATCH_MAX', engine, 256, 10_000),
    queueDepthMax: integer(env, 'QUEUE_DEPTH_MAX', 10_000, 1, 1_000_000),
    queuedProductsMax: integer(env, 'QUEUED_PRODUCTS_MAX', 1000, 1, 1_000_000),
    inFlightKeysMax: integer(env, 'IN_FLIGHT_KEYS_MAX', 100_000, 1, 10_000_000),
    txAttemptsMax: integer(env, 'TX_ATTEMPTS_MAX', 8, 1, 100),
    sqliteLockWaitMs: integer(env, 'SQLITE_LOCK_WAIT_MS', 5_000, 0, 60_000),
    dbTimeoutMs: integer(env, 'DB_TIMEOUT_MS', 10_000, 0, 600_000),
    bodyBytesMax: integer(env, 'BODY_BYTES_MAX', 16_384, 256, 10_485_760),
    seedStock: integer(env, 'SEED_STOCK', 100, 0, 1_000_000_000),
    benchCeilingRoute: integer(env, 'BENCH_CEILING_ROUTE', 0, 0, 1) === 1,
  }
  return Object.freeze(config)
}

// An optional .env in the working directory fills variables the environment does not set.
export function loadDotEnv(path = '.env'): void {
  if (existsSync(path)) process.loadEnvFile(path)
}
