// Proves the admin API is closed to anyone without the bearer token (and to everyone while
// ADMIN_TOKEN is unset) without touching public routes, and that product creation, restocking
// and the audit endpoint keep money and stock exact, over real HTTP on each engine.
import { describe, expect, it } from 'vitest'
import { formatAmount } from '../src/domain/money.js'
import { priceMinorMax, qtyPerHoldMax } from '../src/domain/products.js'
import { buildTestApp, testAdminToken, type TestApp } from './helpers/app.js'
import { rawQuery, testEngines } from './helpers/engines.js'
import { expectProblem, outcomeOf, rawJson } from './helpers/problem-checks.js'

// Every admin route with a body it would accept from an administrator.
function adminRoutes(t: TestApp): Array<{ method: string; path: string; body?: unknown }> {
  return [
    { method: 'POST', path: '/api/admin/products', body: { name: 'intruder', price: '1.00', stock: 5 } },
    { method: 'PATCH', path: `/api/admin/products/${t.productId}`, body: { add_stock: 1000 } },
    { method: 'GET', path: '/api/admin/audit' },
  ]
}

async function product(t: TestApp, productId = t.productId) {
  const reply = await t.request('GET', `/api/products/${productId}`)
  expect(reply.status).toBe(200)
  return reply.body
}

