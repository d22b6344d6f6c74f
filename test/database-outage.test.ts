// Proves that when the database is unreachable a client gets 503 busy with Retry-After (safe to
// retry), never a 500, on reads and writes alike: the test closes the server's store under it.
import { Writable } from 'node:stream'
import pino from 'pino'
import { describe, expect, it } from 'vitest'
import { DomainError } from '../src/domain/errors.js'
import { buildTestApp, testAdminToken } from './helpers/app.js'
import { testDatabase, testEngines } from './helpers/engines.js'
import { KyselyStore } from '../src/store/kysely-store.js'
import { metricValue } from './helpers/lifecycle.js'

// The server's log lines, parsed, as they are written.
function capturedLogger(): { logger: pino.Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = []
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line.trim() !== '') lines.push(JSON.parse(line) as Record<string, unknown>)
      done()
    },
  })
  return { logger: pino({ level: 'info' }, sink), lines }
}

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: database outage`, () => {
    it('answers reads, holds and readiness with 503 once the database is gone', async () => {
      const t = await buildTestApp(engine.name, { stock: 5 })
      expect((await t.request('GET', '/ready')).status).toBe(200)
      await t.runtime.store.close()
      const read = await t.request('GET', `/api/products/${t.productId}`)
      const hold = await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 1 } })
      for (const reply of [read, hold]) {
        expect(reply.status).toBe(503)
        expect(reply.body.code).toBe('busy')
        expect(Number(reply.headers.get('retry-after'))).toBeGreaterThan(0)
      }
      expect((await t.request('GET', '/ready')).status).toBe(503)
    })

    it('answers every read route, the audit, the dashboard and the waitlist routes with 503 once the database is gone, never 500', async () => {
      const t = await buildTestApp(engine.name, { stock: 1 })
      const hold = await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 1 } })
      expect(hold.status, hold.text).toBe(201)
      const ticket = await t.request('POST', `/api/products/${t.productId}/waitlist`, { body: { qty: 1 } })
      expect(ticket.status, ticket.text).toBe(201)
      await t.runtime.store.close()
      const admin = { authorization: `Bearer ${testAdminToken}` }
      const calls: Array<[string, string, Record<string, string>?]> = [
        ['GET', `/api/holds/${hold.body.hold_id}`],
        ['GET', `/api/orders/ord_not_there`],
        ['GET', `/api/waitlist/${ticket.body.ticket_id}`],
        ['DELETE', `/api/waitlist/${ticket.body.ticket_id}`],
        ['GET', '/api/admin/audit', admin],
        ['GET', '/api/admin/dashboard', admin],
      ]
      for (const [method, path, headers] of calls) {
        const reply = await t.request(method, path, { headers })
        expect([method, path, reply.status, reply.body?.code]).toEqual([method, path, 503, 'busy'])
        expect(Number(reply.headers.get('retry-after'))).toBeGreaterThan(0)
      }
    })

    it('a transaction whose connection the pool closes between two statements fails busy (503), not with a raw driver error (500)', async () => {
      const t = await buildTestApp(engine.name, { stock: 5 })
      const { store } = t.runtime
      let closing: Promise<void> | undefined
      const outcome = await store
        .transaction({ label: 'test.outage' }, async (tx) => {
          await tx.lockProduct(t.productId)
          closing = store.close()
          // MySQL's pool ends this connection too ("Can't add new command when connection is in
          // closed state": fatal, no code) and SQLite closes its file; PostgreSQL's pool waits
          // for the client to be released, so waiting for it here would never end.
          if (engine.name !== 'postgres') await closing
          await tx.getHold('h_not_there')
        })
        .then(
          () => 'committed',
          (error: unknown) => (error instanceof DomainError ? error.code : String(error)),
        )
      await closing
      expect(outcome).toBe(engine.name === 'postgres' ? 'committed' : 'busy')
    })

    // SQLite has one connection behind a mutex, not a pool: a transaction waits for the one before it.
    it.skipIf(engine.name === 'sqlite')('a transaction queued for a pooled connection when the store closes fails busy at once, not after a timeout or never', async () => {
      const database = await testDatabase(engine.name)
      const store = new KyselyStore({ databaseUrl: database.url, engine: engine.name, observer: { emit: () => undefined }, txAttemptsMax: 1, poolSizeMax: 2 })
      await store.migrate()
      let openGate: () => void = () => undefined
      const gate = new Promise<void>((resolve) => (openGate = resolve))
      let holding = 0
      let bothHolding: () => void = () => undefined
      const bothHold = new Promise<void>((resolve) => (bothHolding = resolve))
      const outcome = (work: Promise<unknown>) =>
        work.then(
          () => 'committed',
          (error: unknown) => (error instanceof DomainError ? error.code : String(error)),
        )
      // Both connections of the pool taken by transactions that wait for the gate.
      const holders = [0, 1].map(() =>
        outcome(
          store.transaction({ label: 'test.hold_connection' }, async (tx) => {
            await tx.getHold('h_holder')
            if (++holding === 2) bothHolding()
            await gate
          }),
        ),
      )
      await bothHold
      const queued = outcome(store.transaction({ label: 'test.queued' }, (tx) => tx.getHold('h_queued')))
      for (let tick = 0; tick < 5; tick++) await new Promise((resolve) => setImmediate(resolve))
      const closedAtMs = Date.now()
      const closing = store.close()
      // Settled while both connections are still held (nothing it waited for will come), and at
      // once: pg-pool alone leaves it to its 5 s connect timeout, or forever in an idle process.
      expect(await queued).toBe('busy')
      expect(Date.now() - closedAtMs).toBeLessThan(1_000)
      openGate()
      await Promise.all(holders)
      await closing
    })

    it('logs ready.failed once per interval while the database is away, and counts every probe', async () => {
      const { logger, lines } = capturedLogger()
      const t = await buildTestApp(engine.name, { stock: 5, logger })
      await t.runtime.store.close()
      const probeCount = 5
      for (let probe = 0; probe < probeCount; probe++) expect((await t.request('GET', '/ready')).status).toBe(503)
      expect(lines.filter((line) => line.msg === 'ready.failed')).toHaveLength(1)
      expect(metricValue((await t.request('GET', '/metrics')).text, 'flash_sale_ready_failures_total')).toBe(probeCount)
    })
  })
}
