// Proves that when the database is unreachable a client gets 503 busy with Retry-After (safe to
// retry), never a 500, on reads and writes alike: the test closes the server's store under it.
import { describe, expect, it } from 'vitest'
import { buildTestApp } from './helpers/app.js'
import { testEngines } from './helpers/engines.js'

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
  })
}
