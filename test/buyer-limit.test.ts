// Proves SPEC §8 Per-buyer limit and I8 over real HTTP on every engine: what counts toward a
// buyer's units (active holds not yet lapsed, pending and paid orders) and what stops counting at
// once (released, expired, cancelled), on a manual clock in one process; then bursts of one buyer
// and of many buyers over several server processes on one database, and requests of one buyer
// sharing a group-commit batch, each judged in arrival order as if alone. Every burst ends with
// the admin audit clean; the counts are also checked from the answers themselves.
//
// Choices where SPEC is silent, tested here:
// - Order of checks for a hold: bad token 401 -> request validation 422 -> product 404 -> sale window 409/410 -> no token
//   on a limited product 401 buyer_token_required -> buyer_limit_reached 409 -> insufficient_stock
//   409. When the limit and the stock both refuse, the answer is buyer_limit_reached: it does not
//   change with other buyers' activity, so answering insufficient_stock would invite retries that
//   cannot succeed.
// - `buyer_units` in the refusal is the buyer's units before this request (not counting it).
// - A qty above the limit on its own is 409 buyer_limit_reached (buyer_units 0), not 422: the
//   limit is a product setting, not request validation.
// - Units a buyer took while the product had no limit count once a limit is set; anonymous units
//   count for nobody. Lowering a limit keeps what buyers already have and refuses more.
// - A late payment that would take a buyer above the limit is refund_required, never recovered
//   (I8 holds for paid orders too).
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { buildTestApp, type TestApp } from './helpers/app.js'
import type { Clock } from '../src/domain/clock.js'
import { Catalog } from '../src/domain/products.js'
import { startSharedCluster, type SharedCluster } from './helpers/shared-cluster.js'
import { asBuyer, buyerEnv } from './helpers/buyer-tokens.js'
import {
  advanceTo,
  createDropProduct,
  expectCleanAudit,
  expectLimitReached,
  expectProblemCode,
  holdAs,
  orderAs,
  patchProduct,
  paymentOf,
  productOf,
  serverNowMs,
} from './helpers/drops.js'
import { testEngines } from './helpers/engines.js'
import { countBy, request, times, type Reply } from './helpers/http.js'

async function granted(reply: Reply | Promise<Reply>): Promise<any> {
  const answer = await reply
  expect(answer.status, answer.text).toBe(201)
  return answer.body
}

// One sample of a Prometheus series, NaN when absent (so a comparison with it fails loudly).
function sample(metricsText: string, series: string): number {
  const line = metricsText.split('\n').find((candidate) => candidate.startsWith(`${series} `))
  return line === undefined ? Number.NaN : Number(line.slice(series.length + 1))
}

