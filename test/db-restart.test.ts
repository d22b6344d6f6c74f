// Proves SPEC I7 against a real database restart: a throwaway PostgreSQL and a throwaway MariaDB,
// started by the test on spare ports, are stopped (fast and immediate) and started again while
// 64 connections take holds through 1 and 3 server processes. No process exits, every answer is
// 201, 409 or 503 busy with Retry-After, /ready says 503 while the database is away, holds are
// granted again soon after it returns, every acknowledged hold is stored, the audit is clean, and
// the outage is logged a bounded number of times, not once per request. On SQLite the "outage"
// is another process holding the write lock past the busy timeout.
import Database from 'better-sqlite3'
import mysql from 'mysql2/promise'
import pg from 'pg'
import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadConfig } from '../src/config.js'
import { audit } from '../src/domain/audit.js'
import { Catalog } from '../src/domain/products.js'
import { openRuntime, type Runtime } from '../src/runtime.js'
import { baseEnv } from './helpers/app.js'
import { attempt, type Outcome } from './helpers/bursts.js'
import { freshDatabase, testEngines } from './helpers/engines.js'
import { request, times } from './helpers/http.js'
import { pollUntil } from './helpers/lifecycle.js'
import { faultStartTimeoutMs, logEvents, spawnServer, type ServerProcess } from './helpers/servers.js'
import { throwawayServers, type StopMode, type ThrowawayServer } from './helpers/throwaway-databases.js'

const connections = 64
const pauseMs = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))
// A client told 503 waits before trying again (a real one would honour Retry-After; a short
// pause keeps the outage's request rate bounded while still measuring the return closely).
const retryPauseMs = 50
// The database stays away at least this long, so the outage is seen by many requests.
const outageMinMs = 2_000
// Holds are granted again within this long of the database's return (SPEC I7: "by itself").
const recoveryMaxMs = 10_000
// How long the burst goes on after the first hold granted after the return.
const tailMs = 1_000
// Hard bound on the burst, whatever happens.
const requestsMax = 60_000
// kysely-store.ts logs db.unavailable at most once per this interval per process.
const unavailableLogIntervalMs = 5_000

type Timed = Outcome & { startedAtMs: number }

function statusOf(outcome: Outcome): string {
  return outcome.answered ? String(outcome.reply.status) : `transport:${outcome.error}`
}

function answeredAt(outcome: Outcome): number {
  return outcome.answered ? outcome.answeredAtMs : outcome.failedAtMs
}

function percentile(values: readonly number[], fraction: number): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))]!
}

async function storedHoldIds(server: ThrowawayServer, productId: number): Promise<Set<string>> {
  if (server.engine === 'postgres') {
    const client = new pg.Client({ connectionString: server.url })
    await client.connect()
    try {
      return new Set((await client.query('select id from holds where product_id = $1', [productId])).rows.map((row: { id: string }) => row.id))
    } finally {
      await client.end()
    }
  }
  const connection = await mysql.createConnection(server.url)
  try {
    const [rows] = await connection.query('select id from holds where product_id = ?', [productId])
    return new Set((rows as Array<{ id: string }>).map((row) => row.id))
  } finally {
    await connection.end()
  }
}

interface RestartRun {
  outcomes: Timed[]
  stoppedAtMs: number
  returnedAtMs: number
  firstGrantAfterReturnMs: number
  readyWhileAway: number
  readyAfter: number
  // How long each step took, for the printed figures: the stop, the first 503 after it, the
  // /ready check while away, the start.
  phasesMs: Record<string, number>
}

