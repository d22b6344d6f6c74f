// Bursts of requests against real server processes that may die or drain under them: every
// request ends either answered or with the connection error the client saw, never hung, and
// every wait is a bounded poll.
import Database from 'better-sqlite3'
import mysql from 'mysql2/promise'
import pg from 'pg'
import type { EngineName } from '../../src/config.js'
import { countBy, request, type Reply, type RequestOptions } from './http.js'
import { pollUntil } from './lifecycle.js'
import type { ServerProcess } from './servers.js'

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

// SIGTERM to every process, then their exits: once they are gone, every line they logged is in
// and no sweeper of theirs runs again, so log counts are final without waiting a guessed time.
export async function stopGracefully(servers: readonly ServerProcess[], timeoutMs = 15_000): Promise<Array<{ code: number | null; signal: NodeJS.Signals | null }>> {
  for (const server of servers) server.child.kill('SIGTERM')
  return Promise.all(servers.map((server) => exitOf(server, timeoutMs)))
}

export function sum(values: readonly number[]): number {
  return values.reduce((total, value) => total + value, 0)
}

// What a burst came to by outcome: `{ 201: 40, connection_error: 2 }`.
export function outcomeCounts(outcomes: readonly Outcome[]): Record<string, number> {
  return countBy(outcomes, (outcome) => (outcome.answered ? outcome.reply.status : 'connection_error'))
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
        await pollUntil(
          async () => {
            // Inside a transaction PostgreSQL answers pg_stat_activity from a snapshot taken at
            // its first read, so a backend the server connects after that would never show up
            // (a CI run failed so, waiting 10 s): every poll drops the snapshot first.
            await client.query('select pg_stat_clear_snapshot()')
            return (await client.query('select count(*)::int as n from pg_stat_activity where pg_backend_pid() = any(pg_blocking_pids(pid))')).rows[0].n as number
          },
          (waiting) => waiting > 0,
          { what: 'a server transaction waiting on the test lock', timeoutMs: 10_000 },
        )
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
        await pollUntil(
          async () => {
            const [rows] = await connection.query(
              "select count(*) as n from information_schema.innodb_trx t join information_schema.processlist p on p.id = t.trx_mysql_thread_id where t.trx_state = 'LOCK WAIT' and p.db = database() and t.trx_query like ?",
              [`%${target.holdId}%`],
            )
            return Number((rows as Array<{ n: unknown }>)[0]!.n)
          },
          (waiting) => waiting > 0,
          { what: 'a server transaction waiting on the test lock', timeoutMs: 10_000, intervalMs: 150 },
        )
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
