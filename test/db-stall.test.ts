// A database server that stops answering but keeps its connections open (SIGSTOP to a throwaway
// PostgreSQL or MariaDB the test started itself): requests are answered 503 busy within
// DB_TIMEOUT_MS of being sent, also those queued behind a batch that waits, /ready says 503, the process stays up, and nothing answered 503 is written once
// the server answers again (the abandoned transactions roll back instead of committing); holds
// are granted again right after. Without the bound, requests waited as long as the stall lasted
// and /ready answered 200 after it (the twelfth session's second probe).
import pino from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadConfig } from '../src/config.js'
import { audit } from '../src/domain/audit.js'
import { Catalog } from '../src/domain/products.js'
import { openRuntime, type Runtime } from '../src/runtime.js'
import { baseEnv } from './helpers/app.js'
import { rawQuery, testEngines } from './helpers/engines.js'
import { request, times } from './helpers/http.js'
import { pollUntil } from './helpers/lifecycle.js'
import { faultStartTimeoutMs, spawnServer } from './helpers/servers.js'
import { throwawayServers, type ThrowawayServer } from './helpers/throwaway-databases.js'

const dbTimeoutMs = 2_000
// The second wave of holds is sent this long after the first, so it queues behind the first
// wave's batches, which wait on the stalled server.
const secondWaveDelayMs = 100
// Every request is answered within DB_TIMEOUT_MS of being sent, plus slack for a loaded CI
// machine, queued or not. A request queued behind a batch that waited used to wait for that
// batch's bound and then its own: DB_TIMEOUT_MS - secondWaveDelayMs more (3.9 s here).
const answerMaxMs = dbTimeoutMs + 1_200
// The server stays frozen this long: well past that, so the bound is what answers.
const stallMs = 2 * dbTimeoutMs + 4_000

// Transactions open on the throwaway server, from any connection but the one asking.
async function openTransactions(database: ThrowawayServer): Promise<number> {
  const rows =
    database.engine === 'postgres'
      ? await rawQuery('postgres', database.url, 'select count(*) as n from pg_stat_activity where xact_start is not null and pid <> pg_backend_pid() and datname = current_database()')
      : await rawQuery('mysql', database.url, 'select count(*) as n from information_schema.innodb_trx where trx_mysql_thread_id <> connection_id()')
  return Number((rows[0] as { n: unknown }).n)
}

for (const throwaway of throwawayServers(new Set(testEngines().map((engine) => engine.name)))) {
  if (throwaway.missing && !throwaway.skip) console.log(`[db-stall] ${throwaway.label}: ${throwaway.missing}`)

  describe.skipIf(throwaway.skip)(`${throwaway.name}: a throwaway ${throwaway.label} that stalls`, () => {
    let database: ThrowawayServer
    let runtime: Runtime

    beforeAll(async () => {
      database = await throwaway.start()
      runtime = openRuntime(loadConfig(baseEnv(database.url)), { logger: pino({ level: 'silent' }) })
      await runtime.store.migrate()
    }, 120_000)

    afterAll(async () => {
      database?.thaw()
      await runtime?.store.close()
      await database?.destroy()
    }, 60_000)

    it(`answers 503 busy within DB_TIMEOUT_MS of each request while it stalls, queued behind a waiting batch or not, writes nothing it answered 503 for, and grants holds again once it answers`, async () => {
      const { id: productId } = await new Catalog(runtime.store, runtime.clock).create({ name: 'stall', priceMinor: 1_000, currency: 'USD', stock: 1_000 })
      const server = await spawnServer(database.url, { WORKERS: '2', DB_TIMEOUT_MS: String(dbTimeoutMs) }, { listeningMin: 2, startTimeoutMs: faultStartTimeoutMs })
      const hold = () => request(server.baseUrl, 'POST', '/api/holds', { body: { product_id: productId, qty: 1 } })
      try {
        const before = await Promise.all(times(10, hold))
        expect(before.map((reply) => reply.status)).toEqual(times(10, () => 201))

        database.freeze()
        let thawed = false
        const thawTimer = setTimeout(() => {
          database.thaw()
          thawed = true
        }, stallMs)
        const timed = async <T>(send: () => Promise<T>) => {
          const sentAtMs = Date.now()
          const reply = await send()
          return { reply, elapsedMs: Date.now() - sentAtMs }
        }
        // Product reads are coalesced per product the same way: a second wave waits for the
        // read in flight, and its bound counts from when it was queued too.
        const read = () => request(server.baseUrl, 'GET', `/api/products/${productId}`)
        const firstWave = times(10, () => timed(hold))
        const firstReads = times(3, () => timed(read))
        await new Promise((resolve) => setTimeout(resolve, secondWaveDelayMs))
        const secondWave = times(10, () => timed(hold))
        const secondReads = times(3, () => timed(read))
        const during = await Promise.all([...firstWave, ...secondWave, timed(() => request(server.baseUrl, 'GET', '/ready'))])
        const reads = await Promise.all([...firstReads, ...secondReads])
        console.log(`[db-stall] ${throwaway.label}: status and ms of each product read while stalled ${JSON.stringify(reads.map(({ reply, elapsedMs }) => [reply.status, elapsedMs]))}`)
        for (const { reply, elapsedMs } of reads) {
          expect({ status: reply.status, code: reply.body?.code }).toEqual({ status: 503, code: 'busy' })
          expect(elapsedMs).toBeLessThan(answerMaxMs)
        }
        const stillFrozen = !thawed
        console.log(`[db-stall] ${throwaway.label}: status and ms of each answer while stalled ${JSON.stringify(during.map(({ reply, elapsedMs }) => [reply.status, elapsedMs]))}`)
        clearTimeout(thawTimer)
        database.thaw()
        // Every answer came from the bound, while the server was still frozen.
        expect(stillFrozen).toBe(true)
        for (const { elapsedMs } of during) expect(elapsedMs).toBeLessThan(answerMaxMs)
        for (const { reply } of during.slice(0, 20)) {
          expect({ status: reply.status, code: reply.body?.code }).toEqual({ status: 503, code: 'busy' })
          expect(reply.headers.get('retry-after')).toBe('1')
        }
        expect(during[20]!.reply.status).toBe(503)

        // Back: holds are granted again, and the process never exited.
        await pollUntil(hold, (reply) => reply.status === 201, { timeoutMs: 15_000, what: 'a hold granted after the stall' })
        const after = await Promise.all(times(10, hold))
        expect(after.map((reply) => reply.status)).toEqual(times(10, () => 201))
        expect(server.child.exitCode).toBeNull()

        // The transactions abandoned at the bound finish in the background once the server
        // answers, and roll back: only the acknowledged holds exist.
        const acknowledged = 10 + 1 + 10
        // Until every abandoned transaction has ended (rolled back, or committed if it could):
        // no transaction is open on the server any more, rather than a guessed pause.
        await pollUntil(
          () => openTransactions(database),
          (open) => open === 0,
          { timeoutMs: 15_000, what: 'the abandoned transactions to end' },
        )
        const snapshot = await runtime.store.productSnapshot(productId, new Date())
        expect(snapshot!.reserved).toBe(acknowledged)
        expect((await audit(runtime.store)).ok).toBe(true)
      } finally {
        database.thaw()
        server.child.kill('SIGKILL')
        await server.exited
      }
    }, 120_000)
  })
}
