// Proves SPEC §4 on every engine: holds and pending orders stop counting at their expires_at
// without waiting for the sweeper (time advanced on a manual clock, rows checked as stored), and
// racing sweepers, in one process and in two real server processes, release each row exactly once.
import { describe, expect, it } from 'vitest'
import { buildTestApp, type TestApp } from './helpers/app.js'
import { rawQuery, testEngines } from './helpers/engines.js'
import { countBy, request, times } from './helpers/http.js'
import { stopGracefully } from './helpers/bursts.js'
import { eventsNamed, metricValue, pollUntil } from './helpers/lifecycle.js'
import { patchProduct } from './helpers/drops.js'
import { reclaimBatchMax, reclaimRoundsMax } from '../src/domain/settle.js'
import { logEvents, startCluster } from './helpers/servers.js'

async function hold(t: TestApp, productId: number, qty: number) {
  const reply = await t.request('POST', '/api/holds', { body: { product_id: productId, qty } })
  expect(reply.status).toBe(201)
  return reply.body as { hold_id: string; qty: number; expires_at: string }
}

async function product(t: TestApp, productId: number) {
  const reply = await t.request('GET', `/api/products/${productId}`)
  expect(reply.status).toBe(200)
  return reply.body as { stock: number; available_stock: number; reserved: number; sold: number }
}

// Moves the manual clock to `instant` plus offsetMs (never backwards).
function advanceTo(t: TestApp, instant: string, offsetMs = 0): void {
  const deltaMs = Date.parse(instant) + offsetMs - t.clock.now().getTime()
  expect(deltaMs).toBeGreaterThanOrEqual(0)
  t.clock.advanceMs(deltaMs)
}

