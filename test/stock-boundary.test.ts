// Proves the stock boundary under real concurrency: many simultaneous HTTP hold requests, from
// one process and from several server processes sharing one database, sell exactly the stock
// and never one unit more; the audit is clean after every burst.
import { describe, expect, it } from 'vitest'
import { buildTestApp } from './helpers/app.js'
import { testEngines } from './helpers/engines.js'
import { countBy, request, times } from './helpers/http.js'
import { startCluster } from './helpers/servers.js'

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: stock boundary`, () => {
    it('sells the last unit to exactly one of 50 concurrent buyers', async () => {
      const t = await buildTestApp(engine.name, { stock: 1 })
      const replies = await Promise.all(times(50, () => t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 1 } })))
      expect(countBy(replies, (reply) => reply.status)).toEqual({ 201: 1, 409: 49 })
      for (const reply of replies.filter((reply) => reply.status === 409)) {
        expect(reply.body).toMatchObject({ code: 'insufficient_stock', available_stock: 0 })
        expect(reply.headers.get('content-type')).toContain('application/problem+json')
      }
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it('never gives two requests of one batch the same units (batched path)', async () => {
      // A server process of its own, so requests arrive as from a real load generator and
      // queue behind the transaction in flight.
      const cluster = await startCluster(engine.name, { processes: 1, stock: 40 })
      const { baseUrl } = cluster.servers[0]!
      const replies = await Promise.all(times(200, () => request(baseUrl, 'POST', '/api/holds', { body: { product_id: cluster.productId, qty: 1 } })))
      const created = replies.filter((reply) => reply.status === 201)
      expect(created).toHaveLength(40)
      expect(new Set(created.map((reply) => reply.body.hold_id)).size).toBe(40)
      // The burst was served in batches: fewer transactions than requests.
      const metrics = (await request(baseUrl, 'GET', '/metrics')).text
      const batches = Number(/flash_sale_hold_batch_size_count (\d+)/.exec(metrics)?.[1])
      const batched = Number(/flash_sale_hold_batch_size_sum (\d+)/.exec(metrics)?.[1])
      expect(batched).toBe(200)
      expect(batches).toBeLessThan(200)
      const product = await request(baseUrl, 'GET', `/api/products/${cluster.productId}`)
      expect(product.body).toMatchObject({ stock: 40, available_stock: 0, reserved: 40, sold: 0 })
      expect(await cluster.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    const processes = engine.name === 'sqlite' ? 2 : 3
    it(`300 concurrent holds for 50 units over ${processes} processes: exactly 50 succeed`, async () => {
      const cluster = await startCluster(engine.name, { processes, stock: 50 })
      const startedAtMs = Date.now()
      const replies = await Promise.all(
        times(300, (index) => request(cluster.servers[index % processes]!.baseUrl, 'POST', '/api/holds', { body: { product_id: cluster.productId, qty: 1 } })),
      )
      const wallMs = Date.now() - startedAtMs
      expect(countBy(replies, (reply) => reply.status)).toEqual({ 201: 50, 409: 250 })
      console.log(`[boundary] ${engine.name} ${processes} processes: 300 requests, 50 x 201, 250 x 409 in ${wallMs} ms`)
      expect(await cluster.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it(`mixed quantities over ${processes} processes: never oversold, refusals only when short`, async () => {
      const cluster = await startCluster(engine.name, { processes, stock: 50, env: { MAX_QTY_PER_HOLD: '5' } })
      const quantities = times(200, (index) => (index % 5) + 1)
      const replies = await Promise.all(
        quantities.map((qty, index) => request(cluster.servers[index % processes]!.baseUrl, 'POST', '/api/holds', { body: { product_id: cluster.productId, qty } })),
      )
      expect(replies.every((reply) => reply.status === 201 || reply.status === 409)).toBe(true)
      const grantedQty = replies.reduce((sum, reply, index) => sum + (reply.status === 201 ? quantities[index]! : 0), 0)
      expect(grantedQty).toBeLessThanOrEqual(50)
      // Each refusal reported what was left then; a refusal means the request did not fit.
      for (const [index, reply] of replies.entries()) {
        if (reply.status === 409) expect(reply.body.available_stock).toBeLessThan(quantities[index]!)
      }
      // With quantities 1..5 and 200 requests, the sale ends only when fewer than 1 unit is left
      // for the 1-unit requests that come last in some process: everything sellable sold.
      const product = await request(cluster.servers[0]!.baseUrl, 'GET', `/api/products/${cluster.productId}`)
      expect(product.body.available_stock).toBe(50 - grantedQty)
      expect(product.body.reserved).toBe(grantedQty)
      expect(await cluster.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })
  })
}