async function productCount(t: TestApp): Promise<number> {
  const reply = await t.admin('GET', '/api/admin/audit')
  expect(reply.status).toBe(200)
  return reply.body.checked_products as number
}

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: admin`, () => {
    it('refuses every admin route with 401 unauthorized unless the exact bearer token is sent, changing nothing', async () => {
      const t = await buildTestApp(engine.name)
      const credentials: Array<[string, Record<string, string>]> = [
        ['no header', {}],
        ['wrong token', { authorization: 'Bearer wrong-token' }],
        ['empty bearer', { authorization: 'Bearer ' }],
        ['token without scheme', { authorization: testAdminToken }],
        ['basic scheme', { authorization: `Basic ${Buffer.from(`admin:${testAdminToken}`).toString('base64')}` }],
        ['token with a suffix', { authorization: `Bearer ${testAdminToken}x` }],
        ['token prefix', { authorization: `Bearer ${testAdminToken.slice(0, -1)}` }],
        ['token in another header', { 'x-admin-token': testAdminToken }],
      ]
      for (const route of adminRoutes(t)) {
        for (const [label, headers] of credentials) {
          const reply = await t.request(route.method, route.path, { body: route.body, headers })
          const name = `${route.method} ${route.path} with ${label}`
          expect.soft({ name, ...outcomeOf(reply) }).toEqual({ name, status: 401, code: 'unauthorized' })
          expect.soft(reply.headers.get('content-type'), name).toMatch(/^application\/problem\+json/)
        }
      }
      expect(await productCount(t)).toBe(1)
      expect((await product(t)).stock).toBe(100)
      expect((await t.audit()).ok).toBe(true)
    })

    it('reads the Bearer scheme in any case, as HTTP says of authentication schemes', async () => {
      const t = await buildTestApp(engine.name)
      for (const scheme of ['bearer', 'BEARER', 'bEaReR']) {
        const reply = await t.request('GET', '/api/admin/audit', { headers: { authorization: `${scheme} ${testAdminToken}` } })
        expect([scheme, reply.status]).toEqual([scheme, 200])
      }
    })

    it('checks the token before reading the body: an unauthenticated bad body is 401, not 400, 415 or 422', async () => {
      const t = await buildTestApp(engine.name)
      const malformed = await t.request('POST', '/api/admin/products', rawJson('{'))
      expectProblem(malformed, 401, 'unauthorized')
      const invalid = await t.request('PATCH', `/api/admin/products/${t.productId}`, { body: { add_stock: 'lots' } })
      expectProblem(invalid, 401, 'unauthorized')
      const wrongType = await t.request('POST', '/api/admin/products', { rawBody: 'name=x', headers: { 'content-type': 'application/x-www-form-urlencoded' } })
      expectProblem(wrongType, 401, 'unauthorized')
      const unknownProduct = await t.request('PATCH', '/api/admin/products/424242', { body: { add_stock: 1 } })
      expectProblem(unknownProduct, 401, 'unauthorized')
    })

    it('refuses every admin request with 401 while ADMIN_TOKEN is unset, while public routes keep working', async () => {
      const t = await buildTestApp(engine.name, { env: { ADMIN_TOKEN: '' } })
      expect(t.config.adminToken).toBeUndefined()
      const guesses: Array<Record<string, string>> = [
        {},
        { authorization: `Bearer ${testAdminToken}` },
        { authorization: 'Bearer ' },
        { authorization: 'Bearer undefined' },
        { authorization: 'Bearer null' },
      ]
      for (const route of adminRoutes(t)) {
        for (const headers of guesses) {
          const reply = await t.request(route.method, route.path, { body: route.body, headers })
          const name = `${route.method} ${route.path} with ${JSON.stringify(headers)}`
          expect.soft({ name, ...outcomeOf(reply) }).toEqual({ name, status: 401, code: 'unauthorized' })
        }
      }
      expect((await product(t)).stock).toBe(100)
      const hold = await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 2 } })
      expect(hold.status).toBe(201)
      expect((await product(t)).available_stock).toBe(98)
      expect((await t.audit()).ok).toBe(true)
    })

    it('ignores an Authorization header on public routes: a wrong token neither blocks nor grants anything there', async () => {
      const t = await buildTestApp(engine.name)
      const headers = { authorization: 'Bearer wrong-token' }
      expect((await t.request('GET', `/api/products/${t.productId}`, { headers })).status).toBe(200)
      const hold = await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 1 }, headers })
      expect(hold.status).toBe(201)
      const order = await t.request('POST', '/api/orders', { body: { hold_id: hold.body.hold_id }, headers })
      expect(order.status).toBe(201)
      expect((await product(t)).available_stock).toBe(99)
      expect((await t.audit()).ok).toBe(true)
    })

    it('creates a product with 201 answering the product exactly as GET shows it, in USD by default', async () => {
      const t = await buildTestApp(engine.name)
      const created = await t.admin('POST', '/api/admin/products', { name: 'Flash hoodie', price: '12.34', stock: 5 })
      expect(created.status).toBe(201)
      expect(created.body).toMatchObject({ name: 'Flash hoodie', price: '12.34', currency: 'USD', stock: 5, available_stock: 5, reserved: 0, sold: 0 })
      expect(Number.isInteger(created.body.id)).toBe(true)
      expect(await product(t, created.body.id)).toEqual(created.body)
      expect(await productCount(t)).toBe(2)
      expect((await t.audit()).ok).toBe(true)
    })

    it('sells a created product at its exact price: an order for 3 units of 12.34 costs 37.02', async () => {
      const t = await buildTestApp(engine.name)
      const created = await t.admin('POST', '/api/admin/products', { name: 'Priced', price: 12.34, stock: 3 })
      expect(created.status).toBe(201)
      const hold = await t.request('POST', '/api/holds', { body: { product_id: created.body.id, qty: 3 } })
      expect(hold.status).toBe(201)
      const order = await t.request('POST', '/api/orders', { body: { hold_id: hold.body.hold_id } })
      expect(order.status).toBe(201)
      expect(order.body).toMatchObject({ amount: '37.02', currency: 'USD', qty: 3 })
      const soldOut = await t.request('POST', '/api/holds', { body: { product_id: created.body.id, qty: 1 } })
      expectProblem(soldOut, 409, 'insufficient_stock')
      expect((await t.audit()).ok).toBe(true)
    })

    it(`takes prices up to ${priceMinorMax} minor units, whose total at MAX_QTY_PER_HOLD = ${qtyPerHoldMax} is exact, and refuses one minor unit more with 422`, async () => {
      const t = await buildTestApp(engine.name, { env: { MAX_QTY_PER_HOLD: String(qtyPerHoldMax) } })
      const highest = formatAmount(priceMinorMax, 'USD')
      const tooHigh = await t.admin('POST', '/api/admin/products', { name: 'Too dear', price: formatAmount(priceMinorMax + 1, 'USD'), stock: 1 })
      expectProblem(tooHigh, 422, 'validation_failed')
      expect(tooHigh.body.invalid_fields).toEqual(['price'])
      const created = await t.admin('POST', '/api/admin/products', { name: 'Dearest', price: highest, stock: qtyPerHoldMax })
      expect(created.status).toBe(201)
      expect(created.body.price).toBe(highest)
      const hold = await t.request('POST', '/api/holds', { body: { product_id: created.body.id, qty: qtyPerHoldMax } })
      expect(hold.status).toBe(201)
      const order = await t.request('POST', '/api/orders', { body: { hold_id: hold.body.hold_id } })
      expect(order.status).toBe(201)
      // Computed in BigInt here: the service's total is exact to the last minor unit.
      const totalMinor = BigInt(priceMinorMax) * BigInt(qtyPerHoldMax)
      expect(order.body.amount).toBe(`${totalMinor / 100n}.${String(totalMinor % 100n).padStart(2, '0')}`)
      expect(await productCount(t)).toBe(2)
      expect((await t.audit()).ok).toBe(true)
    })

    it('accepts a price as a decimal string or a number with up to the currency decimals', async () => {
      const t = await buildTestApp(engine.name)
      const cases: Array<{ price: string | number; currency?: string; shown: string }> = [
        { price: '12.34', shown: '12.34' },
        { price: 12.34, shown: '12.34' },
        { price: 12, shown: '12.00' },
        { price: '12.3', shown: '12.30' },
        { price: 0.1, shown: '0.10' },
        { price: '0', shown: '0.00' },
        { price: '2469.00', shown: '2469.00' },
        { price: '7', currency: 'EUR', shown: '7.00' },
        { price: 1500, currency: 'JPY', shown: '1500' },
        { price: '1500', currency: 'JPY', shown: '1500' },
        { price: '1.234', currency: 'KWD', shown: '1.234' },
      ]
      for (const { price, currency, shown } of cases) {
        const reply = await t.admin('POST', '/api/admin/products', { name: `p ${price}`, price, stock: 1, ...(currency ? { currency } : {}) })
        const label = `${JSON.stringify(price)} ${currency ?? '(default)'}`
        expect.soft({ label, status: reply.status, price: reply.body?.price, currency: reply.body?.currency }).toEqual({ label, status: 201, price: shown, currency: currency ?? 'USD' })
      }
      expect(await productCount(t)).toBe(1 + cases.length)
      expect((await t.audit()).ok).toBe(true)
    })

    it('refuses a bad price, currency, stock or name with 422 naming the field, creating nothing', async () => {
      const t = await buildTestApp(engine.name)
      const valid = { name: 'Valid', price: '10.00', stock: 5 }
      const cases: Array<{ body: Record<string, unknown>; field: string }> = [
        ...['12.345', 12.345, '-1', -1, '1,000.00', '1e3', 1e21, '', ' 12', '12.', '.5', 'NaN', 'Infinity', '0x10', '１２'].map((price) => ({
          body: { ...valid, price },
          field: 'price',
        })),
        ...[null, true, {}].map((price) => ({ body: { ...valid, price }, field: 'price' })),
        { body: { ...valid, price: '1500.5', currency: 'JPY' }, field: 'price' },
        { body: { ...valid, price: 1500.5, currency: 'JPY' }, field: 'price' },
        { body: { ...valid, price: '1.2345', currency: 'KWD' }, field: 'price' },
        { body: { name: 'No price', stock: 5 }, field: 'price' },
        ...['usd', 'XYZ', 'EURO', 'US', '', 5, null].map((currency) => ({ body: { ...valid, currency }, field: 'currency' })),
        ...['5', -1, 1.5, null, true, 1_000_000_001].map((stock) => ({ body: { ...valid, stock }, field: 'stock' })),
        { body: { name: 'No stock', price: '1.00' }, field: 'stock' },
        ...['', 5, null, 'n'.repeat(201)].map((name) => ({ body: { ...valid, name }, field: 'name' })),
        { body: { price: '1.00', stock: 5 }, field: 'name' },
      ]
      for (const { body, field } of cases) {
        const reply = await t.admin('POST', '/api/admin/products', body)
        const label = JSON.stringify(body).slice(0, 100)
        expect.soft({ label, ...outcomeOf(reply) }).toEqual({ label, status: 422, code: 'validation_failed' })
        expect.soft(reply.body?.invalid_fields, label).toContain(field)
      }
      expect(await productCount(t)).toBe(1)
    })

    it('adds stock and withdraws it with a negative add_stock, answering the product as GET shows it', async () => {
      const t = await buildTestApp(engine.name)
      const added = await t.admin('PATCH', `/api/admin/products/${t.productId}`, { add_stock: 10 })
      expect(added.status).toBe(200)
      expect(added.body).toMatchObject({ id: t.productId, stock: 110, available_stock: 110 })
      expect(await product(t)).toEqual(added.body)
      const withdrawn = await t.admin('PATCH', `/api/admin/products/${t.productId}`, { add_stock: -30 })
      expect(withdrawn.status).toBe(200)
      expect(withdrawn.body).toMatchObject({ stock: 80, available_stock: 80 })
      const unchanged = await t.admin('PATCH', `/api/admin/products/${t.productId}`, { add_stock: 0 })
      expect(unchanged.body).toMatchObject({ stock: 80, available_stock: 80 })
      expect((await t.audit()).ok).toBe(true)
    })

    it('withdraws stock down to exactly reserved + sold and refuses one unit more with 409 stock_below_committed', async () => {
      const t = await buildTestApp(engine.name, { stock: 10 })
      // 3 units sold (paid order), 2 in a pending order, 1 in an active hold: 6 committed.
      const paidHold = await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 3 } })
      const paidOrder = await t.request('POST', '/api/orders', { body: { hold_id: paidHold.body.hold_id } })
      const payment = await t.request('POST', '/api/payments/webhook', { body: { order_id: paidOrder.body.order_id, status: 'success' }, headers: { 'idempotency-key': 'pay-1' } })
      expect(payment.status).toBe(200)
      expect(payment.body.order_status).toBe('paid')
      const pendingHold = await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 2 } })
      expect((await t.request('POST', '/api/orders', { body: { hold_id: pendingHold.body.hold_id } })).status).toBe(201)
      expect((await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 1 } })).status).toBe(201)
      expect(await product(t)).toMatchObject({ stock: 10, reserved: 3, sold: 3, available_stock: 4 })

      const toCommitted = await t.admin('PATCH', `/api/admin/products/${t.productId}`, { add_stock: -4 })
      expect(toCommitted.status).toBe(200)
      expect(toCommitted.body).toMatchObject({ stock: 6, available_stock: 0 })
      const below = await t.admin('PATCH', `/api/admin/products/${t.productId}`, { add_stock: -1 })
      expectProblem(below, 409, 'stock_below_committed')
      const farBelow = await t.admin('PATCH', `/api/admin/products/${t.productId}`, { add_stock: -1_000_000 })
      expectProblem(farBelow, 409, 'stock_below_committed')
      expect(await product(t)).toMatchObject({ stock: 6, reserved: 3, sold: 3, available_stock: 0 })
      expect((await t.audit()).ok).toBe(true)
    })

    it('withdraws units of holds and orders past their expiry (expiring them first, as readers already show them free), and a refused withdrawal still keeps that expiry and nothing else', async () => {
      const t = await buildTestApp(engine.name, { stock: 10 })
      const lapsing = await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 5 } })
      expect(lapsing.status).toBe(201)
      const ordered = await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 2 } })
      expect((await t.request('POST', '/api/orders', { body: { hold_id: ordered.body.hold_id } })).status).toBe(201)
      // Past the hold's expiry, before the order's and before any sweep.
      t.clock.advanceMs(Date.parse(lapsing.body.expires_at) - t.clock.now().getTime())
      expect(await product(t)).toMatchObject({ stock: 10, reserved: 7, available_stock: 8 })
      // One unit more than readers see free: refused, naming what is committed once expired...
      const tooMuch = await t.admin('PATCH', `/api/admin/products/${t.productId}`, { add_stock: -9, sale_ends_at: '2099-01-01T00:00:00Z' })
      expectProblem(tooMuch, 409, 'stock_below_committed')
      expect(tooMuch.body).toMatchObject({ stock: 10, committed: 2, available_stock: 8 })
      // ...the lapsed hold stays expired (as a sweep would leave it), and the rest is unchanged.
      expect(await product(t)).toMatchObject({ stock: 10, reserved: 2, available_stock: 8, sale_ends_at: null })
      expect((await t.request('GET', `/api/holds/${lapsing.body.hold_id}`)).body.status).toBe('expired')
      // Exactly what readers see free: withdrawn.
      const all = await t.admin('PATCH', `/api/admin/products/${t.productId}`, { add_stock: -8 })
      expect(all.status, all.text).toBe(200)
      expect(all.body).toMatchObject({ stock: 2, reserved: 2, available_stock: 0 })
      expect((await t.audit()).ok).toBe(true)
    })

    it('refuses an add_stock that is not a JSON integer with 422, leaving stock alone', async () => {
      const t = await buildTestApp(engine.name)
      for (const body of [{ add_stock: '5' }, { add_stock: 1.5 }, { add_stock: null }, { add_stock: true }, { add_stock: 1e10 }, { add_stock: [5] }, {}]) {
        const reply = await t.admin('PATCH', `/api/admin/products/${t.productId}`, body)
        const label = JSON.stringify(body)
        expect.soft({ label, ...outcomeOf(reply) }).toEqual({ label, status: 422, code: 'validation_failed' })
        expect.soft(reply.body?.invalid_fields, label).toEqual(['add_stock'])
      }
      expect((await product(t)).stock).toBe(100)
    })

    it('adds stock up to 1,000,000,000 units in all and refuses a step past it with 422 naming add_stock (the servers answered 500)', async () => {
      const t = await buildTestApp(engine.name)
      for (let step = 0; step < 2; step++) expect((await t.admin('PATCH', `/api/admin/products/${t.productId}`, { add_stock: 499_999_950 })).status).toBe(200)
      expect((await product(t)).stock).toBe(1_000_000_000)
      const past = await t.admin('PATCH', `/api/admin/products/${t.productId}`, { add_stock: 1 })
      expectProblem(past, 422, 'validation_failed')
      expect(past.body.invalid_fields).toEqual(['add_stock'])
      const far = await t.admin('PATCH', `/api/admin/products/${t.productId}`, { add_stock: 1_000_000_000 })
      expectProblem(far, 422, 'validation_failed')
      expect((await product(t)).stock).toBe(1_000_000_000)
      expect((await t.admin('PATCH', `/api/admin/products/${t.productId}`, { add_stock: -1 })).status).toBe(200)
      expect((await t.audit()).ok).toBe(true)
    })

    it('answers a restock of a product that does not exist with 404 product_not_found', async () => {
      const t = await buildTestApp(engine.name)
      expectProblem(await t.admin('PATCH', '/api/admin/products/424242', { add_stock: 1 }), 404, 'product_not_found')
      expectProblem(await t.admin('PATCH', '/api/admin/products/abc', { add_stock: 1 }), 404, 'product_not_found')
    })

    it('reports a clean audit as { ok: true, checked_products, violations: [] }', async () => {
      const t = await buildTestApp(engine.name)
      await t.createProduct(7)
      expect((await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 2 } })).status).toBe(201)
      const reply = await t.admin('GET', '/api/admin/audit')
      expect(reply.status).toBe(200)
      expect(reply.body).toEqual({ ok: true, checked_products: 2, violations: [] })
    })

    it('reports a row that breaks I2 as ok: false naming the invariant and the product', async () => {
      const t = await buildTestApp(engine.name)
      expect((await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 2 } })).status).toBe(201)
      // Corrupt the counter behind the service's back: reserved no longer matches the holds.
      await rawQuery(engine.name, t.databaseUrl, `update products set reserved = reserved + 1 where id = ${t.productId}`)
      const broken = await t.admin('GET', '/api/admin/audit')
      expect(broken.status).toBe(200)
      expect(broken.body.ok).toBe(false)
      expect(broken.body.violations).toContainEqual({ invariant: 'I2', product_id: t.productId, message: expect.any(String) })
      await rawQuery(engine.name, t.databaseUrl, `update products set reserved = reserved - 1 where id = ${t.productId}`)
      expect((await t.admin('GET', '/api/admin/audit')).body).toEqual({ ok: true, checked_products: 1, violations: [] })
      expect((await t.audit()).ok).toBe(true)
    })
  })
}
