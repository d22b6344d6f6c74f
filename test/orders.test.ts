// Proves on every engine that a hold becomes at most one order (I4) under concurrent requests in
// process and across {1, many} server processes, that orders and hold releases answer what SPEC §3
// says with stock checked after each step, that expiry racing conversion ends every hold either
// converted with one order or expired, never both, and that a transient conflict is retried
// (or, with its attempts used up, answered 503 busy having written nothing).
import { describe, expect, it } from 'vitest'
import { buildTestApp, testWebhookSecret, type TestApp } from './helpers/app.js'
import { openConflict, stopGracefully } from './helpers/bursts.js'
import { rawQuery, testEngines } from './helpers/engines.js'
import { countBy, request, signedWebhook, times, type Reply } from './helpers/http.js'
import { eventsNamed, pollUntil, unknownId, untilWallClock } from './helpers/lifecycle.js'
import { holdOf, stockOf, webhookEnv } from './helpers/checkout.js'
import { expectProblem } from './helpers/problem-checks.js'
import { logEvents, processCounts, serverFor, startCluster, type ServerProcess } from './helpers/servers.js'

interface HoldBody {
  hold_id: string
  qty: number
  expires_at: string
}

async function hold(t: TestApp, qty: number, productId = t.productId): Promise<HoldBody> {
  const reply = await t.request('POST', '/api/holds', { body: { product_id: productId, qty } })
  expect(reply.status).toBe(201)
  return reply.body as HoldBody
}

function order(t: TestApp, holdId: string): Promise<Reply> {
  return t.request('POST', '/api/orders', { body: { hold_id: holdId } })
}

async function available(t: TestApp, productId = t.productId): Promise<number> {
  const reply = await t.request('GET', `/api/products/${productId}`)
  expect(reply.status).toBe(200)
  return reply.body.available_stock as number
}

// Every hold's final state from the rows: its status and how many orders name it.
async function holdOutcomes(engine: TestApp['engine'], databaseUrl: string): Promise<Map<string, { status: string; orders: number }>> {
  const rows = (await rawQuery(
    engine,
    databaseUrl,
    'select h.id as id, h.status as status, count(o.id) as orders from holds h left join orders o on o.hold_id = h.id group by h.id, h.status',
  )) as Array<{ id: string; status: string; orders: number | string }>
  return new Map(rows.map((row) => [row.id, { status: row.status, orders: Number(row.orders) }]))
}