async function storedStatus(t: TestApp, table: 'holds' | 'orders', id: string): Promise<string> {
  const rows = (await rawQuery(t.engine, t.databaseUrl, `select status from ${table} where id = '${id}'`)) as Array<{ status: string }>
  expect(rows).toHaveLength(1)
  return rows[0]!.status
}

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: expiry`, () => {
    it('one millisecond before expires_at the units are still held: product shows them taken, hold active, a competing hold refused', async () => {
      const t = await buildTestApp(engine.name, { stock: 5 })
      const held = await hold(t, t.productId, 5)
      expect(Date.parse(held.expires_at) - t.clock.now().getTime()).toBe(t.config.holdTtlMs)

      advanceTo(t, held.expires_at, -1)
      expect(await product(t, t.productId)).toMatchObject({ available_stock: 0, reserved: 5 })
      expect((await t.request('GET', `/api/holds/${held.hold_id}`)).body).toMatchObject({ status: 'active' })
      const competing = await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 1 } })
      expect(competing.status).toBe(409)
      expect(competing.body).toMatchObject({ code: 'insufficient_stock', available_stock: 0 })
      expect(eventsNamed(t.events, 'hold.expired')).toHaveLength(0)
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it('at expires_at the units are available again with no sweep run: GET counts them, the hold reads expired, a new hold takes them', async () => {
      const t = await buildTestApp(engine.name, { stock: 5 })
      const held = await hold(t, t.productId, 5)

      advanceTo(t, held.expires_at)
      // The row is still active as stored (reserved 5): availability comes from expires_at alone.
      expect(await product(t, t.productId)).toMatchObject({ stock: 5, available_stock: 5, reserved: 5 })
      expect(await storedStatus(t, 'holds', held.hold_id)).toBe('active')
      const view = await t.request('GET', `/api/holds/${held.hold_id}`)
      expect(view.status).toBe(200)
      expect(view.body).toMatchObject({ hold_id: held.hold_id, status: 'expired' })

      const next = await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 5 } })
      expect(next.status).toBe(201)
      expect(await product(t, t.productId)).toMatchObject({ available_stock: 0, reserved: 5 })
      // The new hold reclaimed the lapsed one itself, exactly once.
      expect(eventsNamed(t.events, 'hold.expired').map((event) => event.holdId)).toEqual([held.hold_id])
      expect(await storedStatus(t, 'holds', held.hold_id)).toBe('expired')
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it('an order placed 1 ms before expiry is created; one placed at expiry is refused 410 hold_expired and reserves nothing', async () => {
      const t = await buildTestApp(engine.name, { stock: 6 })
      const early = await hold(t, t.productId, 2)
      const late = await hold(t, t.productId, 3)
      expect(late.expires_at).toBe(early.expires_at)

      advanceTo(t, early.expires_at, -1)
      const created = await t.request('POST', '/api/orders', { body: { hold_id: early.hold_id } })
      expect(created.status).toBe(201)
      expect(created.body).toMatchObject({ status: 'pending', qty: 2 })

      t.clock.advanceMs(1)
      const refused = await t.request('POST', '/api/orders', { body: { hold_id: late.hold_id } })
      expect(refused.status).toBe(410)
      expect(refused.body).toMatchObject({ code: 'hold_expired' })
      expect(refused.headers.get('content-type')).toContain('application/problem+json')
      // A retry is refused the same way and never makes an order.
      expect((await t.request('POST', '/api/orders', { body: { hold_id: late.hold_id } })).status).toBe(410)
      expect((await t.request('GET', `/api/holds/${late.hold_id}`)).body).toMatchObject({ status: 'expired' })
      expect(await product(t, t.productId)).toMatchObject({ available_stock: 4 })
      expect(eventsNamed(t.events, 'order.created')).toHaveLength(1)

      await t.sweep()
      expect(await product(t, t.productId)).toMatchObject({ available_stock: 4, reserved: 2 })
      expect(await storedStatus(t, 'holds', late.hold_id)).toBe('expired')
      expect(await storedStatus(t, 'holds', early.hold_id)).toBe('converted')
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it('a pending order past ORDER_TTL_SECONDS reads expired before any sweep, and a sweep returns its units exactly once', async () => {
      const t = await buildTestApp(engine.name, { stock: 3, env: { ORDER_TTL_SECONDS: '300' } })
      const held = await hold(t, t.productId, 3)
      const order = (await t.request('POST', '/api/orders', { body: { hold_id: held.hold_id } })).body as { order_id: string; expires_at: string }
      expect(Date.parse(order.expires_at) - t.clock.now().getTime()).toBe(300_000)

      advanceTo(t, order.expires_at, -1)
      expect((await t.request('GET', `/api/orders/${order.order_id}`)).body).toMatchObject({ status: 'pending' })
      expect(await product(t, t.productId)).toMatchObject({ available_stock: 0, reserved: 3 })

      t.clock.advanceMs(1)
      expect((await t.request('GET', `/api/orders/${order.order_id}`)).body).toMatchObject({ status: 'expired' })
      expect(await product(t, t.productId)).toMatchObject({ available_stock: 3, reserved: 3 })
      expect(await storedStatus(t, 'orders', order.order_id)).toBe('pending')

      expect(await t.sweep()).toMatchObject({ expiredCount: 1 })
      expect(await product(t, t.productId)).toMatchObject({ available_stock: 3, reserved: 0, sold: 0 })
      expect(await storedStatus(t, 'orders', order.order_id)).toBe('expired')
      expect((await t.request('GET', `/api/orders/${order.order_id}`)).body).toMatchObject({ status: 'expired' })
      expect(await t.sweep()).toMatchObject({ expiredCount: 0 })
      expect(eventsNamed(t.events, 'order.expired').map((event) => event.orderId)).toEqual([order.order_id])
      // The units are sellable again.
      expect((await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 3 } })).status).toBe(201)
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it('a new hold takes the units of a lapsed pending order before any sweep has run', async () => {
      const t = await buildTestApp(engine.name, { stock: 4 })
      const held = await hold(t, t.productId, 4)
      const order = (await t.request('POST', '/api/orders', { body: { hold_id: held.hold_id } })).body as { order_id: string; expires_at: string }
      advanceTo(t, order.expires_at)
      const next = await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 4 } })
      expect(next.status).toBe(201)
      expect(await storedStatus(t, 'orders', order.order_id)).toBe('expired')
      expect(eventsNamed(t.events, 'order.expired')).toHaveLength(1)
      expect(await product(t, t.productId)).toMatchObject({ available_stock: 0, reserved: 4 })
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it('six concurrent sweeps (from two runtimes where the engine pools connections) release each of 30 lapsed holds on 3 products exactly once', async () => {
      const t = await buildTestApp(engine.name, { stock: 10 })
      // A second runtime on the same database has its own connections, as another instance has.
      // Not on SQLite: its driver waits for a lock synchronously (busy_timeout), so a second
      // connection in this thread would stall the first one's transaction; the two-process test
      // below races SQLite connections instead.
      const other = engine.name === 'sqlite' ? t : await buildTestApp(engine.name, { databaseUrl: t.databaseUrl })
      const productIds = [t.productId, await t.createProduct(10), await t.createProduct(10)]
      const holds = await Promise.all(times(30, (index) => hold(t, productIds[index % 3]!, 1)))
      const lapsedAtMs = Math.max(...holds.map((held) => Date.parse(held.expires_at)))
      for (const app of new Set([t, other])) app.clock.advanceMs(lapsedAtMs - app.clock.now().getTime())

      const results = await Promise.all([...times(3, () => t.sweep()), ...times(3, () => other.sweep())])
      expect(results.reduce((sum, result) => sum + result.expiredCount, 0)).toBe(30)
      const expired = [...new Set([t, other])].flatMap((app) => eventsNamed(app.events, 'hold.expired'))
      expect(expired).toHaveLength(30)
      expect(new Set(expired.map((event) => event.holdId))).toEqual(new Set(holds.map((held) => held.hold_id)))
      for (const productId of productIds) expect(await product(t, productId)).toMatchObject({ available_stock: 10, reserved: 0 })
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 3, violations: [] })
    })

    it('sweeps racing buyers who reclaim lapsed holds still release each hold exactly once', async () => {
      const t = await buildTestApp(engine.name, { stock: 20 })
      const holds = await Promise.all(times(20, () => hold(t, t.productId, 1)))
      advanceTo(t, holds[0]!.expires_at)
      // Each new hold needs units only lapsed holds keep, so the hold path reclaims while the
      // sweeps do the same.
      const [buys] = await Promise.all([
        Promise.all(times(20, () => t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 1 } }))),
        Promise.all(times(4, () => t.sweep())),
      ])
      expect(countBy(buys, (reply) => reply.status)).toEqual({ 201: 20 })
      const expired = eventsNamed(t.events, 'hold.expired')
      expect(expired).toHaveLength(20)
      expect(new Set(expired.map((event) => event.holdId))).toEqual(new Set(holds.map((held) => held.hold_id)))
      expect(await product(t, t.productId)).toMatchObject({ available_stock: 0, reserved: 20 })
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it(`a request short of units reclaims lapsed rows in rounds of ${reclaimBatchMax}, at most ${reclaimRoundsMax} rounds: a hold, a withdrawal and a hold behind a line get what GET shows free`, async () => {
      const rowsMax = reclaimBatchMax * reclaimRoundsMax
      const t = await buildTestApp(engine.name, { stock: rowsMax + 100, env: { MAX_QTY_PER_HOLD: String(rowsMax + 1) } })
      // Lapsed holds of one unit each, never swept: more rows than one request may expire.
      const lapseHolds = async (productId: number, count: number): Promise<void> => {
        let last = ''
        for (let made = 0; made < count; made += 100) last = (await Promise.all(times(Math.min(100, count - made), () => hold(t, productId, 1)))).at(-1)!.expires_at
        advanceTo(t, last)
      }
      await lapseHolds(t.productId, rowsMax + 100)
      expect(await product(t, t.productId)).toMatchObject({ available_stock: rowsMax + 100 })
      // All the rows it may expire free rowsMax units, one short: refused, with what it freed.
      const short = await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: rowsMax + 1 } })
      expect({ status: short.status, body: short.body }).toMatchObject({ status: 409, body: { code: 'insufficient_stock', available_stock: rowsMax } })
      expect(eventsNamed(t.events, 'hold.expired')).toHaveLength(rowsMax)
      const retried = await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: rowsMax + 1 } })
      expect(retried.status, retried.text).toBe(201)
      expect(eventsNamed(t.events, 'hold.expired')).toHaveLength(rowsMax + 100)

      // A withdrawal needing two rounds: 300 lapsed rows, 250 units withdrawn.
      const withdrawn = await t.createProduct(300)
      await lapseHolds(withdrawn, 300)
      const patched = await patchProduct(t.baseUrl, withdrawn, { add_stock: -250 })
      expect(patched.status, patched.text).toBe(200)
      expect(patched.body).toMatchObject({ stock: 50, available_stock: 50, reserved: 0 })

      // Behind a line: the line's 240 units come first, so a hold of 10 needs all 250 rows.
      const lined = await t.createProduct(250)
      await Promise.all(times(250, () => hold(t, lined, 1)))
      const tickets = await Promise.all(times(24, () => t.request('POST', `/api/products/${lined}/waitlist`, { body: { qty: 10 } })))
      expect(tickets.map((ticket) => ticket.body.status)).toEqual(times(24, () => 'waiting'))
      t.clock.advanceMs(t.config.holdTtlMs)
      expect(await product(t, lined)).toMatchObject({ available_stock: 10 })
      const behind = await t.request('POST', '/api/holds', { body: { product_id: lined, qty: 10 } })
      expect(behind.status, behind.text).toBe(201)
      expect(eventsNamed(t.events, 'waitlist.admitted').map((event) => event.productId)).toEqual(times(24, () => lined))
      expect(await product(t, lined)).toMatchObject({ available_stock: 0, reserved: 250 })
      expect(await t.audit()).toMatchObject({ ok: true, violations: [] })
    })

    it('a sweep pass expires at most SWEEP_BATCH_MAX rows, holds and orders together, and later passes finish the rest', async () => {
      const t = await buildTestApp(engine.name, { stock: 10, env: { SWEEP_BATCH_MAX: '3' } })
      const otherProductId = await t.createProduct(10)
      const converted = await Promise.all(times(2, () => hold(t, t.productId, 1)))
      for (const held of converted) expect((await t.request('POST', '/api/orders', { body: { hold_id: held.hold_id } })).status).toBe(201)
      await Promise.all(times(3, () => hold(t, t.productId, 1)))
      await Promise.all(times(3, () => hold(t, otherProductId, 2)))
      // Past the order TTL (longer than the hold TTL): 6 lapsed holds and 2 lapsed orders.
      t.clock.advanceMs(t.config.orderTtlMs)

      const passes: number[] = []
      for (let pass = 0; pass < 5; pass++) {
        passes.push((await t.sweep()).expiredCount)
        // Every pass commits a consistent state: the audit is clean between passes too.
        expect(await t.audit()).toEqual({ ok: true, checkedProducts: 2, violations: [] })
      }
      expect(passes).toEqual([3, 3, 2, 0, 0])
      expect(eventsNamed(t.events, 'hold.expired')).toHaveLength(6)
      expect(eventsNamed(t.events, 'order.expired')).toHaveLength(2)
      expect(await product(t, t.productId)).toMatchObject({ available_stock: 10, reserved: 0 })
      expect(await product(t, otherProductId)).toMatchObject({ available_stock: 10, reserved: 0 })
    })

    it('two server processes, each running its own sweeper, release each of 40 lapsed holds exactly once (logs and metrics)', async () => {
      const cluster = await startCluster(engine.name, { processes: 2, stock: 100, env: { HOLD_TTL_SECONDS: '0.5', SWEEP_INTERVAL_MS: '20' } })
      const first = cluster.servers[0]!
      const second = cluster.servers[1]!
      const replies = await Promise.all(
        times(40, (index) => request((index % 2 === 0 ? first : second).baseUrl, 'POST', '/api/holds', { body: { product_id: cluster.productId, qty: 1 } })),
      )
      expect(countBy(replies, (reply) => reply.status)).toEqual({ 201: 40 })
      const holdIds = new Set(replies.map((reply) => reply.body.hold_id as string))

      await pollUntil(
        async () => (await request(first.baseUrl, 'GET', `/api/products/${cluster.productId}`)).body.reserved as number,
        (reserved) => reserved === 0,
        { what: 'sweepers releasing every hold' },
      )
      // Each release is counted in the metrics as it commits; wait for all 40 there.
      const sweptBy = async (name: string) =>
        (await Promise.all([first, second].map(async (server) => metricValue((await request(server.baseUrl, 'GET', '/metrics')).text, name)))).reduce((sum, value) => sum + value, 0)
      await pollUntil(
        () => sweptBy('flash_sale_sweeper_expired_total'),
        (count) => count >= 40,
        { timeoutMs: 5_000, what: 'the sweeper metrics counting 40 releases' },
      )
      expect(await sweptBy('flash_sale_sweeper_expired_total')).toBe(40)
      expect(await sweptBy('flash_sale_events_total{event="hold.expired"}')).toBe(40)
      expect((await request(second.baseUrl, 'GET', `/api/products/${cluster.productId}`)).body).toMatchObject({ available_stock: 100, reserved: 0 })
      // Stopped, both have logged every release they made and will make none again: the lines
      // are then final, so a double release shows as a 41st or a repeated hold id.
      expect(await stopGracefully([first, second])).toEqual([
        { code: 0, signal: null },
        { code: 0, signal: null },
      ])
      const expired = logEvents([first, second], 'hold.expired')
      expect(expired).toHaveLength(40)
      expect(new Set(expired.map((line) => line.holdId))).toEqual(holdIds)
      expect(await cluster.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })
  })
}
