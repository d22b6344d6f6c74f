// Bursts of requests against real server processes that may die or drain under them: every
// request ends either answered or with the connection error the client saw, never hung, and
// every wait is a bounded poll.
import { setTimeout as sleep } from 'node:timers/promises'
import Database from 'better-sqlite3'
import mysql from 'mysql2/promise'
import pg from 'pg'
import pino from 'pino'
import { loadConfig, type EngineName } from '../../src/config.js'
import { audit, type AuditReport } from '../../src/domain/audit.js'
import { Catalog } from '../../src/domain/products.js'
import { openRuntime, type Runtime } from '../../src/runtime.js'
import { baseEnv } from './app.js'
import { freshDatabase } from './engines.js'
import { request, type Reply, type RequestOptions } from './http.js'
import { spawnServer, type ServerProcess } from './servers.js'

// What one request came to: an HTTP answer, or the transport error the client got instead.
export type Outcome = { answered: true; reply: Reply; answeredAtMs: number } | { answered: false; error: string; failedAtMs: number }

// Sends one request; a refused or reset connection is an outcome, not an exception, and so is
// no answer within `timeoutMs` (error "timeout"; the request itself is left to end on its own).
export async function attempt(baseUrl: string, method: string, path: string, options: RequestOptions = {}, timeoutMs = 30_000): Promise<Outcome> {
  const sent = request(baseUrl, method, path, options).then(
    (reply): Outcome => ({ answered: true, reply, answeredAtMs: Date.now() }),
    (error: unknown): Outcome => {
      const cause = (error as { cause?: { code?: string; message?: string } }).cause
      return { answered: false, error: String(cause?.code ?? cause?.message ?? error), failedAtMs: Date.now() }
    },
  )
  let timer: NodeJS.Timeout | undefined
  const timedOut = new Promise<Outcome>((resolve) => {
    timer = setTimeout(() => resolve({ answered: false, error: 'timeout', failedAtMs: Date.now() }), timeoutMs)
  })
  try {
    return await Promise.race([sent, timedOut])
  } finally {
    clearTimeout(timer)
  }
}

// Runs the tasks with at most `concurrencyMax` in flight, in order; `onOutcome` sees each outcome
// as it arrives (with how many have been answered so far), so a test can act mid-burst.
export async function runBurst<T extends Outcome>(
  tasks: ReadonlyArray<() => Promise<T>>,
  concurrencyMax: number,
  onOutcome?: (outcome: T, index: number, answeredCount: number) => void,
): Promise<T[]> {
  const outcomes: T[] = new Array(tasks.length)
  let next = 0
  let answeredCount = 0
  const lane = async (): Promise<void> => {
    while (next < tasks.length) {
      const index = next++
      const outcome = await tasks[index]!()
      outcomes[index] = outcome
      if (outcome.answered) answeredCount += 1
      onOutcome?.(outcome, index, answeredCount)
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrencyMax, tasks.length) }, lane))
  return outcomes
}

// Polls `check` every `intervalMs` until it holds, failing with `what` after `timeoutMs`.
export async function waitUntil(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 10_000, intervalMs = 25): Promise<void> {
  const deadlineMs = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadlineMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(intervalMs)
  }
}

// Resolves with how the process ended, failing if it has not ended within `timeoutMs`.
export async function exitOf(server: ServerProcess, timeoutMs = 15_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`process ${server.child.pid} did not exit within ${timeoutMs} ms`)), timeoutMs)
  })
  try {
    return await Promise.race([server.exited, timeout])
  } finally {
    clearTimeout(timer)
  }
}

export type LogLine = Record<string, unknown> & { event?: string; pid?: number }

// The JSON log lines of these processes that carry the named event.
export function logEvents(servers: readonly ServerProcess[], event: string): LogLine[] {
  const lines: LogLine[] = []
  for (const server of servers) {
    for (const line of server.logLines) {
      if (!line.includes(`"event":"${event}"`)) continue
      try {
        lines.push(JSON.parse(line) as LogLine)
      } catch {
        // A line cut by a SIGKILL is not JSON; the events a test counts come from whole lines.
      }
    }
  }
  return lines
}

export function statusCounts(outcomes: readonly Outcome[]): Record<string, number> {
  const counts: Record<string, number> = {}
  for (const outcome of outcomes) {
    const name = outcome.answered ? String(outcome.reply.status) : 'connection_error'
    counts[name] = (counts[name] ?? 0) + 1
  }
  return counts
}

export function sum(values: readonly number[]): number {
  return values.reduce((total, value) => total + value, 0)
}

export interface SharedCluster {
  engine: EngineName
  databaseUrl: string
  servers: ServerProcess[]
  runtime: Runtime
  // Products in the database so far (what a clean audit reports as checkedProducts).
  productCount: number
  createProduct(stock: number, priceMinor?: number): Promise<number>
  audit(): Promise<AuditReport>
  close(): Promise<void>
}

