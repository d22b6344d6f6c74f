// Proves that an Idempotency-Key makes hold and order requests safe to retry, by sending real HTTP
// retries, reused keys and concurrent duplicates on every engine (in process with a manual clock
// for key expiry, and to several server processes on one database) and counting what was
// reserved through the product's counts, the answers' ids and a clean audit.
import { describe, expect, it } from 'vitest'
import { buildTestApp, type TestApp } from './helpers/app.js'
import { cleanAudit, getOrder, holdOf, isReplay, stockOf } from './helpers/checkout.js'
import { testEngines } from './helpers/engines.js'
import { countBy, request, times, type Reply } from './helpers/http.js'
import { startCluster } from './helpers/servers.js'

function postHold(t: TestApp, body: Record<string, unknown>, key?: string): Promise<Reply> {
  return t.request('POST', '/api/holds', { body, headers: key === undefined ? {} : { 'idempotency-key': key } })
}

function postOrder(t: TestApp, body: Record<string, unknown>, key?: string): Promise<Reply> {
  return t.request('POST', '/api/orders', { body, headers: key === undefined ? {} : { 'idempotency-key': key } })
}

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: idempotency keys`, () => {
    describe('holds', () => {
      it('answers the same key and body with the same hold, marked Idempotent-Replayed, reserving once', async () => {
        const t = await buildTestApp(engine.name, { stock: 10 })
        const body = { product_id: t.productId, qty: 2 }

        const first = await postHold(t, body, 'hold-key-1')
        const second = await postHold(t, body, 'hold-key-1')

        expect(first.status).toBe(201)
        expect(isReplay(first)).toBe(false)
        expect(second.status).toBe(201)
        expect(isReplay(second)).toBe(true)
        expect(second.body).toEqual(first.body)
        expect(await stockOf(t, t.productId)).toEqual({ stock: 10, available_stock: 8, reserved: 2, sold: 0 })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('refuses the same key with another body (422 idempotency_key_reused) and reserves nothing more', async () => {
        const t = await buildTestApp(engine.name, { stock: 10 })
        const otherProductId = await t.createProduct(10)
        expect((await postHold(t, { product_id: t.productId, qty: 2 }, 'hold-key-1')).status).toBe(201)

        for (const body of [
          { product_id: t.productId, qty: 3 },
          { product_id: otherProductId, qty: 2 },
        ]) {
          const reused = await postHold(t, body, 'hold-key-1')
          expect(reused.status, JSON.stringify(body)).toBe(422)
          expect(reused.body.code).toBe('idempotency_key_reused')
          expect(reused.headers.get('content-type')).toContain('application/problem+json')
        }

        expect(await stockOf(t, t.productId)).toMatchObject({ available_stock: 8, reserved: 2 })
        expect(await stockOf(t, otherProductId)).toMatchObject({ available_stock: 10, reserved: 0 })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('makes one hold from 20 concurrent duplicates with one key: 20 × 201 with one hold_id, 19 replayed', async () => {
        const t = await buildTestApp(engine.name, { stock: 10 })

        const replies = await Promise.all(times(20, () => postHold(t, { product_id: t.productId, qty: 3 }, 'hold-burst')))

        expect(countBy(replies, (reply) => reply.status)).toEqual({ 201: 20 })
        expect(new Set(replies.map((reply) => reply.body.hold_id)).size).toBe(1)
        expect(replies.filter(isReplay)).toHaveLength(19)
        expect(await stockOf(t, t.productId)).toEqual({ stock: 10, available_stock: 7, reserved: 3, sold: 0 })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('makes one hold when one key races with two bodies: the loser body is refused 422, never held', async () => {
        const t = await buildTestApp(engine.name, { stock: 10 })
        const quantities = times(20, (index) => (index % 2) + 1)

        const replies = await Promise.all(quantities.map((qty) => postHold(t, { product_id: t.productId, qty }, 'hold-race')))

        const created = replies.filter((reply) => reply.status === 201)
        expect(new Set(created.map((reply) => reply.body.hold_id)).size).toBe(1)
        const winnerQty = created[0]!.body.qty as number
        for (const [index, reply] of replies.entries()) {
          if (quantities[index] === winnerQty) expect(reply.status).toBe(201)
          else expect(reply.body.code).toBe('idempotency_key_reused')
        }
        expect(await stockOf(t, t.productId)).toMatchObject({ reserved: winnerQty, available_stock: 10 - winnerQty })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('treats a key in the body like the same key in the header (and qty like its alias quantity)', async () => {
        const t = await buildTestApp(engine.name, { stock: 10 })

        const inBody = await postHold(t, { product_id: t.productId, qty: 2, idempotency_key: 'hold-key-body' })
        const inHeader = await postHold(t, { product_id: t.productId, qty: 2 }, 'hold-key-body')
        const withAlias = await postHold(t, { product_id: t.productId, quantity: 2 }, 'hold-key-body')

        expect(inBody.status).toBe(201)
        expect(inHeader.status).toBe(201)
        expect(isReplay(inHeader)).toBe(true)
        expect(inHeader.body.hold_id).toBe(inBody.body.hold_id)
        expect(withAlias.status).toBe(201)
        expect(withAlias.body.hold_id).toBe(inBody.body.hold_id)
        // Two different keys in one request are refused rather than one silently chosen.
        const disagreeing = await postHold(t, { product_id: t.productId, qty: 2, idempotency_key: 'hold-key-other' }, 'hold-key-body')
        expect(disagreeing.status).toBe(422)
        expect(disagreeing.body.code).toBe('validation_failed')
        expect(await stockOf(t, t.productId)).toMatchObject({ reserved: 2 })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('does not use up a key on 409 insufficient_stock: after stock is added the same key makes a new hold', async () => {
        const t = await buildTestApp(engine.name, { stock: 1 })
        await holdOf(t, t.productId, 1)

        const refused = await postHold(t, { product_id: t.productId, qty: 1 }, 'hold-key-retry')
        expect(refused.status).toBe(409)
        expect(refused.body).toMatchObject({ code: 'insufficient_stock', available_stock: 0 })

        const restocked = await t.admin('PATCH', `/api/admin/products/${t.productId}`, { add_stock: 1 })
        expect(restocked.status).toBe(200)
        expect(restocked.body.available_stock).toBe(1)
        const retried = await postHold(t, { product_id: t.productId, qty: 1 }, 'hold-key-retry')
        expect(retried.status).toBe(201)
        expect(isReplay(retried)).toBe(false)
        expect(await stockOf(t, t.productId)).toEqual({ stock: 2, available_stock: 0, reserved: 2, sold: 0 })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('does not use up a key on 404 product_not_found: the key then serves another body', async () => {
        const t = await buildTestApp(engine.name, { stock: 10 })

        const missing = await postHold(t, { product_id: 999_999, qty: 1 }, 'hold-key-404')
        expect(missing.status).toBe(404)
        expect(missing.body.code).toBe('product_not_found')
        const retried = await postHold(t, { product_id: t.productId, qty: 1 }, 'hold-key-404')

        expect(retried.status).toBe(201)
        expect(isReplay(retried)).toBe(false)
        expect(await stockOf(t, t.productId)).toMatchObject({ reserved: 1 })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('keeps a key for IDEMPOTENCY_TTL_HOURS: a replay just before, a new hold just after', async () => {
        const t = await buildTestApp(engine.name, { stock: 10, env: { IDEMPOTENCY_TTL_HOURS: '2' } })
        const ttlMs = 2 * 60 * 60 * 1000
        const body = { product_id: t.productId, qty: 2 }
        const first = await postHold(t, body, 'hold-key-ttl')
        const secondKeyFirst = await postHold(t, body, 'hold-key-ttl-other-body')
        expect(first.status).toBe(201)
        expect(secondKeyFirst.status).toBe(201)

        t.clock.advanceMs(ttlMs - 1000)
        const stillKept = await postHold(t, body, 'hold-key-ttl')
        expect(stillKept.status).toBe(201)
        expect(isReplay(stillKept)).toBe(true)
        // The stored answer, not recomputed: the hold lapsed long ago (its TTL is 120 s), and the
        // replay still says what the first answer said, `active` included.
        expect(stillKept.body).toEqual(first.body)
        expect((await t.request('GET', `/api/holds/${first.body.hold_id}`)).body.status).toBe('expired')

        t.clock.advanceMs(2000)
        const afterTtl = await postHold(t, body, 'hold-key-ttl')
        expect(afterTtl.status).toBe(201)
        expect(isReplay(afterTtl)).toBe(false)
        expect(afterTtl.body.hold_id).not.toBe(first.body.hold_id)
        expect(afterTtl.body.status).toBe('active')
        // An expired key is free for any body, not only the one it was first used with.
        const otherBody = await postHold(t, { product_id: t.productId, qty: 5 }, 'hold-key-ttl-other-body')
        expect(otherBody.status).toBe(201)
        expect(isReplay(otherBody)).toBe(false)
        // The first two holds lapsed long ago; only the two new ones count.
        expect(await stockOf(t, t.productId)).toMatchObject({ available_stock: 3 })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })
    })

    describe('orders', () => {
      it('answers the same key and hold with the same order (replayed) and refuses the key for another hold with 422', async () => {
        const t = await buildTestApp(engine.name, { stock: 10 })
        const firstHoldId = await holdOf(t, t.productId, 2)
        const secondHoldId = await holdOf(t, t.productId, 3)

        const first = await postOrder(t, { hold_id: firstHoldId }, 'order-key-1')
        const second = await postOrder(t, { hold_id: firstHoldId }, 'order-key-1')
        const reused = await postOrder(t, { hold_id: secondHoldId }, 'order-key-1')

        expect(first.status).toBe(201)
        expect(isReplay(first)).toBe(false)
        expect(second.status).toBe(201)
        expect(isReplay(second)).toBe(true)
        expect(second.body).toEqual(first.body)
        expect(reused.status).toBe(422)
        expect(reused.body.code).toBe('idempotency_key_reused')
        expect((await t.request('GET', `/api/holds/${secondHoldId}`)).body.status).toBe('active')
        // Without the key, a second order for the hold is refused: the key is what makes a retry safe.
        const unkeyed = await postOrder(t, { hold_id: firstHoldId })
        expect(unkeyed.status).toBe(409)
        expect(unkeyed.body).toMatchObject({ code: 'hold_already_used', order_id: first.body.order_id })
        expect(await stockOf(t, t.productId)).toEqual({ stock: 10, available_stock: 5, reserved: 5, sold: 0 })
        expect(await t.audit()).toMatchObject(cleanAudit)
        // Past the order's TTL (900 s) the replay still answers the stored `pending`, not `expired`.
        t.clock.advanceMs(901_000)
        const late = await postOrder(t, { hold_id: firstHoldId }, 'order-key-1')
        expect(isReplay(late)).toBe(true)
        expect(late.body).toEqual(first.body)
        expect((await getOrder(t, first.body.order_id)).status).toBe('expired')
      })

      it('makes one order from 20 concurrent duplicates with one key: 20 × 201 with one order_id, 19 replayed', async () => {
        const t = await buildTestApp(engine.name, { stock: 10 })
        const holdId = await holdOf(t, t.productId, 2)

        const replies = await Promise.all(times(20, () => postOrder(t, { hold_id: holdId }, 'order-burst')))

        expect(countBy(replies, (reply) => reply.status)).toEqual({ 201: 20 })
        expect(new Set(replies.map((reply) => reply.body.order_id)).size).toBe(1)
        expect(replies.filter(isReplay)).toHaveLength(19)
        expect(await getOrder(t, replies[0]!.body.order_id)).toMatchObject({ hold_id: holdId, status: 'pending' })
        expect((await t.request('GET', `/api/holds/${holdId}`)).body.status).toBe('converted')
        expect(await stockOf(t, t.productId)).toEqual({ stock: 10, available_stock: 8, reserved: 2, sold: 0 })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('treats an order key in the body like the same key in the header', async () => {
        const t = await buildTestApp(engine.name, { stock: 10 })
        const holdId = await holdOf(t, t.productId, 1)

        const inHeader = await postOrder(t, { hold_id: holdId }, 'order-key-both')
        const inBody = await postOrder(t, { hold_id: holdId, idempotency_key: 'order-key-both' })

        expect(inHeader.status).toBe(201)
        expect(inBody.status).toBe(201)
        expect(isReplay(inBody)).toBe(true)
        expect(inBody.body.order_id).toBe(inHeader.body.order_id)
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('does not use up an order key on 410 hold_expired or 404 hold_not_found: the key then orders another hold', async () => {
        const t = await buildTestApp(engine.name, { stock: 10 })
        const lapsedHoldId = await holdOf(t, t.productId, 2)
        t.clock.advanceMs(t.config.holdTtlMs + 1)

        const expired = await postOrder(t, { hold_id: lapsedHoldId }, 'order-key-retry')
        expect(expired.status).toBe(410)
        expect(expired.body.code).toBe('hold_expired')
        const unknown = await postOrder(t, { hold_id: 'hold_does_not_exist' }, 'order-key-retry')
        expect(unknown.status).toBe(404)
        expect(unknown.body.code).toBe('hold_not_found')

        const freshHoldId = await holdOf(t, t.productId, 2)
        const retried = await postOrder(t, { hold_id: freshHoldId }, 'order-key-retry')
        expect(retried.status).toBe(201)
        expect(isReplay(retried)).toBe(false)
        expect(retried.body).toMatchObject({ hold_id: freshHoldId, status: 'pending' })
        // The lapsed hold's row is still counted in reserved until swept (I2), not in what is available.
        expect(await stockOf(t, t.productId)).toMatchObject({ available_stock: 8 })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('frees an order key after IDEMPOTENCY_TTL_HOURS (the sweeper deletes it): the key then orders another hold', async () => {
        const t = await buildTestApp(engine.name, { stock: 10 })
        const firstHoldId = await holdOf(t, t.productId, 2)
        const first = await postOrder(t, { hold_id: firstHoldId }, 'order-key-ttl')
        expect(first.status).toBe(201)

        t.clock.advanceMs(t.config.idempotencyTtlMs + 1)
        const swept = await t.sweep()
        expect(swept.idempotencyKeysDeleted).toBe(1)

        const secondHoldId = await holdOf(t, t.productId, 3)
        const second = await postOrder(t, { hold_id: secondHoldId }, 'order-key-ttl')
        expect(second.status).toBe(201)
        expect(isReplay(second)).toBe(false)
        expect(second.body.order_id).not.toBe(first.body.order_id)
        // The first order outlived ORDER_TTL and was expired by the same sweep.
        expect(await getOrder(t, first.body.order_id)).toMatchObject({ status: 'expired' })
        expect(await stockOf(t, t.productId)).toEqual({ stock: 10, available_stock: 7, reserved: 3, sold: 0 })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })
    })

    const processes = engine.name === 'sqlite' ? 2 : 3
    it(`makes one hold and one order from 20 concurrent duplicates each, spread over ${processes} processes`, async () => {
      const cluster = await startCluster(engine.name, { processes, stock: 10 })
      const urls = cluster.servers.map((server) => server.baseUrl)
      const burst = (path: string, body: unknown, key: string) =>
        Promise.all(times(20, (index) => request(urls[index % processes]!, 'POST', path, { body, headers: { 'idempotency-key': key } })))

      const holds = await burst('/api/holds', { product_id: cluster.productId, qty: 3 }, 'cluster-hold')
      const holdIds = expectOneResource(holds, 'hold_id')
      const orders = await burst('/api/orders', { hold_id: holdIds }, 'cluster-order')
      const orderId = expectOneResource(orders, 'order_id')

      expect(await getOrder(urls[0]!, orderId)).toMatchObject({ hold_id: holdIds, status: 'pending', qty: 3 })
      expect(await stockOf(urls[processes - 1]!, cluster.productId)).toEqual({ stock: 10, available_stock: 7, reserved: 3, sold: 0 })
      expect(await cluster.audit()).toMatchObject(cleanAudit)
    })
  })
}

// Every answer names the same resource, or (SPEC §3 allows it for a duplicate still in flight in
// another process) is 409 idempotency_key_in_flight; at least one request created it.
function expectOneResource(replies: Reply[], idField: 'hold_id' | 'order_id'): string {
  const created = replies.filter((reply) => reply.status === 201)
  for (const reply of replies) {
    if (reply.status !== 201) expect(reply.body, reply.text).toMatchObject({ status: 409, code: 'idempotency_key_in_flight' })
  }
  expect(created.length).toBeGreaterThan(0)
  const ids = new Set(created.map((reply) => reply.body[idField] as string))
  expect(ids.size).toBe(1)
  expect(created.filter((reply) => !isReplay(reply))).toHaveLength(1)
  return [...ids][0]!
}
