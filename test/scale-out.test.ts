// Proves I6 (the invariants hold with many processes on one database): real server processes race
// on one product across the issue-3 matrix (engines x {1, many} processes x {hold boundary, orders
// on one hold, duplicate webhooks, expiry racing conversion}) with exact counts and a clean audit,
// and WORKERS, SIGTERM drains and transient-conflict retries behave as SPEC §2 and §5 say.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { EngineName } from '../src/config.js'
import { testWebhookSecret } from './helpers/app.js'
import { attempt, exitOf, logEvents, openConflict, runBurst, startSharedCluster, statusCounts, waitUntil, type Outcome, type SharedCluster } from './helpers/bursts.js'
import { rawQuery, testEngines } from './helpers/engines.js'
import { countBy, request, signedWebhook, times, type Reply } from './helpers/http.js'
import { startCluster, type Cluster, type ServerProcess } from './helpers/servers.js'

const cleanAudit = (checkedProducts: number) => ({ ok: true, checkedProducts, violations: [] })

function retriesIn(servers: readonly ServerProcess[]): number {
  return logEvents(servers, 'tx.retry').length
}

// One line per matrix cell, for the closing note: counts, transaction retries, wall time.
function printCell(engine: EngineName, processes: number, scenario: string, figures: Record<string, unknown>, retries: number, wallMs: number): void {
  const counts = Object.entries(figures)
    .map(([name, value]) => `${name}=${typeof value === 'object' ? JSON.stringify(value) : String(value)}`)
    .join(' ')
  console.log(`[matrix] ${engine} processes=${processes} ${scenario}: ${counts} tx.retry=${retries} wall_ms=${wallMs}`)
}

function serverFor(servers: readonly ServerProcess[], index: number): ServerProcess {
  return servers[index % servers.length]!
}

async function committedHoldCount(engine: EngineName, databaseUrl: string, productId: number): Promise<number> {
  const rows = (await rawQuery(engine, databaseUrl, `select count(*) as n from holds where product_id = ${productId}`)) as Array<{ n: unknown }>
  return Number(rows[0]!.n)
}

// How long a drain of this small burst may take, and a request wait during it. The service's own
// limit is 10 s before it forces an exit (code 1); a drain that needs half of that is stuck.
const drainTimeoutMs = 5_000

interface Drain {
  outcomes: Outcome[]
  // Successes that reached the client after SIGTERM had been sent (counted in arrival order).
  acknowledgedAfterSignal: number
}

// Fires `count` concurrent holds at `server` and sends SIGTERM as soon as the first is answered,
// so the rest are in flight, queued in a hold batch, or not yet accepted when the drain starts.
async function burstThenSigterm(cluster: Cluster, server: ServerProcess, count: number): Promise<Drain> {
  let signalled = false
  let acknowledgedAfterSignal = 0
  const tasks = times(count, () => () => attempt(server.baseUrl, 'POST', '/api/holds', { body: { product_id: cluster.productId, qty: 1 } }, drainTimeoutMs))
  const outcomes = await runBurst(tasks, count, (outcome) => {
    if (signalled) {
      if (outcome.answered && outcome.reply.status === 201) acknowledgedAfterSignal += 1
      return
    }
    signalled = true
    server.child.kill('SIGTERM')
  })
  return { outcomes, acknowledgedAfterSignal }
}

