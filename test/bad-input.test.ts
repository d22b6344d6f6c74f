import { describe, expect, it } from 'vitest'
import { buildTestApp } from './helpers/app.js'
import { testEngines } from './helpers/engines.js'

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: probe`, () => {
    it('probe', async () => {
      const t = await buildTestApp(engine.name, { stock: 10 })
      const out: string[] = []
      const log = async (label: string, p: Promise<any>) => { try { const r = await p; out.push(`${label} -> ${r.status} ${r.headers.get('content-type')} ${r.text.slice(0, 200)}`) } catch (e) { out.push(`${label} threw ${e} ${(e as any).cause}`) } }
      for (const key of ['a\tb', 'a\x01b', 'a\x7fb', '', ' a', 'a'.repeat(255)])
        await log(`idem ${JSON.stringify(key)}`, t.request('POST', '/api/holds', { body: { product_id: 1, qty: 1 }, headers: { 'idempotency-key': key } }))
      await log('1MB', t.request('POST', '/api/holds', { rawBody: '{"product_id":1,"qty":1,"x":"' + 'a'.repeat(1_000_000) + '"}', headers: { 'content-type': 'application/json' } }))
      await log('deep', t.request('POST', '/api/holds', { rawBody: '['.repeat(5000) + ']'.repeat(5000), headers: { 'content-type': 'application/json' } }))
      await log('deepobj', t.request('POST', '/api/holds', { rawBody: '{"product_id":' + '{"a":'.repeat(3000) + '1' + '}'.repeat(3000) + ',"qty":1}', headers: { 'content-type': 'application/json' } }))
      await log('wh', t.request('POST', '/api/payments/webhook', { body: { order_id: 'nope', status: 'success', idempotency_key: 'k', amount: '💥' } }))
      await log('unauth bad body', t.request('POST', '/api/admin/products', { rawBody: '{', headers: { 'content-type': 'application/json' } }))
      await log('ready', t.request('GET', '/ready'))
      await t.runtime.store.close()
      await log('ready', t.request('GET', '/ready'))
      await log('product after close', t.request('GET', '/api/products/1'))
      console.log(out.join('\n'))
      const doc = await t.request('GET', '/openapi.json')
      console.log(Object.keys(doc.body.paths), JSON.stringify(doc.body.paths['/api/holds']).slice(0, 1500), Object.keys(doc.body.components.schemas))
      const m = await t.request('GET', '/metrics')
      console.log(m.headers.get('content-type'), m.text.split('\n').filter((l) => l.startsWith('flash_sale')).slice(0, 60).join('\n'))
    })
  })
}
