// Proves configuration is checked once at start (SPEC §7): loadConfig gives the documented
// defaults, converts units, freezes the result and throws a ConfigError naming each bad
// variable and the value seen, and the compiled server exits with status 2 naming it.
import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { createServer, type AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { ConfigError, loadConfig } from '../src/config.js'
import { runToExit, type ExitResult } from './helpers/servers.js'

function configErrorOf(env: Record<string, string>): ConfigError | undefined {
  try {
    loadConfig(env)
    return undefined
  } catch (error) {
    if (error instanceof ConfigError) return error
    throw error
  }
}

// Starts the compiled server (what `npm start` runs) and waits for it to exit by itself.
async function runServer(env: Record<string, string>): Promise<ExitResult> {
  // A minimal environment, so nothing from the test runner leaks in; should the variable under
  // test wrongly pass, the server would use a throw-away database and port, not the repository's.
  const dir = mkdtempSync(join(tmpdir(), 'flash-sale-config-'))
  try {
    return await runToExit(['dist/main.js'], { PATH: process.env.PATH ?? '', LOG_LEVEL: 'silent', PORT: '0', DATABASE_URL: `sqlite:${join(dir, 'test.db')}`, ...env }, 20_000)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

describe('configuration', () => {
  it('uses the SPEC §7 defaults when nothing is set', () => {
    const config = loadConfig({})
    expect(config).toMatchObject({
      port: 8000,
      host: '127.0.0.1',
      databaseUrl: 'sqlite:./data/flash-sale.db',
      engine: 'sqlite',
      redisUrl: undefined,
      holdTtlMs: 120_000,
      orderTtlMs: 900_000,
      maxQtyPerHold: 10,
      sweepIntervalMs: 1000,
      idempotencyTtlMs: 24 * 3_600_000,
      webhookSecret: undefined,
      adminToken: undefined,
      logFile: undefined,
      workers: 1,
      // Off by default: trusting X-Forwarded-For from anyone would let a client pick the IP
      // its rate limit is counted against.
      trustProxy: false,
      rateLimitReadPerMin: 6000,
      rateLimitHoldPerMin: 600,
      rateLimitOrderPerMin: 600,
      bodyBytesMax: 16_384,
    })
  })

  it('converts seconds and hours to milliseconds once, fractions included', () => {
    const config = loadConfig({ HOLD_TTL_SECONDS: '30', ORDER_TTL_SECONDS: '0.5', IDEMPOTENCY_TTL_HOURS: '1', SWEEP_INTERVAL_MS: '250' })
    expect(config).toMatchObject({ holdTtlMs: 30_000, orderTtlMs: 500, idempotencyTtlMs: 3_600_000, sweepIntervalMs: 250 })
  })

  it('reads every variable it is given, and 0 turns a rate limit off', () => {
    const config = loadConfig({
      PORT: '0',
      HOST: '0.0.0.0',
      DATABASE_URL: 'postgres://user@db:5432/shop',
      REDIS_URL: 'redis://cache:6379',
      MAX_QTY_PER_HOLD: '1',
      WEBHOOK_SECRET: 'whsec',
      ADMIN_TOKEN: 'admin',
      LOG_LEVEL: 'debug',
      LOG_FILE: '/tmp/flash-sale.log',
      WORKERS: '4',
      TRUST_PROXY: 'true',
      RATE_LIMIT_READ_PER_MIN: '0',
      RATE_LIMIT_HOLD_PER_MIN: '0',
      RATE_LIMIT_ORDER_PER_MIN: '0',
      BODY_BYTES_MAX: '1024',
    })
    expect(config).toMatchObject({
      port: 0,
      host: '0.0.0.0',
      engine: 'postgres',
      redisUrl: 'redis://cache:6379',
      maxQtyPerHold: 1,
      webhookSecret: 'whsec',
      adminToken: 'admin',
      logLevel: 'debug',
      logFile: '/tmp/flash-sale.log',
      workers: 4,
      trustProxy: true,
      rateLimitReadPerMin: 0,
      rateLimitHoldPerMin: 0,
      rateLimitOrderPerMin: 0,
      bodyBytesMax: 1024,
    })
  })

  it('picks the engine from DATABASE_URL', () => {
    const engines = Object.fromEntries(
      ['sqlite:/tmp/shop.db', 'postgres://u@h/db', 'postgresql://u@h/db', 'mysql://u@h/db'].map((url) => [url, loadConfig({ DATABASE_URL: url }).engine]),
    )
    expect(engines).toEqual({ 'sqlite:/tmp/shop.db': 'sqlite', 'postgres://u@h/db': 'postgres', 'postgresql://u@h/db': 'postgres', 'mysql://u@h/db': 'mysql' })
  })

  it('returns a frozen config that cannot be changed after start', () => {
    const config = loadConfig({})
    expect(Object.isFrozen(config)).toBe(true)
    expect(() => {
      ;(config as { holdTtlMs: number }).holdTtlMs = 1
    }).toThrow(TypeError)
    expect(config.holdTtlMs).toBe(120_000)
  })

  it('refuses each bad value with a ConfigError naming the variable and the value seen', () => {
    const bad: Array<[string, string]> = [
      ['PORT', 'abc'],
      ['PORT', '70000'],
      ['PORT', '-1'],
      ['PORT', '80.5'],
      ['PORT', '8000abc'],
      ['HOLD_TTL_SECONDS', '-1'],
      ['HOLD_TTL_SECONDS', '0'],
      ['HOLD_TTL_SECONDS', 'two minutes'],
      ['HOLD_TTL_SECONDS', '1e3'],
      ['ORDER_TTL_SECONDS', '0'],
      ['ORDER_TTL_SECONDS', '-900'],
      ['MAX_QTY_PER_HOLD', '0'],
      ['MAX_QTY_PER_HOLD', '-1'],
      ['MAX_QTY_PER_HOLD', '1.5'],
      ['MAX_QTY_PER_HOLD', 'ten'],
      ['SWEEP_INTERVAL_MS', 'abc'],
      ['SWEEP_INTERVAL_MS', '0'],
      ['IDEMPOTENCY_TTL_HOURS', '-2'],
      ['IDEMPOTENCY_TTL_HOURS', '0'],
      ['LOG_LEVEL', 'loud'],
      ['DATABASE_URL', 'oracle://x'],
      ['DATABASE_URL', 'http://db'],
      ['DATABASE_URL', 'sqlite'],
      ['DATABASE_URL', 'sqlite:'],
      ['DATABASE_URL', 'sqlite::memory:'],
      ['DATABASE_URL', 'postgres://u@127.0.0.1:abc/db'],
      ['DATABASE_URL', 'postgres://u@/db'],
      ['DATABASE_URL', 'mysql://root@127.0.0.1:3306'],
      ['REDIS_URL', 'http://cache:6379'],
      ['WORKERS', '0'],
      ['WORKERS', 'many'],
      ['RATE_LIMIT_READ_PER_MIN', '-1'],
      ['RATE_LIMIT_HOLD_PER_MIN', 'ten'],
      ['RATE_LIMIT_ORDER_PER_MIN', '1.5'],
      ['BODY_BYTES_MAX', 'abc'],
      ['DB_TIMEOUT_MS', '-1'],
      ['DB_TIMEOUT_MS', '10s'],
      ['DB_TIMEOUT_MS', '600001'],
      ['HOLD_TTL_SECONDS', '0.0001'],
      ['ORDER_TTL_SECONDS', '0.0004'],
      ['IDEMPOTENCY_TTL_HOURS', '0.0000001'],
      ['TRUST_PROXY', 'yes'],
      ['TRUST_PROXY', '0'],
      ['TRUST_PROXY', '10.0.0.1,proxy.internal'],
      ['TRUST_PROXY', '10.0.0.0/33'],
      ['HOST', 'not.a.host.invalid'],
      ['HOST', '999.1.1.1'],
    ]
    for (const [name, value] of bad) {
      const error = configErrorOf({ [name]: value })
      const label = `${name}=${value}`
      expect.soft(error, label).toBeInstanceOf(ConfigError)
      expect.soft(error?.message, label).toContain(name)
      expect.soft(error?.message, label).toContain(value)
    }
  })

  it('takes TRUST_PROXY as true, false, a hop count, or addresses and ranges; HOST as an IP address or localhost', () => {
    expect(loadConfig({ TRUST_PROXY: 'true' }).trustProxy).toBe(true)
    expect(loadConfig({ TRUST_PROXY: 'false' }).trustProxy).toBe(false)
    expect(loadConfig({ TRUST_PROXY: '2' }).trustProxy).toBe(2)
    expect(loadConfig({ TRUST_PROXY: '10.0.0.1, 10.1.0.0/16,loopback,::1' }).trustProxy).toBe('10.0.0.1, 10.1.0.0/16,loopback,::1')
    for (const host of ['0.0.0.0', '::', '::1', 'localhost', '192.168.1.20']) expect(loadConfig({ HOST: host }).host).toBe(host)
    expect(loadConfig({ HOLD_TTL_SECONDS: '0.001' }).holdTtlMs).toBe(1)
  })

  it('never prints the password of a DATABASE_URL or REDIS_URL it refuses', () => {
    const malformed = configErrorOf({ DATABASE_URL: 'mysql://u:Sup3rS3cretPW@[bad/db' })
    expect(malformed?.message).toContain('DATABASE_URL')
    expect(malformed?.message).not.toContain('Sup3rS3cretPW')
    const database = configErrorOf({ DATABASE_URL: 'pg://app:Sup3rS3cretPW@db.internal/shop' })
    const redis = configErrorOf({ REDIS_URL: 'http://cache:An0therSecret@cache.internal:6379' })
    for (const error of [database, redis]) {
      expect(error).toBeInstanceOf(ConfigError)
      expect(error?.message).toContain('***@')
      expect(error?.message).not.toMatch(/Sup3rS3cretPW|An0therSecret/)
    }
  })

  it('requires WEBHOOK_SECRET when NODE_ENV=production, and only then', () => {
    const error = configErrorOf({ NODE_ENV: 'production' })
    expect(error).toBeInstanceOf(ConfigError)
    expect(error?.message).toContain('WEBHOOK_SECRET')
    expect(configErrorOf({ NODE_ENV: 'production', WEBHOOK_SECRET: '   ' })?.message).toContain('WEBHOOK_SECRET')
    expect(loadConfig({ NODE_ENV: 'production', WEBHOOK_SECRET: 'whsec' }).webhookSecret).toBe('whsec')
    expect(loadConfig({ NODE_ENV: 'development' }).webhookSecret).toBeUndefined()
  })

  describe('server start-up', () => {
    for (const [name, value] of [
      ['PORT', 'abc'],
      ['HOLD_TTL_SECONDS', '-1'],
      ['DATABASE_URL', 'oracle://x'],
    ] as const) {
      it(`exits with status 2 and names ${name} on stderr when ${name}=${value}`, async () => {
        const { code, stdout, stderr } = await runServer({ [name]: value })
        expect(code).toBe(2)
        expect(stderr).toContain(name)
        expect(stderr).toContain(value)
        expect(stdout).not.toContain('server.listening')
      })
    }

    it('exits with status 2 naming LOG_FILE when it cannot be opened, and creates no folder for it', async () => {
      const missingFolder = join(tmpdir(), `flash-sale-no-such-folder-${process.pid}`)
      const { code, stdout, stderr } = await runServer({ LOG_FILE: join(missingFolder, 'x.log') })
      expect(code).toBe(2)
      expect(stderr).toContain('LOG_FILE')
      expect(stdout).not.toContain('server.listening')
      expect(existsSync(missingFolder)).toBe(false)
    })

    // A worker that cannot listen would fail the same way again: the primary restarted it
    // forever, logging server.started, and never exited.
    for (const workers of ['1', '2']) {
      it(`exits with status 1 saying so when its port is taken, WORKERS=${workers}`, async () => {
        const taken = createServer()
        await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve))
        try {
          const port = (taken.address() as AddressInfo).port
          const { code, stdout, stderr } = await runServer({ PORT: String(port), WORKERS: workers, LOG_LEVEL: 'info' })
          expect(code).toBe(1)
          expect(stderr).toContain(`cannot listen on 127.0.0.1:${port}: EADDRINUSE`)
          expect(stdout).not.toContain('"event":"worker.exited"')
          if (workers === '2') expect(stdout).toContain('"event":"worker.start_failed"')
        } finally {
          taken.close()
        }
      })
    }

    it('exits with status 2 naming WEBHOOK_SECRET when NODE_ENV=production has none', async () => {
      const { code, stderr } = await runServer({ NODE_ENV: 'production' })
      expect(code).toBe(2)
      expect(stderr).toContain('WEBHOOK_SECRET')
    })
  })
})