// After a drain: every answer was a success or a refusal that changed nothing, holds were still
// answered after the signal, and the rows hold exactly the acknowledged holds (nothing committed
// was left unanswered, nothing answered was lost).
async function expectDrained(cluster: Cluster, drain: Drain, holdsBefore: number): Promise<void> {
  const { outcomes, acknowledgedAfterSignal } = drain
  const answered = outcomes.filter((outcome): outcome is Outcome & { answered: true } => outcome.answered)
  const errors = countBy(outcomes.filter((outcome) => !outcome.answered), (outcome) => (outcome.answered ? '' : outcome.error))
  console.log(`[drain] ${cluster.engine} ${JSON.stringify(statusCounts(outcomes))} ${JSON.stringify(errors)}, acknowledged after SIGTERM: ${acknowledgedAfterSignal}`)
  // Nobody is left waiting: each request is answered or refused within the drain's time.
  expect(errors.timeout ?? 0).toBe(0)
  for (const outcome of answered) expect([201, 503]).toContain(outcome.reply.status)
  // A request that reaches a draining server may be turned away, but as SPEC's errors are:
  // problem details with a code, and a Retry-After saying when to come back (elsewhere).
  for (const outcome of answered.filter((outcome) => outcome.reply.status === 503)) {
    expect({ contentType: outcome.reply.headers.get('content-type'), retryAfter: outcome.reply.headers.get('retry-after'), body: outcome.reply.body }).toMatchObject({
      contentType: expect.stringContaining('application/problem+json'),
      retryAfter: expect.stringMatching(/^\d+$/),
      body: { code: 'busy' },
    })
  }
  const acknowledged = answered.filter((outcome) => outcome.reply.status === 201)
  expect(acknowledgedAfterSignal).toBeGreaterThan(0)
  expect(await committedHoldCount(cluster.engine, cluster.databaseUrl, cluster.productId)).toBe(holdsBefore + acknowledged.length)
  for (const outcome of acknowledged) expect(await cluster.runtime.store.getHold(outcome.reply.body.hold_id)).toMatchObject({ status: 'active', qty: 1 })
  expect(await cluster.audit()).toEqual(cleanAudit(1))
}

