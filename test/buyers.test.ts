// Proves SPEC §8 Buyers over real HTTP on every engine: a buyer token (HS256 JWT) names the buyer
// of holds and orders, every bad token shape is 401 invalid_buyer_token and writes nothing, and
// without BUYER_TOKEN_SECRET the service takes no buyers. Tokens are minted with `jose` against
// the server's manual clock.
//
// Choices where SPEC is silent, tested here:
// - A bad token is refused before anything else is looked at: 401 before 404 product_not_found
//   and before 422 validation_failed ("whatever the product"), as the admin token is.
// - An Authorization header that is not a readable Bearer JWT is a bad token (401), not ignored:
//   a buyer who meant to identify must not silently become anonymous.
// - Anonymous holds and orders answer `buyer_id: null` (the field is always there).
// - An order takes its hold's buyer whoever sends it: the hold id is the capability (§3), so
//   another buyer's token neither blocks the order nor re-assigns it; a bad token is still 401.
// - The idempotency fingerprint covers the buyer: the same key and body from another buyer is
//   422 idempotency_key_reused, never a replay of someone else's hold.
// - exp tolerance: a token is refused once exp is 60 s or more behind the server's clock, and
//   accepted at 59 s (what `jose` does with clockTolerance 60).
// - Without BUYER_TOKEN_SECRET any Authorization header on public routes is ignored (the
//   existing admin test relies on it) and holds are anonymous.
import { describe, expect, it } from 'vitest'
import { buildTestApp, type TestApp } from './helpers/app.js'
import { asBuyer, badTokens, bearer, buyerEnv, buyerIdCharsMax, buyerToken, toleranceS } from './helpers/buyer-tokens.js'
import { createDropProduct, expectCleanAudit, expectProblemCode, holdAs, orderAs, patchProduct, productOf } from './helpers/drops.js'
import { testEngines } from './helpers/engines.js'
import type { Reply } from './helpers/http.js'
import { catalogueViolation } from './helpers/problem-checks.js'

const newCodes = ['invalid_buyer_token', 'buyer_token_required', 'buyer_limit_reached', 'sale_not_started', 'sale_ended'] as const

function serverNowMs(t: TestApp): number {
  return t.clock.now().getTime()
}

