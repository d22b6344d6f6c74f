// Proves the bench's ceiling route: off by default (404), and with BENCH_CEILING_ROUTE=1 it checks
// a hold request exactly as POST /api/holds does, then answers without touching the database.
import { describe, expect, it } from 'vitest'
import { buildTestApp } from './helpers/app.js'
import { testEngines } from './helpers/engines.js'

for (const engine of testEngines().filter((candidate) => candidate.name === 'sqlite')) {
  describe.skipIf(!engine.available)(`${engine.name}: bench ceiling route`, () => {
    it('is absent by default and, when enabled, validates like POST /api/holds and answers 200 without a hold', async () => {
      const off = await buildTestApp(engine.name, { stock: 5 })
      expect((await off.request('POST', '/bench/hold-ceiling', { body: { product_id: off.productId, qty: 1 } })).status).toBe(404)
      const t = await buildTestApp(engine.name, { stock: 5, env: { BENCH_CEILING_ROUTE: '1' } })
      const ok = await t.request('POST', '/bench/hold-ceiling', { body: { product_id: t.productId, quantity: 2 }, headers: { 'idempotency-key': 'k1' } })
      expect(ok.status).toBe(200)
      expect(ok.body).toEqual({ product_id: t.productId, qty: 2 })
      const bad = await t.request('POST', '/bench/hold-ceiling', { body: { product_id: t.productId, qty: '2' } })
      expect(bad.status).toBe(422)
      expect(bad.body).toMatchObject({ code: 'validation_failed' })
      const product = await t.request('GET', `/api/products/${t.productId}`)
      expect(product.body).toMatchObject({ available_stock: 5, reserved: 0 })
    })
  })
}