// One hold's replies from a race: at most one 201, and every 409 names that order.
function classify(replies: Reply[]): { orderId: string | null } {
  const created = replies.filter((reply) => reply.status === 201)
  expect(created.length).toBeLessThanOrEqual(1)
  const orderId = (created[0]?.body.order_id as string | undefined) ?? null
  for (const reply of replies) {
    if (reply.status === 201) continue
    if (reply.status === 409) {
      expect(reply.body).toMatchObject({ code: 'hold_already_used', order_id: orderId })
      expect(orderId).not.toBeNull()
    } else expectProblem(reply, 410, 'hold_expired')
  }
  return { orderId }
}

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: orders`, () => {
    it('20 concurrent orders for one hold: exactly one 201 and 19 × 409 hold_already_used naming that order', async () => {
      const t = await buildTestApp(engine.name, { stock: 10 })
      const held = await hold(t, 2)
      const replies = await Promise.all(times(20, () => order(t, held.hold_id)))
      expect(countBy(replies, (reply) => reply.status)).toEqual({ 201: 1, 409: 19 })
      const orderId = replies.find((reply) => reply.status === 201)!.body.order_id as string
      for (const reply of replies.filter((reply) => reply.status === 409)) {
        expectProblem(reply, 409, 'hold_already_used')
        expect(reply.body.order_id).toBe(orderId)
      }
      expect(eventsNamed(t.events, 'order.created')).toHaveLength(1)
      expect((await t.request('GET', `/api/holds/${held.hold_id}`)).body).toMatchObject({ status: 'converted' })
      expect((await t.request('GET', `/api/orders/${orderId}`)).body).toMatchObject({ status: 'pending', hold_id: held.hold_id, qty: 2 })
      expect(await available(t)).toBe(8)
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    for (const processes of processCounts(engine.name)) {
      it(`20 concurrent orders for one hold over ${processes} process(es): exactly one 201 and 19 × 409 hold_already_used naming that order`, async () => {
        const cluster = await startCluster(engine.name, { processes, stock: 10 })
        const { servers } = cluster
        const held = await holdOf(servers[0]!.baseUrl, cluster.productId, 3)
        const replies = await Promise.all(times(20, (index) => request(serverFor(servers, index).baseUrl, 'POST', '/api/orders', { body: { hold_id: held } })))
        expect(countBy(replies, (reply) => reply.status)).toEqual({ 201: 1, 409: 19 })
        const winner = replies.find((reply) => reply.status === 201)!.body
        expect(winner).toMatchObject({ hold_id: held, qty: 3, status: 'pending' })
        for (const reply of replies.filter((reply) => reply.status === 409)) {
          expectProblem(reply, 409, 'hold_already_used')
          expect(reply.body.order_id).toBe(winner.order_id)
        }
        expect(await rawQuery(engine.name, cluster.databaseUrl, `select id from orders where hold_id = '${held}'`)).toEqual([{ id: winner.order_id }])
        expect(await cluster.runtime.store.getHold(held)).toMatchObject({ status: 'converted' })
        expect(await cluster.runtime.store.getOrder(winner.order_id)).toMatchObject({ holdId: held, status: 'pending', qty: 3 })
        expect(await stockOf(serverFor(servers, processes - 1).baseUrl, cluster.productId)).toEqual({ stock: 10, available_stock: 7, reserved: 3, sold: 0 })
        expect(await cluster.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
      })
    }

    it('a burst of orders on one product is served in batches: each hold one order, its duplicates refused naming it, early payments applied (batched path)', async () => {
      // A server process of its own, so requests queue behind the transaction in flight.
      const cluster = await startCluster(engine.name, { processes: 1, stock: 100, env: webhookEnv })
      const { baseUrl } = cluster.servers[0]!
      const holdIds = await Promise.all(times(60, () => holdOf(baseUrl, cluster.productId, 1)))
      // Ten holds get their success before their order: each order must be created paid.
      const earlyPaid = holdIds.slice(0, 10)
      for (const [index, holdId] of earlyPaid.entries()) {
        const early = await request(
          baseUrl,
          'POST',
          '/api/payments/webhook',
          signedWebhook(testWebhookSecret, { hold_id: holdId, status: 'success', payment_id: `pay_${index}` }, { key: `evt-batch-${index}` }),
        )
        expect(early.status, early.text).toBe(202)
      }
      // Every hold ordered twice at once, the two requests side by side.
      const targets = holdIds.flatMap((holdId) => [holdId, holdId])
      const replies = await Promise.all(targets.map((holdId) => request(baseUrl, 'POST', '/api/orders', { body: { hold_id: holdId } })))
      expect(countBy(replies, (reply) => reply.status)).toEqual({ 201: 60, 409: 60 })
      const orderOfHold = new Map<string, string>()
      for (const [index, reply] of replies.entries()) {
        if (reply.status !== 201) continue
        expect(reply.body.hold_id).toBe(targets[index])
        expect(orderOfHold.has(targets[index]!)).toBe(false)
        orderOfHold.set(targets[index]!, reply.body.order_id as string)
        expect(reply.body.status).toBe(earlyPaid.includes(targets[index]!) ? 'paid' : 'pending')
      }
      expect(new Set(orderOfHold.values()).size).toBe(60)
      for (const [index, reply] of replies.entries()) {
        if (reply.status === 409) expect(reply.body).toMatchObject({ code: 'hold_already_used', order_id: orderOfHold.get(targets[index]!) })
      }
      // Served in batches: fewer transactions than requests.
      const metrics = (await request(baseUrl, 'GET', '/metrics')).text
      const batches = Number(/flash_sale_order_batch_size_count (\d+)/.exec(metrics)?.[1])
      const batched = Number(/flash_sale_order_batch_size_sum (\d+)/.exec(metrics)?.[1])
      expect(batched).toBe(120)
      expect(batches).toBeLessThan(120)
      const orderRows = await rawQuery(engine.name, cluster.databaseUrl, 'select hold_id, status from orders')
      expect(orderRows).toHaveLength(60)
      expect(await stockOf(baseUrl, cluster.productId)).toEqual({ stock: 100, available_stock: 40, reserved: 50, sold: 10 })
      expect(await cluster.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it('an order states amount = price × qty as a decimal string, currency, status pending and expires_at = created_at + ORDER_TTL_SECONDS', async () => {
      const t = await buildTestApp(engine.name, { stock: 10, priceMinor: 9_999, env: { ORDER_TTL_SECONDS: '600' } })
      const held = await hold(t, 3)
      const reply = await order(t, held.hold_id)
      expect(reply.status).toBe(201)
      const body = reply.body
      expect(body).toMatchObject({ hold_id: held.hold_id, product_id: t.productId, qty: 3, amount: '299.97', currency: 'USD', status: 'pending' })
      expect(body.order_id).toMatch(/^\S{16,}$/)
      expect(body.created_at).toBe(t.clock.now().toISOString())
      expect(Date.parse(body.expires_at) - Date.parse(body.created_at)).toBe(600_000)
      // GET answers the same order.
      expect((await t.request('GET', `/api/orders/${body.order_id}`)).body).toMatchObject({ ...body, status: 'pending' })
      // The hold's units now belong to the order: still reserved, not sold.
      const product = (await t.request('GET', `/api/products/${t.productId}`)).body
      expect(product).toMatchObject({ available_stock: 7, reserved: 3, sold: 0 })

      // A currency without minor units has no decimal point.
      const created = await t.admin('POST', '/api/admin/products', { name: 'yen item', price: 1500, currency: 'JPY', stock: 5 })
      expect(created.status).toBe(201)
      const yenHold = await hold(t, 2, created.body.id as number)
      expect((await order(t, yenHold.hold_id)).body).toMatchObject({ amount: '3000', currency: 'JPY', qty: 2 })
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 2, violations: [] })
    })

    it('an order from a released hold is refused 409 hold_released and takes no units', async () => {
      const t = await buildTestApp(engine.name, { stock: 5 })
      const held = await hold(t, 5)
      expect((await t.request('DELETE', `/api/holds/${held.hold_id}`)).status).toBe(200)
      expectProblem(await order(t, held.hold_id), 409, 'hold_released')
      expect(eventsNamed(t.events, 'order.created')).toHaveLength(0)
      expect(await available(t)).toBe(5)
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it('an order for an unknown hold is 404 hold_not_found', async () => {
      const t = await buildTestApp(engine.name, { stock: 5 })
      expectProblem(await order(t, unknownId('hold')), 404, 'hold_not_found')
      expect(await available(t)).toBe(5)
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it('DELETE releases an active hold at once (200 released); a second DELETE answers 200 and releases nothing more', async () => {
      const t = await buildTestApp(engine.name, { stock: 10 })
      const held = await hold(t, 3)
      expect(await available(t)).toBe(7)
      const first = await t.request('DELETE', `/api/holds/${held.hold_id}`)
      expect(first.status).toBe(200)
      expect(first.body).toMatchObject({ hold_id: held.hold_id, status: 'released', qty: 3 })
      expect(await available(t)).toBe(10)
      // Another buyer's hold, so a second release of the same units would show as a shortfall.
      await hold(t, 4)
      expect(await available(t)).toBe(6)
      const again = await t.request('DELETE', `/api/holds/${held.hold_id}`)
      expect(again.status).toBe(200)
      expect(again.body).toMatchObject({ hold_id: held.hold_id, status: 'released' })
      expect(await available(t)).toBe(6)
      expect((await t.request('GET', `/api/products/${t.productId}`)).body).toMatchObject({ reserved: 4 })
      expect(eventsNamed(t.events, 'hold.released')).toHaveLength(1)
      expect((await t.request('GET', `/api/holds/${held.hold_id}`)).body).toMatchObject({ status: 'released' })
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it('DELETE on a converted hold is 409 hold_already_used and the order keeps its units', async () => {
      const t = await buildTestApp(engine.name, { stock: 10 })
      const held = await hold(t, 2)
      const created = await order(t, held.hold_id)
      expect(created.status).toBe(201)
      expect(await available(t)).toBe(8)
      expectProblem(await t.request('DELETE', `/api/holds/${held.hold_id}`), 409, 'hold_already_used')
      expect(await available(t)).toBe(8)
      expect((await t.request('GET', `/api/orders/${created.body.order_id}`)).body).toMatchObject({ status: 'pending' })
      expect((await t.request('GET', `/api/holds/${held.hold_id}`)).body).toMatchObject({ status: 'converted' })
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it('DELETE on an expired hold is 410 hold_expired and releases nothing twice', async () => {
      const t = await buildTestApp(engine.name, { stock: 10 })
      const held = await hold(t, 4)
      await hold(t, 1)
      t.clock.advanceMs(Date.parse(held.expires_at) - t.clock.now().getTime())
      expect(await available(t)).toBe(10)
      // A hold taken after the others lapsed keeps its units through the refused release.
      await hold(t, 5)
      expect(await available(t)).toBe(5)
      expectProblem(await t.request('DELETE', `/api/holds/${held.hold_id}`), 410, 'hold_expired')
      expect(await available(t)).toBe(5)
      expect(eventsNamed(t.events, 'hold.released')).toHaveLength(0)
      await t.sweep()
      expect(await available(t)).toBe(5)
      expectProblem(await t.request('DELETE', `/api/holds/${held.hold_id}`), 410, 'hold_expired')
      expect((await t.request('GET', `/api/holds/${held.hold_id}`)).body).toMatchObject({ status: 'expired' })
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it('DELETE on an unknown hold is 404 hold_not_found and changes no stock', async () => {
      const t = await buildTestApp(engine.name, { stock: 10 })
      await hold(t, 2)
      expectProblem(await t.request('DELETE', `/api/holds/${unknownId('hold')}`), 404, 'hold_not_found')
      expect(await available(t)).toBe(8)
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it('orders and sweeps racing the expiry instant leave every hold converted with one order or expired, never both', async () => {
      const t = await buildTestApp(engine.name, { stock: 40 })
      const holds = await Promise.all(times(36, () => hold(t, 1)))
      const racing = holds.slice(0, 30)
      // Ordered only after the instant: these must all end expired.
      const lateOnly = holds.slice(30)
      t.clock.advanceMs(Date.parse(holds[0]!.expires_at) - 1 - t.clock.now().getTime())

      const waveA = racing.map((held) => order(t, held.hold_id))
      const sweepsA = times(2, () => t.sweep())
      // The first answer was decided before the instant, so at least one hold converts; the
      // clock then reaches expires_at while the rest of wave A is still in flight.
      await Promise.race(waveA)
      t.clock.advanceMs(1)
      const waveB = holds.map((held) => order(t, held.hold_id))
      const sweepsB = times(3, () => t.sweep())
      const [repliesA, repliesB] = await Promise.all([Promise.all(waveA), Promise.all(waveB), Promise.all([...sweepsA, ...sweepsB])])
      await t.sweep()

      const orderIdByHold = new Map<string, string | null>()
      for (const [index, held] of holds.entries()) {
        const replies = index < racing.length ? [repliesA[index]!, repliesB[index]!] : [repliesB[index]!]
        orderIdByHold.set(held.hold_id, classify(replies).orderId)
      }
      for (const held of lateOnly) expect(orderIdByHold.get(held.hold_id)).toBeNull()
      const convertedIds = [...orderIdByHold].filter(([, orderId]) => orderId !== null).map(([holdId]) => holdId)
      expect(convertedIds.length).toBeGreaterThanOrEqual(1)

      const rows = await holdOutcomes(t.engine, t.databaseUrl)
      const expiredEvents = new Set(eventsNamed(t.events, 'hold.expired').map((event) => event.holdId as string))
      expect(expiredEvents.size).toBe(eventsNamed(t.events, 'hold.expired').length)
      for (const [holdId, orderId] of orderIdByHold) {
        expect({ holdId, ...rows.get(holdId) }).toEqual(orderId ? { holdId, status: 'converted', orders: 1 } : { holdId, status: 'expired', orders: 0 })
        expect(expiredEvents.has(holdId)).toBe(orderId === null)
        expect((await t.request('GET', `/api/holds/${holdId}`)).body.status).toBe(orderId ? 'converted' : 'expired')
      }
      expect(await available(t)).toBe(40 - convertedIds.length)
      expect((await t.request('GET', `/api/products/${t.productId}`)).body).toMatchObject({ reserved: convertedIds.length, sold: 0 })
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    for (const processes of processCounts(engine.name)) {
      it(`orders racing ${processes} process(es)' own sweepers at the expiry instant leave every hold converted with one order or expired, never both`, async () => {
        const cluster = await startCluster(engine.name, { processes, stock: 40, env: { HOLD_TTL_SECONDS: '2', SWEEP_INTERVAL_MS: '10' } })
        const { servers } = cluster
        const created = await Promise.all(times(30, (index) => request(serverFor(servers, index).baseUrl, 'POST', '/api/holds', { body: { product_id: cluster.productId, qty: 1 } })))
        expect(countBy(created, (reply) => reply.status)).toEqual({ 201: 30 })
        const holds = created.map((reply) => reply.body as HoldBody)

        // Each hold gets two orders, on two processes where there are two, sent relative to its
        // expires_at: the first three at once, 2 s before (always converted, even on a loaded
        // machine where a request can take most of a second), the last three 200 ms after
        // (always expired), the rest between 150 ms before and 30 ms after (a request takes tens of
        // ms here), while every process sweeps every 10 ms.
        const offsetMs = (index: number): number => (index < 3 ? -2_000 : index >= 27 ? 200 : -150 + (index % 10) * 20)
        const repliesByHold = await Promise.all(
          holds.map(async (held, index) => {
            await untilWallClock(Date.parse(held.expires_at) + offsetMs(index))
            const body = { hold_id: held.hold_id }
            return Promise.all([0, 1].map((shift) => request(serverFor(servers, index + shift).baseUrl, 'POST', '/api/orders', { body })))
          }),
        )
        const orderIdByHold = new Map(holds.map((held, index) => [held.hold_id, classify(repliesByHold[index]!).orderId]))
        const convertedCount = [...orderIdByHold.values()].filter((orderId) => orderId !== null).length
        const expiredCount = 30 - convertedCount
        // Both sides of the race happened.
        expect(convertedCount).toBeGreaterThan(0)
        expect(expiredCount).toBeGreaterThan(0)

        // The sweepers bring every remaining hold up to date.
        const rows = await pollUntil(
          () => holdOutcomes(engine.name, cluster.databaseUrl),
          (outcomes) => [...outcomes.values()].every((outcome) => outcome.status !== 'active'),
          { what: 'no active hold left' },
        )
        const product = await request(servers[0]!.baseUrl, 'GET', `/api/products/${cluster.productId}`)
        expect(product.body).toMatchObject({ stock: 40, available_stock: 40 - convertedCount, reserved: convertedCount, sold: 0 })
        // Stopped, every process has logged each release it made and makes none again.
        expect(await stopGracefully(servers)).toEqual(servers.map(() => ({ code: 0, signal: null })))
        const expiredLogged = logEvents(servers, 'hold.expired').map((line) => line.holdId as string)
        expect(expiredLogged).toHaveLength(expiredCount)
        expect(new Set(expiredLogged).size).toBe(expiredCount)
        for (const [holdId, orderId] of orderIdByHold) {
          expect({ holdId, ...rows.get(holdId) }).toEqual(orderId ? { holdId, status: 'converted', orders: 1 } : { holdId, status: 'expired', orders: 0 })
          expect(expiredLogged.includes(holdId)).toBe(orderId === null)
        }
        console.log(
          `[expiry race] ${engine.name} ${processes} process(es): ${convertedCount} of 30 holds converted, ${expiredCount} expired, tx.retry=${logEvents(servers, 'tx.retry').length}`,
        )
        expect(await cluster.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
      })
    }

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
        await pollUntil(
          () => logEvents([patient], 'tx.retry').length,
          (count) => count > 0,
          { what: 'tx.retry in the log' },
        )
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
      expectProblem(busy, 503, 'busy')
      expect(Number(busy.headers.get('retry-after'))).toBeGreaterThan(0)
      await pollUntil(
        () => logEvents([impatient], 'tx.busy').length,
        (count) => count > 0,
        { what: 'tx.busy in the log' },
      )
      expect(await cluster.runtime.store.getHold(refusedHold)).toMatchObject({ status: 'active' })
      expect(await rawQuery(engine.name, cluster.databaseUrl, `select id from orders where hold_id = '${refusedHold}'`)).toEqual([])
      // The client's retry, as Retry-After invites, is processed afresh.
      expect((await request(impatient.baseUrl, 'POST', '/api/orders', { body: { hold_id: refusedHold } })).status).toBe(201)
      console.log(
        `[retries] ${engine.name} forced conflict: tx.retry=${retries.length} (default attempts, then 201), tx.busy=${logEvents([impatient], 'tx.busy').length} (TX_ATTEMPTS_MAX=1, 503)`,
      )
      const product = await request(patient.baseUrl, 'GET', `/api/products/${cluster.productId}`)
      expect(product.body).toMatchObject({ reserved: 2, sold: 0, available_stock: 8 })
      expect(await cluster.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })
  })
}