for (const engine of testEngines()) {
  const manyProcesses = engine.name === 'sqlite' ? 2 : 3

  describe.skipIf(!engine.available)(`${engine.name}: scale-out`, () => {
    for (const processes of [1, manyProcesses]) {
      // One set of processes for these three cells (start-up is the slow part on a loaded 2-core
      // machine); each cell sells a product of its own and the audit covers every product so far.
      describe(`${processes} process(es) sharing one database`, () => {
        let cluster: SharedCluster
        const newProduct = (stock: number): Promise<number> => cluster.createProduct(stock)
        beforeAll(async () => {
          cluster = await startSharedCluster(engine.name, { processes, env: { WEBHOOK_SECRET: testWebhookSecret } })
        })
        afterAll(async () => cluster?.close())

        it('200 concurrent holds for 40 units: exactly 40 granted, 160 refused insufficient_stock', async () => {
          const productId = await newProduct(40)
          const retriesBefore = retriesIn(cluster.servers)
          const startedAtMs = Date.now()
          const replies = await Promise.all(
            times(200, (index) => request(serverFor(cluster.servers, index).baseUrl, 'POST', '/api/holds', { body: { product_id: productId, qty: 1 } })),
          )
          const wallMs = Date.now() - startedAtMs
          const counts = countBy(replies, (reply) => reply.status)
          printCell(engine.name, processes, 'hold-boundary', { requests: 200, stock: 40, statuses: counts }, retriesIn(cluster.servers) - retriesBefore, wallMs)
          expect(counts).toEqual({ 201: 40, 409: 160 })
          for (const reply of replies.filter((reply) => reply.status === 409)) expect(reply.body).toMatchObject({ code: 'insufficient_stock' })
          const holdIds = replies.filter((reply) => reply.status === 201).map((reply) => reply.body.hold_id as string)
          expect(new Set(holdIds).size).toBe(40)
          expect(await committedHoldCount(engine.name, cluster.databaseUrl, productId)).toBe(40)
          const product = await request(cluster.servers[0]!.baseUrl, 'GET', `/api/products/${productId}`)
          expect(product.body).toMatchObject({ stock: 40, reserved: 40, sold: 0, available_stock: 0 })
          expect(await cluster.audit()).toEqual(cleanAudit(cluster.productCount))
        })

        it('20 concurrent orders for one hold: one 201, nineteen 409 hold_already_used naming that order', async () => {
          const productId = await newProduct(10)
          const hold = await request(cluster.servers[0]!.baseUrl, 'POST', '/api/holds', { body: { product_id: productId, qty: 3 } })
          expect(hold.status).toBe(201)
          const retriesBefore = retriesIn(cluster.servers)
          const startedAtMs = Date.now()
          const replies = await Promise.all(
            times(20, (index) => request(serverFor(cluster.servers, index).baseUrl, 'POST', '/api/orders', { body: { hold_id: hold.body.hold_id } })),
          )
          const wallMs = Date.now() - startedAtMs
          const counts = countBy(replies, (reply) => reply.status)
          printCell(engine.name, processes, 'orders-on-one-hold', { requests: 20, statuses: counts }, retriesIn(cluster.servers) - retriesBefore, wallMs)
          expect(counts).toEqual({ 201: 1, 409: 19 })
          const winner = replies.find((reply) => reply.status === 201)!.body
          expect(winner).toMatchObject({ hold_id: hold.body.hold_id, qty: 3, status: 'pending' })
          for (const reply of replies.filter((reply) => reply.status === 409)) {
            expect(reply.body).toMatchObject({ code: 'hold_already_used', order_id: winner.order_id })
          }
          expect(await cluster.runtime.store.getHold(hold.body.hold_id)).toMatchObject({ status: 'converted' })
          expect(await cluster.runtime.store.getOrder(winner.order_id)).toMatchObject({ holdId: hold.body.hold_id, status: 'pending', qty: 3 })
          const product = await request(cluster.servers[0]!.baseUrl, 'GET', `/api/products/${productId}`)
          expect(product.body).toMatchObject({ stock: 10, reserved: 3, sold: 0, available_stock: 7 })
          expect(await cluster.audit()).toEqual(cleanAudit(cluster.productCount))
        })

        it('20 concurrent webhooks with one key: one effect, twenty identical 200 answers, nineteen marked replayed', async () => {
          const productId = await newProduct(10)
          const hold = await request(cluster.servers[0]!.baseUrl, 'POST', '/api/holds', { body: { product_id: productId, qty: 2 } })
          const order = await request(cluster.servers[0]!.baseUrl, 'POST', '/api/orders', { body: { hold_id: hold.body.hold_id } })
          expect(order.status).toBe(201)
          const key = `dup-${processes}-${order.body.order_id}`
          const body = { order_id: order.body.order_id, status: 'success', payment_id: 'pay-dup', amount: order.body.amount }
          const retriesBefore = retriesIn(cluster.servers)
          const startedAtMs = Date.now()
          const replies = await Promise.all(
            times(20, (index) => request(serverFor(cluster.servers, index).baseUrl, 'POST', '/api/payments/webhook', signedWebhook(testWebhookSecret, body, { key }))),
          )
          const wallMs = Date.now() - startedAtMs
          const counts = countBy(replies, (reply) => reply.status)
          const replayed = replies.filter((reply) => reply.headers.get('idempotent-replayed') === 'true').length
          printCell(engine.name, processes, 'duplicate-webhooks', { requests: 20, statuses: counts, replayed }, retriesIn(cluster.servers) - retriesBefore, wallMs)
          expect(counts).toEqual({ 200: 20 })
          expect(replies[0]!.body).toMatchObject({ status: 'processed', order_id: order.body.order_id, order_status: 'paid' })
          for (const reply of replies) expect(reply.body).toEqual(replies[0]!.body)
          expect(replayed).toBe(19)
          // One effect: one payment.applied across every process, sold once.
          const applied = () => logEvents(cluster.servers, 'payment.applied').filter((line) => line.key === key)
          await waitUntil('the payment.applied log line', () => applied().length >= 1)
          expect(applied()).toHaveLength(1)
          expect(await cluster.runtime.store.getPaymentEvent(key)).toMatchObject({ state: 'processed', orderId: order.body.order_id })
          const product = await request(cluster.servers[0]!.baseUrl, 'GET', `/api/products/${productId}`)
          expect(product.body).toMatchObject({ stock: 10, reserved: 0, sold: 2, available_stock: 8 })
          expect(await cluster.audit()).toEqual(cleanAudit(cluster.productCount))
        })
      })

      it(`${processes} process(es): orders racing hold expiry and the sweepers end each hold converted with one order or expired with none, counts adding up`, async () => {
        const holdCount = 30
        const cluster = await startCluster(engine.name, { processes, stock: holdCount, env: { HOLD_TTL_SECONDS: '1', SWEEP_INTERVAL_MS: '50' } })
        const { servers, productId } = cluster
        const holds = await Promise.all(times(holdCount, (index) => request(serverFor(servers, index).baseUrl, 'POST', '/api/holds', { body: { product_id: productId, qty: 1 } })))
        expect(countBy(holds, (reply) => reply.status)).toEqual({ 201: holdCount })
        // Each hold gets one order, sent relative to its expires_at: a few well before, a few
        // well after, and most within 80 ms either side, where the sweepers race the order.
        const offsetMs = (index: number): number => (index < 5 ? -600 : index >= holdCount - 5 ? 200 : (index - holdCount / 2) * 8)
        const retriesBefore = retriesIn(servers)
        const startedAtMs = Date.now()
        const answers = await Promise.all(
          holds.map(async (hold, index) => {
            const sendAtMs = Date.parse(hold.body.expires_at) + offsetMs(index)
            await new Promise((resolve) => setTimeout(resolve, Math.max(0, sendAtMs - Date.now())))
            return request(serverFor(servers, index + 1).baseUrl, 'POST', '/api/orders', { body: { hold_id: hold.body.hold_id } })
          }),
        )
        const counts = countBy(answers, (reply) => reply.status)
        expect(Object.keys(counts).every((status) => status === '201' || status === '410')).toBe(true)
        for (const reply of answers.filter((reply) => reply.status === 410)) expect(reply.body).toMatchObject({ code: 'hold_expired' })

        // The sweepers bring every hold that did not convert up to date.
        const { store } = cluster.runtime
        const holdIds = holds.map((hold) => hold.body.hold_id as string)
        await waitUntil('every unconverted hold swept', async () => (await Promise.all(holdIds.map((id) => store.getHold(id)))).every((hold) => hold?.status !== 'active'))
        const wallMs = Date.now() - startedAtMs
        const finalHolds = await Promise.all(holdIds.map((id) => store.getHold(id)))
        const ordersByHold = countBy((await rawQuery(engine.name, cluster.databaseUrl, 'select hold_id from orders')) as Array<{ hold_id: string }>, (row) => row.hold_id)
        for (const [index, reply] of answers.entries()) {
          const holdId = holdIds[index]!
          if (reply.status === 201) {
            expect({ status: finalHolds[index]?.status, orders: ordersByHold[holdId] }).toEqual({ status: 'converted', orders: 1 })
            expect(await store.getOrder(reply.body.order_id)).toMatchObject({ holdId, status: 'pending' })
          } else {
            expect({ status: finalHolds[index]?.status, orders: ordersByHold[holdId] }).toEqual({ status: 'expired', orders: undefined })
          }
        }
        const converted = finalHolds.filter((hold) => hold?.status === 'converted').length
        const expired = finalHolds.filter((hold) => hold?.status === 'expired').length
        printCell(engine.name, processes, 'expiry-vs-conversion', { holds: holdCount, converted, expired, statuses: counts }, retriesIn(servers) - retriesBefore, wallMs)
        expect(converted + expired).toBe(holdCount)
        expect({ converted, expired }).toEqual({ converted: counts[201] ?? 0, expired: counts[410] ?? 0 })
        // Both sides of the race happened (orders sent 200 ms after expiry are always refused).
        expect(expired).toBeGreaterThan(0)
        expect(converted).toBeGreaterThan(0)
        // Each expired hold was released once, by one sweeper, and counted once.
        const expiredEvents = () => logEvents(servers, 'hold.expired').filter((line) => line.productId === productId)
        await waitUntil('a hold.expired log line per expired hold', () => expiredEvents().length >= expired)
        expect(new Set(expiredEvents().map((line) => line.holdId)).size).toBe(expired)
        expect(expiredEvents()).toHaveLength(expired)
        const product = await request(servers[0]!.baseUrl, 'GET', `/api/products/${productId}`)
        expect(product.body).toMatchObject({ stock: holdCount, reserved: converted, sold: 0, available_stock: holdCount - converted })
        expect(await cluster.audit()).toEqual(cleanAudit(1))
      })
    }

    it('WORKERS=2 runs two worker processes on one port and both serve holds; SIGTERM drains them: in-flight holds answered and committed, exit 0', async () => {
      const cluster = await startCluster(engine.name, { processes: 0, stock: 1_000 })
      const server = await cluster.start({ WORKERS: '2' })
      await waitUntil('both workers listening', () => logEvents([server], 'server.listening').length >= 2)
      const listening = logEvents([server], 'server.listening')
      expect(logEvents([server], 'server.started')).toEqual([expect.objectContaining({ workers: 2, pid: server.child.pid })])
      expect(listening).toHaveLength(2)
      expect(listening.map((line) => line.port)).toEqual([Number(new URL(server.baseUrl).port), Number(new URL(server.baseUrl).port)])
      const workerPids = new Set(listening.map((line) => line.pid))
      expect(workerPids.size).toBe(2)
      expect(workerPids.has(server.child.pid)).toBe(false)

      const warmup = await Promise.all(times(100, () => request(server.baseUrl, 'POST', '/api/holds', { body: { product_id: cluster.productId, qty: 1 } })))
      expect(countBy(warmup, (reply) => reply.status)).toEqual({ 201: 100 })
      await waitUntil('a hold.created line per hold', () => logEvents([server], 'hold.created').length >= 100)
      // Both workers took a share of the connections on the one port.
      expect(new Set(logEvents([server], 'hold.created').map((line) => line.pid))).toEqual(workerPids)

      const drain = await burstThenSigterm(cluster, server, 150)
      const exit = await exitOf(server, drainTimeoutMs).catch((error: Error) => error.message)
      await expectDrained(cluster, drain, 100)
      // Last, so the checks above report even when the drain does not finish in time.
      expect(new Set(logEvents([server], 'server.closed').map((line) => line.pid))).toEqual(workerPids)
      expect(exit).toEqual({ code: 0, signal: null })
    })

    it('a single process on SIGTERM answers and commits its in-flight holds, then exits 0', async () => {
      const cluster = await startCluster(engine.name, { processes: 1, stock: 1_000 })
      const server = cluster.servers[0]!
      const drain = await burstThenSigterm(cluster, server, 150)
      const exit = await exitOf(server, drainTimeoutMs).catch((error: Error) => error.message)
      await expectDrained(cluster, drain, 0)
      // Last, so the checks above report even when the drain does not finish in time.
      expect(logEvents([server], 'server.closed')).toHaveLength(1)
      expect(exit).toEqual({ code: 0, signal: null })
    })

    it('a transient conflict is retried (tx.retry logged) and the order succeeds; with TX_ATTEMPTS_MAX=1 it is 503 busy with Retry-After and writes nothing', async () => {
      const cluster = await startCluster(engine.name, { processes: 0, stock: 10 })
      const [patient, impatient] = await Promise.all([cluster.start(), cluster.start({ TX_ATTEMPTS_MAX: '1' })])
      const holdOn = async (server: ServerProcess) => (await request(server.baseUrl, 'POST', '/api/holds', { body: { product_id: cluster.productId, qty: 1 } })).body.hold_id as string
      const [retriedHold, refusedHold] = [await holdOn(patient), await holdOn(impatient)]

      // Retried: the conflict costs the patient server one attempt and the order is made on the
      // next. Exhausted: the impatient one has a single attempt, so its order is 503 busy.
      // PostgreSQL and MySQL need one deadlock per collision, so the two run one after the other;
      // on SQLite one held write lock stalls both servers, so they share its 5 s busy timeout.
      const together = engine.name === 'sqlite'
      const orderOn = (server: ServerProcess, holdId: string) => request(server.baseUrl, 'POST', '/api/orders', { body: { hold_id: holdId } })
      let retried: Promise<Reply>
      let refused: Promise<Reply> | undefined
      const retryConflict = await openConflict(engine.name, cluster.databaseUrl, { holdId: retriedHold, productId: cluster.productId })
      try {
        retried = orderOn(patient, retriedHold)
        if (together) refused = orderOn(impatient, refusedHold)
        await retryConflict.collide()
        await waitUntil('tx.retry in the log', () => logEvents([patient], 'tx.retry').length > 0, 15_000)
        if (together) await refused
      } finally {
        await retryConflict.release()
      }
      expect((await retried).status).toBe(201)
      const retries = logEvents([patient], 'tx.retry')
      expect(retries[0]).toMatchObject({ label: 'orders.create', attempt: 1, reason: expect.stringMatching(/40P01|ER_LOCK_DEADLOCK|SQLITE_BUSY/) })

      if (!refused) {
        const refuseConflict = await openConflict(engine.name, cluster.databaseUrl, { holdId: refusedHold, productId: cluster.productId })
        try {
          refused = orderOn(impatient, refusedHold)
          await refuseConflict.collide()
          await refused
        } finally {
          await refuseConflict.release()
        }
      }
      const busy = await refused
      expect(busy.status).toBe(503)
      expect(busy.body).toMatchObject({ code: 'busy' })
      expect(busy.headers.get('content-type')).toContain('application/problem+json')
      expect(Number(busy.headers.get('retry-after'))).toBeGreaterThan(0)
      await waitUntil('tx.busy in the log', () => logEvents([impatient], 'tx.busy').length > 0)
      expect(await cluster.runtime.store.getHold(refusedHold)).toMatchObject({ status: 'active' })
      expect(await rawQuery(engine.name, cluster.databaseUrl, `select id from orders where hold_id = '${refusedHold}'`)).toEqual([])
      // The client's retry, as Retry-After invites, is processed afresh.
      expect((await request(impatient.baseUrl, 'POST', '/api/orders', { body: { hold_id: refusedHold } })).status).toBe(201)
      console.log(`[retries] ${engine.name} forced conflict: tx.retry=${retries.length} (default attempts, then 201), tx.busy=${logEvents([impatient], 'tx.busy').length} (TX_ATTEMPTS_MAX=1, 503)`)
      const product = await request(patient.baseUrl, 'GET', `/api/products/${cluster.productId}`)
      expect(product.body).toMatchObject({ reserved: 2, sold: 0, available_stock: 8 })
      expect(await cluster.audit()).toEqual(cleanAudit(1))
    })

    it.skipIf(engine.name !== 'postgres')(
      '3 processes hammering one product under lock_timeout=5ms: lock timeouts are retried, never a 500, every answer matches the rows',
      async () => {
        const cluster = await startCluster(engine.name, { processes: 0, stock: 60 })
        // The schema moves from ?schema= into options, where lock_timeout can join it.
        const url = new URL(cluster.databaseUrl)
        const schema = url.searchParams.get('schema')!
        url.searchParams.delete('schema')
        url.searchParams.set('options', `-c search_path=${schema} -c lock_timeout=5ms`)
        // One at a time: the migrator's lock is a row lock too, and would time out between starters.
        for (let index = 0; index < 3; index++) await cluster.start({ DATABASE_URL: url.toString() })
        const { servers, productId } = cluster
        const startedAtMs = Date.now()
        const holds = await Promise.all(times(150, (index) => request(serverFor(servers, index).baseUrl, 'POST', '/api/holds', { body: { product_id: productId, qty: 1 } })))
        const granted = holds.filter((reply) => reply.status === 201)
        // Orders are served one transaction each: the burst queues on the product row lock.
        const orders = await Promise.all(granted.map((hold, index) => request(serverFor(servers, index).baseUrl, 'POST', '/api/orders', { body: { hold_id: hold.body.hold_id } })))
        const wallMs = Date.now() - startedAtMs
        const retries = logEvents(servers, 'tx.retry')
        const holdCounts = countBy(holds, (reply) => reply.status)
        const orderCounts = countBy(orders, (reply) => reply.status)
        console.log(
          `[retries] postgres 3 processes lock_timeout=5ms: holds ${JSON.stringify(holdCounts)}, orders ${JSON.stringify(orderCounts)}, tx.retry=${retries.length} tx.busy=${logEvents(servers, 'tx.busy').length} wall_ms=${wallMs}`,
        )
        expect(retries.length).toBeGreaterThan(0)
        expect(retries.every((line) => String(line.reason).startsWith('55P03'))).toBe(true)
        expect(Object.keys(holdCounts).every((status) => ['201', '409', '503'].includes(status))).toBe(true)
        expect(Object.keys(orderCounts).every((status) => ['201', '503'].includes(status))).toBe(true)
        for (const reply of [...holds, ...orders].filter((reply) => reply.status === 503)) {
          expect(reply.body).toMatchObject({ code: 'busy' })
          expect(reply.headers.get('retry-after')).not.toBeNull()
        }
        // A refusal for stock only when the stock was gone; every answer matches the rows.
        expect(granted.length).toBeLessThanOrEqual(60)
        if (holdCounts[409]) expect(granted.length).toBe(60)
        expect(await committedHoldCount(engine.name, cluster.databaseUrl, productId)).toBe(granted.length)
        const orderRows = (await rawQuery(engine.name, cluster.databaseUrl, `select count(*) as n from orders where product_id = ${productId}`)) as Array<{ n: unknown }>
        expect(Number(orderRows[0]!.n)).toBe(orderCounts[201] ?? 0)
        const product = await request(servers[0]!.baseUrl, 'GET', `/api/products/${productId}`)
        expect(product.body).toMatchObject({ reserved: granted.length, sold: 0 })
        expect(await cluster.audit()).toEqual(cleanAudit(1))
      },
    )
  })
}