async function holdBatchTotals(baseUrl: string): Promise<{ batches: number; requests: number }> {
  const text = (await request(baseUrl, 'GET', '/metrics')).text
  return { batches: sample(text, 'flash_sale_hold_batch_size_count'), requests: sample(text, 'flash_sale_hold_batch_size_sum') }
}

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: per-buyer limit, one process, manual clock`, () => {
    async function limitedApp(stock = 100, perBuyerLimit = 3): Promise<{ t: TestApp; productId: number; as: (sub: string) => Promise<Record<string, string>> }> {
      const t = await buildTestApp(engine.name, { env: buyerEnv })
      const product = await createDropProduct(t.baseUrl, stock, { per_buyer_limit: perBuyerLimit })
      return { t, productId: product.id, as: (sub) => asBuyer(sub, { nowMs: serverNowMs(t) }) }
    }

    it('shows per_buyer_limit on GET and refuses a hold without a buyer token with 401 buyer_token_required, writing nothing', async () => {
      const { t, productId } = await limitedApp(10, 3)
      expect(await productOf(t.baseUrl, productId)).toMatchObject({ per_buyer_limit: 3, available_stock: 10 })
      const anonymous = await holdAs(t.baseUrl, {}, productId, 1, { 'idempotency-key': 'anon-1' })
      expectProblemCode(anonymous, 401, 'buyer_token_required')
      expect(await productOf(t.baseUrl, productId)).toMatchObject({ available_stock: 10, reserved: 0 })
      // The refusal used up no key.
      const named = await holdAs(t.baseUrl, await asBuyer('alice', { nowMs: serverNowMs(t) }), productId, 1, { 'idempotency-key': 'anon-1' })
      expect(named.status, named.text).toBe(201)
      expect(named.headers.get('idempotent-replayed')).toBeNull()
      await expectCleanAudit(t.baseUrl)
    })

    it('grants up to the limit and refuses above it with 409 naming per_buyer_limit and buyer_units; other buyers and products are apart', async () => {
      const { t, productId, as } = await limitedApp(100, 3)
      const other = await createDropProduct(t.baseUrl, 100, { per_buyer_limit: 3 })
      const alice = await as('alice')
      await granted(holdAs(t.baseUrl, alice, productId, 2))
      expectLimitReached(await holdAs(t.baseUrl, alice, productId, 2), 3, 2)
      await granted(holdAs(t.baseUrl, alice, productId, 1))
      expectLimitReached(await holdAs(t.baseUrl, alice, productId, 1), 3, 3)
      // Another buyer has an allowance of their own, and alice has one on another product.
      await granted(holdAs(t.baseUrl, await as('bob'), productId, 3))
      await granted(holdAs(t.baseUrl, alice, other.id, 3))
      // A qty above the limit from nothing.
      expectLimitReached(await holdAs(t.baseUrl, await as('carol'), productId, 4), 3, 0)
      expect(await productOf(t.baseUrl, productId)).toMatchObject({ reserved: 6, available_stock: 94 })
      await expectCleanAudit(t.baseUrl)
    })

    it('tells buyers apart byte for byte: "bob", "bob " and "Bob" each have their own allowance (MySQL compared text ignoring trailing spaces)', async () => {
      const { t, productId, as } = await limitedApp(100, 2)
      const spellings = ['bob', 'bob ', 'Bob', ' bob']
      for (const sub of spellings) {
        const headers = await as(sub)
        const first = await granted(holdAs(t.baseUrl, headers, productId, 2))
        expect(first.buyer_id).toBe(sub)
        expectLimitReached(await holdAs(t.baseUrl, headers, productId, 1), 2, 2)
      }
      expect(await productOf(t.baseUrl, productId)).toMatchObject({ reserved: 2 * spellings.length })
      await expectCleanAudit(t.baseUrl)
    })

    it('stops counting released units at once', async () => {
      const { t, productId, as } = await limitedApp(10, 3)
      const alice = await as('alice')
      const hold = await granted(holdAs(t.baseUrl, alice, productId, 3))
      expectLimitReached(await holdAs(t.baseUrl, alice, productId, 1), 3, 3)
      expect((await t.request('DELETE', `/api/holds/${hold.hold_id}`)).status).toBe(200)
      await granted(holdAs(t.baseUrl, alice, productId, 3))
      expectLimitReached(await holdAs(t.baseUrl, alice, productId, 1), 3, 3)
      await expectCleanAudit(t.baseUrl)
    })

    it('counts an active hold until its expires_at and not one millisecond after, with no sweep run', async () => {
      const { t, productId, as } = await limitedApp(10, 3)
      const alice = await as('alice')
      const hold = await granted(holdAs(t.baseUrl, alice, productId, 3))
      advanceTo(t, hold.expires_at, -1)
      expectLimitReached(await holdAs(t.baseUrl, alice, productId, 1), 3, 3)
      advanceTo(t, hold.expires_at)
      const again = await granted(holdAs(t.baseUrl, alice, productId, 3))
      expect(again.buyer_id).toBe('alice')
      // The sweep brings the lapsed row up to date without giving alice anything back twice.
      await t.sweep()
      expectLimitReached(await holdAs(t.baseUrl, alice, productId, 1), 3, 3)
      await expectCleanAudit(t.baseUrl)
    })

    it("counts a pending order past its hold's expires_at, and stops counting it when the order expires", async () => {
      const { t, productId, as } = await limitedApp(10, 3)
      const alice = await as('alice')
      const hold = await granted(holdAs(t.baseUrl, alice, productId, 3))
      const order = await granted(orderAs(t.baseUrl, alice, hold.hold_id))
      expect(order.buyer_id).toBe('alice')
      advanceTo(t, hold.expires_at, 1_000)
      expectLimitReached(await holdAs(t.baseUrl, await as('alice'), productId, 1), 3, 3)
      advanceTo(t, order.expires_at, -1)
      expectLimitReached(await holdAs(t.baseUrl, await as('alice'), productId, 1), 3, 3)
      advanceTo(t, order.expires_at)
      await granted(holdAs(t.baseUrl, await as('alice'), productId, 3))
      await t.sweep()
      expectLimitReached(await holdAs(t.baseUrl, await as('alice'), productId, 1), 3, 3)
      await expectCleanAudit(t.baseUrl)
    })

    it('keeps counting paid orders for good and stops counting a cancelled order at once', async () => {
      const { t, productId, as } = await limitedApp(20, 3)
      const alice = await as('alice')
      const paid = await granted(orderAs(t.baseUrl, alice, (await granted(holdAs(t.baseUrl, alice, productId, 2))).hold_id))
      expect((await paymentOf(t.baseUrl, paid.order_id, 'success', 'pay-alice')).body).toMatchObject({ order_status: 'paid' })
      expectLimitReached(await holdAs(t.baseUrl, alice, productId, 2), 3, 2)
      // Long after every TTL, paid units still count.
      t.clock.advanceMs(24 * 3_600_000)
      const later = await asBuyer('alice', { nowMs: serverNowMs(t) })
      expectLimitReached(await holdAs(t.baseUrl, later, productId, 2), 3, 2)
      await granted(holdAs(t.baseUrl, later, productId, 1))

      const bob = await asBuyer('bob', { nowMs: serverNowMs(t) })
      const cancelled = await granted(orderAs(t.baseUrl, bob, (await granted(holdAs(t.baseUrl, bob, productId, 3))).hold_id))
      expectLimitReached(await holdAs(t.baseUrl, bob, productId, 1), 3, 3)
      expect((await paymentOf(t.baseUrl, cancelled.order_id, 'failed', 'fail-bob')).body).toMatchObject({ order_status: 'cancelled' })
      await granted(holdAs(t.baseUrl, bob, productId, 3))
      await expectCleanAudit(t.baseUrl)
    })

    it('adds an active hold, a pending order and a paid order together: 1 + 1 + 1 reaches a limit of 3', async () => {
      const { t, productId, as } = await limitedApp(20, 3)
      const alice = await as('alice')
      const paid = await granted(orderAs(t.baseUrl, alice, (await granted(holdAs(t.baseUrl, alice, productId, 1))).hold_id))
      expect((await paymentOf(t.baseUrl, paid.order_id, 'success', 'pay-1')).status).toBe(200)
      await granted(orderAs(t.baseUrl, alice, (await granted(holdAs(t.baseUrl, alice, productId, 1))).hold_id))
      await granted(holdAs(t.baseUrl, alice, productId, 1))
      expectLimitReached(await holdAs(t.baseUrl, alice, productId, 1), 3, 3)
      expect(await productOf(t.baseUrl, productId)).toMatchObject({ reserved: 2, sold: 1 })
      await expectCleanAudit(t.baseUrl)
    })

    it('never lets a late payment take a buyer above the limit: refund_required then, recovered when there is room', async () => {
      const { t, productId, as } = await limitedApp(20, 3)
      const alice = await as('alice')
      const first = await granted(orderAs(t.baseUrl, alice, (await granted(holdAs(t.baseUrl, alice, productId, 3))).hold_id))
      expect((await paymentOf(t.baseUrl, first.order_id, 'failed', 'fail-1')).body).toMatchObject({ order_status: 'cancelled' })
      await granted(holdAs(t.baseUrl, alice, productId, 3))
      // Units are there for the late success, but alice already has 3.
      const late = await paymentOf(t.baseUrl, first.order_id, 'success', 'late-1')
      expect(late.status, late.text).toBe(200)
      expect(late.body).toMatchObject({ order_id: first.order_id, order_status: 'cancelled', outcome: 'refund_required' })
      expect((await t.request('GET', `/api/orders/${first.order_id}`)).body).toMatchObject({ status: 'cancelled', refund_required: true })
      expectLimitReached(await holdAs(t.baseUrl, alice, productId, 1), 3, 3)

      const bob = await as('bob')
      const second = await granted(orderAs(t.baseUrl, bob, (await granted(holdAs(t.baseUrl, bob, productId, 2))).hold_id))
      expect((await paymentOf(t.baseUrl, second.order_id, 'failed', 'fail-2')).status).toBe(200)
      const recovered = await paymentOf(t.baseUrl, second.order_id, 'success', 'late-2')
      expect(recovered.body).toMatchObject({ order_status: 'paid', outcome: 'recovered' })
      expectLimitReached(await holdAs(t.baseUrl, bob, productId, 2), 3, 2)
      expect(await productOf(t.baseUrl, productId)).toMatchObject({ reserved: 3, sold: 2 })
      await expectCleanAudit(t.baseUrl)
    })

    it("judges a late payment's limit after its reclaim: a recovery the reclaim made for the same buyer counts (found in review)", async () => {
      const { t, productId, as } = await limitedApp(6, 3)
      const bob = await as('bob')
      // Bob's first hold, with a success stored before any order; carol takes 2 more.
      const first = await granted(holdAs(t.baseUrl, bob, productId, 2))
      const early = await request(t.baseUrl, 'POST', '/api/payments/webhook', { body: { hold_id: first.hold_id, status: 'success' }, headers: { 'idempotency-key': 'early-1' } })
      expect(early.status, early.text).toBe(202)
      await granted(holdAs(t.baseUrl, await as('carol'), productId, 2))
      // Both lapse, unswept: bob's first hold no longer counts, so he takes 2 more, orders them,
      // and the payment fails (cancelled); dave takes the last 2 stored units.
      advanceTo(t, first.expires_at, 1_000)
      const second = await granted(orderAs(t.baseUrl, bob, (await granted(holdAs(t.baseUrl, bob, productId, 2))).hold_id))
      expect((await paymentOf(t.baseUrl, second.order_id, 'failed', 'fail-2')).body).toMatchObject({ order_status: 'cancelled' })
      await granted(holdAs(t.baseUrl, await as('dave'), productId, 2))
      // A late success for the cancelled order finds no stored units and reclaims the two lapsed
      // holds; that settles the early success, which recovers bob's first 2 units. His 2 more
      // would take him to 4 of 3.
      const late = await paymentOf(t.baseUrl, second.order_id, 'success', 'late-2')
      expect(late.status, late.text).toBe(200)
      expect(late.body).toMatchObject({ order_status: 'cancelled', outcome: 'refund_required' })
      const recovered = await request(t.baseUrl, 'POST', '/api/payments/webhook', { body: { hold_id: first.hold_id, status: 'success' }, headers: { 'idempotency-key': 'early-1' } })
      expect(recovered.body).toMatchObject({ outcome: 'recovered', order_status: 'paid' })
      expectLimitReached(await holdAs(t.baseUrl, bob, productId, 2), 3, 2)
      expect(await productOf(t.baseUrl, productId)).toMatchObject({ sold: 2, reserved: 2, available_stock: 2 })
      await expectCleanAudit(t.baseUrl)
    })

    it('refuses for the limit before the stock, and asks for a token only once the product is known', async () => {
      const { t, productId, as } = await limitedApp(3, 3)
      const alice = await as('alice')
      await granted(holdAs(t.baseUrl, alice, productId, 2))
      // 1 unit left and alice at 2 of 3: both refuse a qty of 2; the limit is named.
      expectLimitReached(await holdAs(t.baseUrl, alice, productId, 2), 3, 2)
      await granted(holdAs(t.baseUrl, await as('bob'), productId, 1))
      // Sold out and no token: the token is asked for first.
      expectProblemCode(await holdAs(t.baseUrl, {}, productId, 1), 401, 'buyer_token_required')
      expectProblemCode(await holdAs(t.baseUrl, await as('carol'), productId, 1), 409, 'insufficient_stock')
      expectProblemCode(await holdAs(t.baseUrl, {}, 424_242, 1), 404, 'product_not_found')
      // qty above MAX_QTY_PER_HOLD is a bad request whatever the limit.
      expectProblemCode(await holdAs(t.baseUrl, {}, productId, 11), 422, 'validation_failed')
    })

    it('dates a lowered limit by the clock read under the product lock: a ticket granted while the change waited for the lock is judged again, and closed', async () => {
      const t = await buildTestApp(engine.name, { env: buyerEnv })
      const product = await createDropProduct(t.baseUrl, 3, { per_buyer_limit: 3 })
      const x = await asBuyer('x', { nowMs: serverNowMs(t) })
      const y = await asBuyer('y', { nowMs: serverNowMs(t) })
      await granted(holdAs(t.baseUrl, x, product.id, 2))
      const yHold = await granted(holdAs(t.baseUrl, y, product.id, 1))
      const changeReadAtMs = serverNowMs(t)
      t.clock.advanceMs(1_000)
      // Granted under limit 3 while the change waits: x has 2 held and 1 waiting.
      const ticket = await request(t.baseUrl, 'POST', `/api/products/${product.id}/waitlist`, { body: { qty: 1 }, headers: x })
      expect(ticket.body).toMatchObject({ status: 'waiting' })
      // The change read the clock before it waited for the lock (another process's batch held
      // it); every later reading is now.
      let reads = 0
      const changeClock: Clock = { now: () => (reads++ === 0 ? new Date(changeReadAtMs) : t.clock.now()) }
      await new Catalog(t.runtime.store, changeClock, t.runtime.observer).update(product.id, { drop: { perBuyerLimit: 2 } })
      // y lets go: x is at the new limit with the units she holds, so her ticket closes.
      expect((await request(t.baseUrl, 'DELETE', `/api/holds/${yHold.hold_id}`)).status).toBe(200)
      expect((await request(t.baseUrl, 'GET', `/api/waitlist/${ticket.body.ticket_id}`)).body).toMatchObject({ status: 'closed' })
      await expectCleanAudit(t.baseUrl)
    })

    it('counts units a buyer took before a limit was set, never anonymous ones, and judges new holds by the limit as patched', async () => {
      const t = await buildTestApp(engine.name, { env: buyerEnv })
      const product = await createDropProduct(t.baseUrl, 50)
      const alice = await asBuyer('alice', { nowMs: serverNowMs(t) })
      await granted(holdAs(t.baseUrl, alice, product.id, 2))
      await granted(holdAs(t.baseUrl, {}, product.id, 5))
      const patched = await patchProduct(t.baseUrl, product.id, { per_buyer_limit: 3 })
      expect(patched.status, patched.text).toBe(200)
      expect(patched.body).toMatchObject({ per_buyer_limit: 3, stock: 50, reserved: 7 })
      expectLimitReached(await holdAs(t.baseUrl, alice, product.id, 2), 3, 2)
      await granted(holdAs(t.baseUrl, alice, product.id, 1))
      // Lowered below what alice has: her holds stay, more is refused.
      expect((await patchProduct(t.baseUrl, product.id, { per_buyer_limit: 2 })).status).toBe(200)
      expectLimitReached(await holdAs(t.baseUrl, alice, product.id, 1), 2, 3)
      expect(await productOf(t.baseUrl, product.id)).toMatchObject({ per_buyer_limit: 2, reserved: 8 })
      // Raised, then cleared: no limit and no token needed.
      expect((await patchProduct(t.baseUrl, product.id, { per_buyer_limit: 5 })).status).toBe(200)
      await granted(holdAs(t.baseUrl, alice, product.id, 2))
      expectLimitReached(await holdAs(t.baseUrl, alice, product.id, 1), 5, 5)
      const cleared = await patchProduct(t.baseUrl, product.id, { per_buyer_limit: null })
      expect(cleared.body).toHaveProperty('per_buyer_limit', null)
      await granted(holdAs(t.baseUrl, {}, product.id, 1))
      await granted(holdAs(t.baseUrl, alice, product.id, 1))
    })
  })

  describe.skipIf(!engine.available)(`${engine.name}: per-buyer limit under concurrency`, () => {
    const processes = engine.name === 'sqlite' ? 2 : 3
    let cluster: SharedCluster
    const serverFor = (index: number): string => cluster.servers[index % cluster.servers.length]!.baseUrl
    beforeAll(async () => {
      cluster = await startSharedCluster(engine.name, { processes, env: buyerEnv })
    })
    afterAll(async () => cluster?.close())

    it(`60 concurrent holds of one buyer with limit 3 over ${processes} processes: exactly 3 units, 57 refusals at 3`, async () => {
      const product = await createDropProduct(serverFor(0), 100, { per_buyer_limit: 3 })
      const alice = await asBuyer('alice')
      const replies = await Promise.all(times(60, (index) => holdAs(serverFor(index), alice, product.id, 1)))
      expect(countBy(replies, (reply) => reply.status)).toEqual({ 201: 3, 409: 57 })
      for (const reply of replies.filter((candidate) => candidate.status === 409)) expectLimitReached(reply, 3, 3)
      for (const reply of replies.filter((candidate) => candidate.status === 201)) expect(reply.body.buyer_id).toBe('alice')
      expect(await productOf(serverFor(1), product.id)).toMatchObject({ reserved: 3, available_stock: 97 })
      await expectCleanAudit(serverFor(0))
    })

    it(`40 buyers x 5 concurrent holds with limit 2 over ${processes} processes: every buyer gets exactly 2, nobody more`, async () => {
      const product = await createDropProduct(serverFor(0), 500, { per_buyer_limit: 2 })
      const buyers = await Promise.all(times(40, (index) => asBuyer(`buyer-${index}`)))
      // Each buyer's five requests go to different processes, interleaved with everyone else's.
      const requests = times(200, (index) => ({ buyer: index % 40, server: index }))
      const replies = await Promise.all(requests.map(({ buyer, server }) => holdAs(serverFor(server), buyers[buyer]!, product.id, 1)))
      const grantedPerBuyer = countBy(
        replies.filter((reply) => reply.status === 201),
        (reply) => reply.body.buyer_id as string,
      )
      expect(grantedPerBuyer).toEqual(Object.fromEntries(times(40, (index) => [`buyer-${index}`, 2])))
      expect(countBy(replies, (reply) => reply.status)).toEqual({ 201: 80, 409: 120 })
      for (const reply of replies.filter((candidate) => candidate.status === 409)) expectLimitReached(reply, 2, 2)
      expect(await productOf(serverFor(0), product.id)).toMatchObject({ reserved: 80, available_stock: 420 })
      await expectCleanAudit(serverFor(0))
    })

    it(`mixed quantities from 20 buyers over ${processes} processes: nobody above the limit, nobody refused while the request still fits`, async () => {
      const limit = 4
      const product = await createDropProduct(serverFor(0), 1_000, { per_buyer_limit: limit })
      const buyers = await Promise.all(times(20, (index) => asBuyer(`mixed-${index}`)))
      const requests = times(120, (index) => ({ buyer: index % 20, qty: (Math.floor(index / 20) % 3) + 1, server: index }))
      const replies = await Promise.all(requests.map(({ buyer, qty, server }) => holdAs(serverFor(server), buyers[buyer]!, product.id, qty)))
      const unitsOf = new Map<number, number>()
      for (const [index, reply] of replies.entries()) {
        expect([201, 409], reply.text).toContain(reply.status)
        if (reply.status === 201) unitsOf.set(requests[index]!.buyer, (unitsOf.get(requests[index]!.buyer) ?? 0) + requests[index]!.qty)
      }
      for (const [buyer, units] of unitsOf) expect(units, `buyer ${buyer}`).toBeLessThanOrEqual(limit)
      // Units only grow in this burst, so a refusal judged at buyer_units b (b + qty > limit)
      // means the buyer's final units plus that qty exceed the limit too.
      for (const [index, reply] of replies.entries()) {
        if (reply.status !== 409) continue
        const { buyer, qty } = requests[index]!
        expect(reply.body).toMatchObject({ code: 'buyer_limit_reached', per_buyer_limit: limit })
        expect(reply.body.buyer_units + qty).toBeGreaterThan(limit)
        expect(reply.body.buyer_units).toBeLessThanOrEqual(unitsOf.get(buyer) ?? 0)
        expect((unitsOf.get(buyer) ?? 0) + qty, `buyer ${buyer} refused ${qty} with room`).toBeGreaterThan(limit)
      }
      const totalUnits = [...unitsOf.values()].reduce((sum, units) => sum + units, 0)
      expect(await productOf(serverFor(0), product.id)).toMatchObject({ reserved: totalUnits })
      await expectCleanAudit(serverFor(0))
    })

    it(`a release racing 10 holds of the same buyer over ${processes} processes frees room for at most one of them`, async () => {
      const product = await createDropProduct(serverFor(0), 100, { per_buyer_limit: 3 })
      const alice = await asBuyer('alice')
      const holds = [await granted(holdAs(serverFor(0), alice, product.id, 1)), await granted(holdAs(serverFor(1), alice, product.id, 2))]
      const [released, ...replies] = await Promise.all([
        request(serverFor(2), 'DELETE', `/api/holds/${holds[0].hold_id}`),
        ...times(10, (index) => holdAs(serverFor(index), alice, product.id, 1)),
      ])
      expect(released!.status).toBe(200)
      const counts = countBy(replies, (reply) => reply.status)
      expect(counts[201] ?? 0).toBeLessThanOrEqual(1)
      expect((counts[201] ?? 0) + (counts[409] ?? 0)).toBe(10)
      // A hold judged after the release either fits (alice at 2) or meets the one that did (3).
      for (const reply of replies.filter((candidate) => candidate.status === 409)) expectLimitReached(reply, 3, 3)
      expect(await productOf(serverFor(0), product.id)).toMatchObject({ reserved: 2 + (counts[201] ?? 0) })
      // Whatever the interleaving, alice ends at 3 at most and one more unit is refused or fits exactly.
      const last = await holdAs(serverFor(0), alice, product.id, 1)
      if ((counts[201] ?? 0) === 1) expectLimitReached(last, 3, 3)
      else expect(last.status, last.text).toBe(201)
      await expectCleanAudit(serverFor(0))
    })

    // The group-commit cases go to one process, so the requests of one product queue behind the
    // transaction in flight and are served together: the metrics show the batches.
    it('judges two holds of one buyer in one batch each as if alone: qty 2 + qty 2 with limit 3 is one 201 and one 409 at buyer_units 2', async () => {
      const baseUrl = serverFor(0)
      // 40 other buyers take 1 unit each, and alice one hold of 2: exactly the stock. A second
      // grant to alice (the allowance shared wrongly) would also leave someone short of stock.
      const product = await createDropProduct(baseUrl, 42, { per_buyer_limit: 3 })
      const fillers = await Promise.all(times(40, (index) => asBuyer(`filler-${index}`)))
      const alice = await asBuyer('alice')
      const before = await holdBatchTotals(baseUrl)
      const replies = await Promise.all([
        ...fillers.slice(0, 20).map((headers) => holdAs(baseUrl, headers, product.id, 1)),
        holdAs(baseUrl, alice, product.id, 2),
        holdAs(baseUrl, alice, product.id, 2),
        ...fillers.slice(20).map((headers) => holdAs(baseUrl, headers, product.id, 1)),
      ])
      const after = await holdBatchTotals(baseUrl)
      expect(after.requests - before.requests, 'every request went through the hold batches').toBe(42)
      expect(after.batches - before.batches, 'the burst was served in shared batches').toBeLessThan(42)
      expect(countBy(replies, (reply) => reply.status)).toEqual({ 201: 41, 409: 1 })
      const aliceReplies = replies.slice(20, 22)
      expect(aliceReplies.filter((reply) => reply.status === 201).map((reply) => reply.body.buyer_id)).toEqual(['alice'])
      expectLimitReached(
        aliceReplies.find((reply) => reply.status === 409)!,
        3,
        2,
      )
      expect(await productOf(baseUrl, product.id)).toMatchObject({ reserved: 42, available_stock: 0 })
      await expectCleanAudit(baseUrl)
    })

    it('judges mixed buyers in one batch each against their own allowance, refusals consuming nothing', async () => {
      const baseUrl = serverFor(0)
      const product = await createDropProduct(baseUrl, 200, { per_buyer_limit: 3 })
      const [a, b, c, d, e, f] = await Promise.all(['a', 'b', 'c', 'd', 'e', 'f'].map((sub) => asBuyer(`mixed-batch-${sub}`)))
      // Interleaved so each buyer's requests sit between everyone else's in the batch.
      const plan: Array<{ buyer: string; headers: Record<string, string>; qty: number }> = []
      for (let round = 0; round < 6; round++) {
        plan.push({ buyer: 'a', headers: a!, qty: 1 }, { buyer: 'b', headers: b!, qty: 1 }, { buyer: 'c', headers: c!, qty: 1 })
        if (round < 3) plan.push({ buyer: 'd', headers: d!, qty: 2 }, { buyer: 'e', headers: e!, qty: [2, 1, 2][round]! })
      }
      plan.push({ buyer: 'f', headers: f!, qty: 4 })
      const before = await holdBatchTotals(baseUrl)
      const replies = await Promise.all(plan.map(({ headers, qty }) => holdAs(baseUrl, headers, product.id, qty)))
      const after = await holdBatchTotals(baseUrl)
      expect(after.batches - before.batches, 'the burst was served in shared batches').toBeLessThan(plan.length)
      const unitsOf: Record<string, number> = {}
      for (const [index, reply] of replies.entries()) {
        const { buyer, qty } = plan[index]!
        if (reply.status === 201) unitsOf[buyer] = (unitsOf[buyer] ?? 0) + qty
        else expect(reply.body, reply.text).toMatchObject({ code: 'buyer_limit_reached', per_buyer_limit: 3 })
      }
      // a, b, c: 3 of 6 single units; d: one of three 2s; e: 2 + 1 in any arrival order; f: 4 > 3.
      expect(unitsOf).toEqual({ a: 3, b: 3, c: 3, d: 2, e: 3 })
      expect(countBy(replies, (reply) => reply.status)).toEqual({ 201: 3 * 3 + 1 + 2, 409: 3 * 3 + 2 + 1 + 1 })
      for (const [index, reply] of replies.entries()) {
        const { buyer, qty } = plan[index]!
        if (reply.status !== 409) continue
        if (buyer === 'f') expectLimitReached(reply, 3, 0)
        else if (buyer === 'e') expect([2, 3]).toContain(reply.body.buyer_units)
        else expectLimitReached(reply, 3, buyer === 'd' ? 2 : 3)
        expect(reply.body.buyer_units + qty).toBeGreaterThan(3)
      }
      expect(await productOf(baseUrl, product.id)).toMatchObject({ reserved: 14, available_stock: 186 })
      await expectCleanAudit(baseUrl)
    })
  })
}