// Like startCluster, but owned by a describe block (beforeAll/afterAll) rather than one test,
// so several tests share the processes' start-up cost; each test then uses a product of its own.
export async function startSharedCluster(engine: EngineName, options: { processes: number; env?: Record<string, string> }): Promise<SharedCluster> {
  const fresh = await freshDatabase(engine)
  const config = loadConfig(baseEnv(fresh.url, options.env))
  const runtime = openRuntime(config, { logger: pino({ level: 'silent' }) })
  const servers: ServerProcess[] = []
  const close = async (): Promise<void> => {
    for (const server of servers) if (server.child.exitCode === null && server.child.signalCode === null) server.child.kill('SIGKILL')
    await Promise.all(servers.map((server) => server.exited))
    await runtime.store.close()
    await fresh.drop()
  }
  const catalog = new Catalog(runtime.store, runtime.clock)
  const shared: SharedCluster = {
    engine,
    databaseUrl: fresh.url,
    servers,
    runtime,
    productCount: 0,
    createProduct: async (stock, priceMinor = 9_999) => {
      const { id } = await catalog.create({ name: `product ${stock}`, priceMinor, currency: 'USD', stock })
      shared.productCount += 1
      return id
    },
    audit: () => audit(runtime.store),
    close,
  }
  try {
    await runtime.store.migrate()
    // A product before any process starts, so none of them seeds one into an empty database.
    await shared.createProduct(0)
    const started = await Promise.allSettled(Array.from({ length: options.processes }, () => spawnServer(fresh.url, options.env)))
    for (const result of started) if (result.status === 'fulfilled') servers.push(result.value)
    const failed = started.find((result) => result.status === 'rejected')
    if (failed) throw failed.reason
  } catch (error) {
    await close()
    throw error
  }
  return shared
}

// A transaction of the test's own that makes the server's next transaction on a hold meet a
// transient conflict: on PostgreSQL and MySQL a deadlock (the test locks the hold row, the
// server's order transaction locks the product and waits for the hold, then the test asks for
// the product), on SQLite the database write lock held past the server's busy timeout.
export interface Conflict {
  // Call once the server's request is sent: resolves when the deadlock has been formed (and,
  // on PostgreSQL, broken by the server's deadlock check). A no-op on SQLite.
  collide(): Promise<void>
  release(): Promise<void>
}

export async function openConflict(engine: EngineName, databaseUrl: string, target: { holdId: string; productId: number }): Promise<Conflict> {
  if (engine === 'postgres') {
    const url = new URL(databaseUrl)
    const schema = url.searchParams.get('schema')
    url.searchParams.delete('schema')
    const client = new pg.Client({ connectionString: url.toString() })
    await client.connect()
    if (schema) await client.query(`set search_path to ${schema}`)
    // The server's backend (deadlock_timeout 1 s) must be the one to find the cycle and abort
    // its own transaction; this session looks much later, so it never picks itself.
    await client.query(`set deadlock_timeout = '20s'`)
    await client.query('begin')
    await client.query('select id from holds where id = $1 for update', [target.holdId])
    return once({
      async collide() {
        await waitUntil('a server transaction waiting on the test lock', async () => {
          const { rows } = await client.query('select count(*)::int as n from pg_stat_activity where pg_backend_pid() = any(pg_blocking_pids(pid))')
          return rows[0].n > 0
        })
        // Completes the cycle; granted once the server's deadlock check has aborted its transaction.
        await client.query('select id from products where id = $1 for update', [target.productId])
      },
      async release() {
        await client.query('rollback')
        await client.end()
      },
    })
  }
  if (engine === 'mysql') {
    const connection = await mysql.createConnection(databaseUrl)
    await connection.query('create table if not exists conflict_ballast (id integer primary key auto_increment, pad varchar(64))')
    await connection.query('start transaction')
    // InnoDB rolls back the lighter transaction of a deadlock: these rows make the server's the lighter.
    await connection.query(`insert into conflict_ballast (pad) values ${Array.from({ length: 200 }, () => "('ballast')").join(', ')}`)
    await connection.query('select id from holds where id = ? for update', [target.holdId])
    return once({
      async collide() {
        // INNODB_TRX is a cache, refreshed only after 100 ms without readers: poll slower than
        // that, and look for this hold's update, so an earlier collision's stale row never counts.
        await waitUntil('a server transaction waiting on the test lock', async () => {
          const [rows] = await connection.query(
            "select count(*) as n from information_schema.innodb_trx t join information_schema.processlist p on p.id = t.trx_mysql_thread_id where t.trx_state = 'LOCK WAIT' and p.db = database() and t.trx_query like ?",
            [`%${target.holdId}%`],
          )
          return Number((rows as Array<{ n: unknown }>)[0]!.n) > 0
        }, 10_000, 150)
        await connection.query('select id from products where id = ? for update', [target.productId])
      },
      async release() {
        await connection.query('rollback')
        await connection.end()
      },
    })
  }
  const database = new Database(databaseUrl.replace(/^sqlite:(\/\/)?/, ''))
  database.pragma('busy_timeout = 5000')
  database.exec('begin immediate')
  return once({
    async collide() {},
    async release() {
      database.exec('rollback')
      database.close()
    },
  })
}

// release() may be called again (from a finally after a failed check): only the first counts.
function once(conflict: Conflict): Conflict {
  let released: Promise<void> | undefined
  return { collide: () => conflict.collide(), release: () => (released ??= conflict.release()) }
}