function expectInvalidToken(reply: Reply, label: string): void {
  expect.soft({ label, status: reply.status, code: reply.body?.code }).toEqual({ label, status: 401, code: 'invalid_buyer_token' })
  expect.soft(catalogueViolation(reply), label).toBeUndefined()
}

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: buyers`, () => {
    it('records the buyer: the hold answers buyer_id = sub, GET shows it, and the order and GET order take it', async () => {
      const t = await buildTestApp(engine.name, { env: buyerEnv })
      const alice = await asBuyer('alice', { nowMs: serverNowMs(t) })
      const hold = await holdAs(t.baseUrl, alice, t.productId, 2)
      expect(hold.status, hold.text).toBe(201)
      expect(hold.body).toMatchObject({ product_id: t.productId, qty: 2, status: 'active', buyer_id: 'alice' })
      expect((await t.request('GET', `/api/holds/${hold.body.hold_id}`)).body).toMatchObject({ status: 'active', buyer_id: 'alice' })
      const order = await orderAs(t.baseUrl, alice, hold.body.hold_id)
      expect(order.status, order.text).toBe(201)
      expect(order.body).toMatchObject({ hold_id: hold.body.hold_id, status: 'pending', qty: 2, buyer_id: 'alice' })
      expect((await t.request('GET', `/api/orders/${order.body.order_id}`)).body).toMatchObject({ status: 'pending', buyer_id: 'alice' })
      expect((await t.request('GET', `/api/holds/${hold.body.hold_id}`)).body).toMatchObject({ status: 'converted', buyer_id: 'alice' })
      await expectCleanAudit(t.baseUrl)
    })

    it('takes a hold without a token on a product without a limit: buyer_id null on the hold and its order', async () => {
      const t = await buildTestApp(engine.name, { env: buyerEnv })
      const hold = await holdAs(t.baseUrl, {}, t.productId, 1)
      expect(hold.status, hold.text).toBe(201)
      expect(hold.body).toHaveProperty('buyer_id', null)
      const order = await orderAs(t.baseUrl, {}, hold.body.hold_id)
      expect(order.status, order.text).toBe(201)
      expect(order.body).toHaveProperty('buyer_id', null)
      expect((await t.request('GET', `/api/orders/${order.body.order_id}`)).body).toHaveProperty('buyer_id', null)
    })

    it('accepts a sub of exactly 128 characters, ASCII, accented or outside the BMP, and records it unchanged', async () => {
      const t = await buildTestApp(engine.name, { env: buyerEnv })
      // 128 characters outside the BMP are 256 UTF-16 units: still 128 characters.
      for (const sub of ['a'.repeat(buyerIdCharsMax), 'é'.repeat(buyerIdCharsMax), '\u{1F600}'.repeat(buyerIdCharsMax), 'user:42|shop-eu', 'x']) {
        const hold = await holdAs(t.baseUrl, await asBuyer(sub, { nowMs: serverNowMs(t) }), t.productId, 1)
        expect.soft({ sub: sub.slice(0, 10), status: hold.status, buyer_id: hold.body?.buyer_id }).toEqual({ sub: sub.slice(0, 10), status: 201, buyer_id: sub })
        const read = await t.request('GET', `/api/holds/${hold.body?.hold_id}`)
        expect.soft(read.body?.buyer_id).toBe(sub)
      }
      await expectCleanAudit(t.baseUrl)
    })

    it('refuses every bad token shape on POST /api/holds with 401 invalid_buyer_token, writing nothing and using up no key', async () => {
      const t = await buildTestApp(engine.name, { env: buyerEnv })
      const limited = await createDropProduct(t.baseUrl, 10, { per_buyer_limit: 3 })
      const shapes = await badTokens(serverNowMs(t))
      for (const [index, shape] of shapes.entries()) {
        for (const productId of [t.productId, limited.id]) {
          const reply = await holdAs(t.baseUrl, { authorization: shape.authorization }, productId, 1, { 'idempotency-key': `bad-${index}-${productId}` })
          expectInvalidToken(reply, `${shape.label} on product ${productId}`)
        }
      }
      // Counted among the hold refusals where a drop is watched, under no product: refused before
      // the body is read.
      const dashboard = await t.admin('GET', '/api/admin/dashboard')
      expect(dashboard.body.totals.hold_refusals).toEqual({ invalid_buyer_token: shapes.length * 2 })
      expect(dashboard.body.products.map((product: { hold_refusals: object }) => product.hold_refusals)).toEqual([{}, {}])
      // Nothing reserved anywhere.
      expect(await productOf(t.baseUrl, t.productId)).toMatchObject({ available_stock: 100, reserved: 0, sold: 0 })
      expect(await productOf(t.baseUrl, limited.id)).toMatchObject({ available_stock: 10, reserved: 0, sold: 0 })
      // A refused request used up no idempotency key: the same key with a good token is served afresh.
      const fresh = await holdAs(t.baseUrl, await asBuyer('alice', { nowMs: serverNowMs(t) }), limited.id, 1, { 'idempotency-key': `bad-0-${limited.id}` })
      expect(fresh.status, fresh.text).toBe(201)
      expect(fresh.headers.get('idempotent-replayed')).toBeNull()
      expect(fresh.body).toMatchObject({ buyer_id: 'alice' })
      await expectCleanAudit(t.baseUrl)
    })

    it('checks the token first: a bad token is 401 for an unknown product, a bad qty, and a key already used by a good request', async () => {
      const t = await buildTestApp(engine.name, { env: buyerEnv })
      const forged = { authorization: `Bearer ${await buyerToken('alice', { nowMs: serverNowMs(t), secret: 'another-secret-of-32-bytes-or-more!!' })}` }
      expectProblemCode(await holdAs(t.baseUrl, forged, 424_242, 1), 401, 'invalid_buyer_token')
      expectProblemCode(await holdAs(t.baseUrl, forged, t.productId, 0), 401, 'invalid_buyer_token')
      expectProblemCode(await t.request('POST', '/api/holds', { body: { product_id: 'one', qty: 1 }, headers: forged }), 401, 'invalid_buyer_token')
      // A replay never goes to a request whose token is bad, even with the key and body of a
      // stored hold: knowing another's key must not be enough to read their hold.
      const alice = await asBuyer('alice', { nowMs: serverNowMs(t) })
      const first = await holdAs(t.baseUrl, alice, t.productId, 1, { 'idempotency-key': 'used-key' })
      expect(first.status, first.text).toBe(201)
      expectProblemCode(await holdAs(t.baseUrl, forged, t.productId, 1, { 'idempotency-key': 'used-key' }), 401, 'invalid_buyer_token')
      expect(await productOf(t.baseUrl, t.productId)).toMatchObject({ reserved: 1 })
    })

    it('refuses a bad token on POST /api/orders with 401, leaving the hold active and the key unused', async () => {
      const t = await buildTestApp(engine.name, { env: buyerEnv })
      const alice = await asBuyer('alice', { nowMs: serverNowMs(t) })
      const hold = await holdAs(t.baseUrl, alice, t.productId, 2)
      expect(hold.status, hold.text).toBe(201)
      for (const shape of await badTokens(serverNowMs(t))) {
        const reply = await t.request('POST', '/api/orders', { body: { hold_id: hold.body.hold_id }, headers: { authorization: shape.authorization, 'idempotency-key': 'order-key' } })
        expectInvalidToken(reply, shape.label)
      }
      expect((await t.request('GET', `/api/holds/${hold.body.hold_id}`)).body).toMatchObject({ status: 'active' })
      // An order's bad token is no hold refusal.
      expect((await t.admin('GET', '/api/admin/dashboard')).body.totals.hold_refusals).toEqual({})
      const order = await t.request('POST', '/api/orders', { body: { hold_id: hold.body.hold_id }, headers: { ...alice, 'idempotency-key': 'order-key' } })
      expect(order.status, order.text).toBe(201)
      expect(order.headers.get('idempotent-replayed')).toBeNull()
      expect(order.body).toMatchObject({ status: 'pending', buyer_id: 'alice' })
      await expectCleanAudit(t.baseUrl)
    })

    it("gives an order its hold's buyer whoever converts it: no token or another buyer's token still makes alice's order", async () => {
      const t = await buildTestApp(engine.name, { env: buyerEnv })
      const alice = await asBuyer('alice', { nowMs: serverNowMs(t) })
      const bob = await asBuyer('bob', { nowMs: serverNowMs(t) })
      const first = await holdAs(t.baseUrl, alice, t.productId, 1)
      const second = await holdAs(t.baseUrl, alice, t.productId, 1)
      const anonymous = await orderAs(t.baseUrl, {}, first.body.hold_id)
      expect(anonymous.status, anonymous.text).toBe(201)
      expect(anonymous.body.buyer_id).toBe('alice')
      const byBob = await orderAs(t.baseUrl, bob, second.body.hold_id)
      expect(byBob.status, byBob.text).toBe(201)
      expect(byBob.body.buyer_id).toBe('alice')
      // An anonymous hold's order stays anonymous even when a buyer converts it.
      const unnamed = await holdAs(t.baseUrl, {}, t.productId, 1)
      const claimed = await orderAs(t.baseUrl, bob, unnamed.body.hold_id)
      expect(claimed.status, claimed.text).toBe(201)
      expect(claimed.body).toHaveProperty('buyer_id', null)
    })

    it('keys idempotency per request including the buyer: same buyer replays, another buyer or no buyer gets 422 idempotency_key_reused', async () => {
      const t = await buildTestApp(engine.name, { env: buyerEnv })
      const alice = await asBuyer('alice', { nowMs: serverNowMs(t) })
      const first = await holdAs(t.baseUrl, alice, t.productId, 2, { 'idempotency-key': 'k-1' })
      expect(first.status, first.text).toBe(201)
      // A token minted later for the same buyer is the same buyer.
      t.clock.advanceMs(5_000)
      const again = await holdAs(t.baseUrl, await asBuyer('alice', { nowMs: serverNowMs(t) }), t.productId, 2, { 'idempotency-key': 'k-1' })
      expect(again.status, again.text).toBe(201)
      expect(again.headers.get('idempotent-replayed')).toBe('true')
      expect(again.body).toEqual(first.body)
      expectProblemCode(await holdAs(t.baseUrl, await asBuyer('bob', { nowMs: serverNowMs(t) }), t.productId, 2, { 'idempotency-key': 'k-1' }), 422, 'idempotency_key_reused')
      expectProblemCode(await holdAs(t.baseUrl, {}, t.productId, 2, { 'idempotency-key': 'k-1' }), 422, 'idempotency_key_reused')
      expect(await productOf(t.baseUrl, t.productId)).toMatchObject({ reserved: 2 })
    })

    it('allows 60 s of clock tolerance on exp, judged by the server clock: 59 s past exp accepted, 60 s refused', async () => {
      const t = await buildTestApp(engine.name, { env: buyerEnv })
      // Put the server clock half-way through a second, so whole-second and millisecond
      // comparisons of exp agree on which side of the edge each token is.
      t.clock.advanceMs((1_500 - (serverNowMs(t) % 1_000)) % 1_000)
      const nowS = Math.floor(serverNowMs(t) / 1000)
      const inside = await holdAs(t.baseUrl, await asBuyer('alice', { nowMs: serverNowMs(t), expS: nowS - (toleranceS - 1) }), t.productId, 1)
      expect(inside.status, inside.text).toBe(201)
      expect(inside.body.buyer_id).toBe('alice')
      expectProblemCode(await holdAs(t.baseUrl, await asBuyer('alice', { nowMs: serverNowMs(t), expS: nowS - toleranceS }), t.productId, 1), 401, 'invalid_buyer_token')
      expect(await productOf(t.baseUrl, t.productId)).toMatchObject({ reserved: 1 })
    })

    it("judges exp by the server's clock, not the wall clock: a token valid for an hour is refused once the server clock is 2 h ahead", async () => {
      const t = await buildTestApp(engine.name, { env: buyerEnv })
      const wallClockToken = await asBuyer('alice', { nowMs: Date.now() })
      t.clock.advanceMs(2 * 3_600_000)
      expectProblemCode(await holdAs(t.baseUrl, wallClockToken, t.productId, 1), 401, 'invalid_buyer_token')
      const serverClockToken = await asBuyer('alice', { nowMs: serverNowMs(t) })
      const hold = await holdAs(t.baseUrl, serverClockToken, t.productId, 1)
      expect(hold.status, hold.text).toBe(201)
      expect(hold.body.buyer_id).toBe('alice')
    })

    it('takes no buyers without BUYER_TOKEN_SECRET: tokens are ignored and a per_buyer_limit is refused with 422 naming it', async () => {
      const t = await buildTestApp(engine.name)
      for (const headers of [await asBuyer('alice'), bearer('not-a-jwt')]) {
        const hold = await holdAs(t.baseUrl, headers, t.productId, 1)
        expect(hold.status, hold.text).toBe(201)
        expect(hold.body).toHaveProperty('buyer_id', null)
      }
      const refused = await t.admin('POST', '/api/admin/products', { name: 'limited', price: '5.00', stock: 10, per_buyer_limit: 2 })
      expectProblemCode(refused, 422, 'validation_failed')
      expect(refused.body.invalid_fields).toContain('per_buyer_limit')
      expect((await t.admin('GET', '/api/admin/audit')).body.checked_products).toBe(1)
      const patched = await patchProduct(t.baseUrl, t.productId, { per_buyer_limit: 2 })
      expectProblemCode(patched, 422, 'validation_failed')
      expect(patched.body.invalid_fields).toContain('per_buyer_limit')
      expect(await productOf(t.baseUrl, t.productId)).toHaveProperty('per_buyer_limit', null)
      // Saying "no limit" needs no secret.
      const unlimited = await createDropProduct(t.baseUrl, 5, { per_buyer_limit: null })
      expect((await patchProduct(t.baseUrl, unlimited.id, { per_buyer_limit: null })).status).toBe(200)
    })

    it('lists the drop error codes in the Problem schema of /openapi.json and buyer_id in the Hold and Order schemas', async () => {
      const t = await buildTestApp(engine.name, { env: buyerEnv })
      const document = (await t.request('GET', '/openapi.json')).body
      const schemas = Object.values(document.components.schemas as Record<string, any>)
      const problem = schemas.find((schema) => schema.title === 'Problem')
      expect(problem).toBeDefined()
      const documented = JSON.stringify(problem.properties.code)
      for (const code of newCodes) expect.soft(documented, code).toContain(`"${code}"`)
      for (const title of ['Hold', 'Order']) {
        const schema = schemas.find((candidate) => candidate.title === title)
        expect.soft(schema?.properties, title).toHaveProperty('buyer_id')
      }
      const product = schemas.find((candidate) => candidate.title === 'Product')
      for (const field of ['per_buyer_limit', 'sale_starts_at', 'sale_ends_at', 'sale_status']) expect.soft(product?.properties, field).toHaveProperty(field)
    })
  })
}