// Holds from `connections` lanes; once they are flowing the database is stopped (mode), kept
// away at least outageMinMs and until a 503 and a failing /ready have been seen, started again,
// and the burst goes on until a hold is granted after the return, plus tailMs.
async function restartMidBurst(database: ThrowawayServer, server: ServerProcess, productId: number, mode: StopMode): Promise<RestartRun> {
  const outcomes: Timed[] = []
  let endAtMs = Number.POSITIVE_INFINITY
  const lane = async (): Promise<void> => {
    while (Date.now() < endAtMs && outcomes.length < requestsMax) {
      const startedAtMs = Date.now()
      const outcome = await attempt(server.baseUrl, 'POST', '/api/holds', { body: { product_id: productId, qty: 1 } })
      outcomes.push({ ...outcome, startedAtMs })
      if (!outcome.answered || outcome.reply.status !== 201) await pauseMs(retryPauseMs)
    }
  }
  const lanes = times(connections, lane)
  const granted = (after: number) => outcomes.some((outcome) => outcome.answered && outcome.reply.status === 201 && outcome.answeredAtMs >= after)
  try {
    await pollUntil(
      () => outcomes.filter((outcome) => statusOf(outcome) === '201').length >= connections,
      (done) => done,
      { timeoutMs: 20_000, what: 'holds flowing before the restart' },
    )
    const phasesMs: Record<string, number> = {}
    let phaseStartMs = Date.now()
    const phase = (name: string) => {
      phasesMs[name] = Date.now() - phaseStartMs
      phaseStartMs = Date.now()
    }
    const stoppedAtMs = Date.now()
    await database.stop(mode)
    phase('stop')
    // Any outcome of a request sent after the stop (what it was, the assertions judge).
    await pollUntil(
      () => outcomes.some((outcome) => outcome.startedAtMs >= stoppedAtMs),
      (done) => done,
      { timeoutMs: 30_000, what: 'an answer to a request sent while the database is away' },
    )
    phase('first503')
    const readyWhileAway = (await request(server.baseUrl, 'GET', '/ready')).status
    phase('ready')
    const awayForMs = Date.now() - stoppedAtMs
    if (awayForMs < outageMinMs) await pauseMs(outageMinMs - awayForMs)
    phaseStartMs = Date.now()
    await database.start()
    phase('start')
    const returnedAtMs = Date.now()
    await pollUntil(
      () => granted(returnedAtMs),
      (done) => done,
      { timeoutMs: recoveryMaxMs, what: 'a hold granted after the database returned' },
    )
    const firstGrantAfterReturnMs =
      Math.min(...outcomes.filter((outcome) => outcome.answered && outcome.reply.status === 201 && outcome.answeredAtMs >= returnedAtMs).map(answeredAt)) - returnedAtMs
    let readyAfter = 0
    await pollUntil(
      async () => (readyAfter = (await request(server.baseUrl, 'GET', '/ready')).status) === 200,
      (done) => done,
      { timeoutMs: recoveryMaxMs, what: '/ready 200 after the return' },
    )
    endAtMs = Date.now() + tailMs
    await Promise.all(lanes)
    return { outcomes, stoppedAtMs, returnedAtMs, firstGrantAfterReturnMs, readyWhileAway, readyAfter, phasesMs }
  } finally {
    endAtMs = 0
    await Promise.all(lanes)
    // A failed case must not leave the next one without its database.
    if (!(await database.reachable())) await database.start()
  }
}

const selected = new Set(testEngines().map((engine) => engine.name))

for (const throwaway of throwawayServers(selected)) {
  if (throwaway.missing && !throwaway.skip) console.log(`[db-restart] ${throwaway.label}: ${throwaway.missing}`)

  describe.skipIf(throwaway.skip)(`${throwaway.name}: a throwaway ${throwaway.label} restarted mid-burst`, () => {
    let database: ThrowawayServer
    let runtime: Runtime
    let catalog: Catalog

    beforeAll(async () => {
      database = await throwaway.start()
      runtime = openRuntime(loadConfig(baseEnv(database.url)), { logger: pino({ level: 'silent' }) })
      await runtime.store.migrate()
      catalog = new Catalog(runtime.store, runtime.clock)
    }, 120_000)

    afterAll(async () => {
      await runtime?.store.close()
      await database?.destroy()
    }, 60_000)

    for (const processes of [1, 3]) {
      for (const mode of ['fast', 'immediate'] as const) {
        it(`WORKERS=${processes}, ${mode} stop: no process exits, only 201/409/503, holds again within seconds of the return, every acknowledged hold stored, audit clean`, async () => {
          // A case that failed with its database away must not fail this one too.
          if (!(await database.reachable())) await database.start()
          const { id: productId } = await catalog.create({ name: `restart ${processes} ${mode}`, priceMinor: 1_000, currency: 'USD', stock: 1_000_000 })
          const server = await spawnServer(database.url, { WORKERS: String(processes) }, { listeningMin: processes, startTimeoutMs: faultStartTimeoutMs })
          try {
            const run = await restartMidBurst(database, server, productId, mode)
            const statuses: Record<string, number> = {}
            for (const outcome of run.outcomes) statuses[statusOf(outcome)] = (statuses[statusOf(outcome)] ?? 0) + 1
            const acknowledged = run.outcomes.flatMap((outcome) => (outcome.answered && outcome.reply.status === 201 ? [outcome.reply.body.hold_id as string] : []))
            const stored = await storedHoldIds(database, productId)
            const unavailableLines = logEvents([server], 'db.unavailable')
            const endedAtMs = Math.max(...run.outcomes.map(answeredAt))
            const busyLatenciesMs = run.outcomes.filter((outcome) => statusOf(outcome) === '503').map((outcome) => answeredAt(outcome) - outcome.startedAtMs)
            console.log(
              `[db-restart] ${throwaway.label} WORKERS=${processes} ${mode}: ${run.outcomes.length} requests ${JSON.stringify(statuses)}, ` +
                `away ${((run.returnedAtMs - run.stoppedAtMs) / 1000).toFixed(2)} s, first 201 ${(run.firstGrantAfterReturnMs / 1000).toFixed(2)} s after the return, ` +
                `acknowledged ${acknowledged.length} / stored ${stored.size}, db.unavailable lines ${unavailableLines.length}, steps (ms) ${JSON.stringify(run.phasesMs)}, ` +
                `503 latency p50/max ${percentile(busyLatenciesMs, 0.5)}/${percentile(busyLatenciesMs, 1)} ms`,
            )

            // What the server logged for anything unexpected, so a failure names its cause.
            for (const line of server.logLines.filter((entry) => entry.includes('request.failed') || entry.includes('Unhandled')))
              console.log(`[db-restart] server: ${line.slice(0, 600)}`)
            // No process exited or was replaced: the one (or the primary and its 3 workers) lives.
            expect(server.child.exitCode).toBeNull()
            expect(server.child.signalCode).toBeNull()
            expect(logEvents([server], 'worker.exited')).toEqual([])
            expect(logEvents([server], 'server.listening')).toHaveLength(processes)
            // Only 201, 409 or 503; no reset connection, no 500.
            expect(Object.keys(statuses).filter((status) => !['201', '409', '503'].includes(status))).toEqual([])
            expect(statuses['503']).toBeGreaterThan(0)
            for (const outcome of run.outcomes) {
              if (outcome.answered && outcome.reply.status === 503) {
                expect(outcome.reply.body.code).toBe('busy')
                expect(Number(outcome.reply.headers.get('retry-after'))).toBeGreaterThan(0)
              }
            }
            expect(run.readyWhileAway).toBe(503)
            expect(run.readyAfter).toBe(200)
            expect(run.firstGrantAfterReturnMs).toBeLessThan(recoveryMaxMs)
            // I5: every acknowledged hold is a row. (Stored may exceed acknowledged: a commit
            // whose connection broke before the answer is an unknown outcome, answered 503.)
            expect(acknowledged.filter((holdId) => !stored.has(holdId))).toEqual([])
            expect(stored.size).toBeGreaterThanOrEqual(acknowledged.length)
            // Logged once per interval per process, not once per failed request.
            expect(unavailableLines.length).toBeGreaterThan(0)
            const intervals = Math.floor((endedAtMs - run.stoppedAtMs) / unavailableLogIntervalMs) + 1
            expect(unavailableLines.length).toBeLessThanOrEqual(processes * intervals)
            expect(unavailableLines.length).toBeLessThan(statuses['503']!)
            expect(await audit(runtime.store)).toMatchObject({ ok: true, violations: [] })
          } finally {
            server.child.kill('SIGKILL')
            await server.exited
          }
        }, 300_000)
      }
    }
  })
}

describe.skipIf(!selected.has('sqlite'))('sqlite: the file locked by another process past the busy timeout', () => {
  it('holds answer 503 busy with Retry-After while the lock is held, 201 once it is released, nothing refused is stored, audit clean', async () => {
    const fresh = await freshDatabase('sqlite')
    const runtime = openRuntime(loadConfig(baseEnv(fresh.url)), { logger: pino({ level: 'silent' }) })
    await runtime.store.migrate()
    const { id: productId } = await new Catalog(runtime.store, runtime.clock).create({ name: 'locked', priceMinor: 1_000, currency: 'USD', stock: 100 })
    // One attempt with a short lock wait: each attempt waits the whole wait inside the event
    // loop, and the eight holds may fall into as many batches.
    const server = await spawnServer(fresh.url, { TX_ATTEMPTS_MAX: '1', SQLITE_LOCK_WAIT_MS: '500' }, { startTimeoutMs: faultStartTimeoutMs })
    const locker = new Database(fresh.url.replace(/^sqlite:/, ''))
    try {
      const hold = () => attempt(server.baseUrl, 'POST', '/api/holds', { body: { product_id: productId, qty: 1 } })
      expect(statusOf(await hold())).toBe('201')
      locker.exec('begin exclusive')
      const lockedAtMs = Date.now()
      const refused = await Promise.all(times(8, hold))
      const refusedAfterMs = Date.now() - lockedAtMs
      locker.exec('rollback')
      const granted = await Promise.all(times(8, hold))
      console.log(`[db-restart] SQLite locked: ${refused.map(statusOf).join(',')} after ${refusedAfterMs} ms; released: ${granted.map(statusOf).join(',')}`)
      for (const outcome of refused) {
        expect(outcome).toMatchObject({ answered: true, reply: { status: 503, body: { code: 'busy' } } })
        if (outcome.answered) expect(Number(outcome.reply.headers.get('retry-after'))).toBeGreaterThan(0)
      }
      expect(granted.map(statusOf)).toEqual(times(8, () => '201'))
      expect(server.child.exitCode).toBeNull()
      const product = await request(server.baseUrl, 'GET', `/api/products/${productId}`)
      expect(product.body).toMatchObject({ reserved: 9, available_stock: 91 })
      expect(await audit(runtime.store)).toMatchObject({ ok: true, violations: [] })
    } finally {
      if (locker.inTransaction) locker.exec('rollback')
      locker.close()
      server.child.kill('SIGKILL')
      await server.exited
      await runtime.store.close()
      await fresh.drop()
    }
  }, 180_000)
})
