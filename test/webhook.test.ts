// Proves the payment webhook applies each payment at most once, in arrival order, before or after
// the order exists and after it ended, by sending real signed HTTP calls on every engine (in
// process with a manual clock, and to several server processes on one database) and checking the
// answers, the order and product as the API then reports them, and a clean audit.
import { describe, expect, it } from 'vitest'
import { buildTestApp, testWebhookSecret, type TestApp, type TestAppOptions } from './helpers/app.js'
import { accepted, cleanAudit, getOrder, holdOf, isReplay, orderOf, pendingOrder, processed, serverTimestampS, stockOf, webhook, webhookEnv } from './helpers/checkout.js'
import { stopGracefully } from './helpers/bursts.js'
import { rawQuery, testEngines } from './helpers/engines.js'
import { fingerprintOf } from '../src/domain/idempotency.js'
import { countBy, request, signedWebhook, times, type Reply } from './helpers/http.js'
import { logEvents, processCounts, serverFor, startCluster } from './helpers/servers.js'

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: payment webhook`, () => {
    // WEBHOOK_SECRET is set as in production (where it is required), so every call is signed.
    const build = (options: TestAppOptions = {}) => buildTestApp(engine.name, { ...options, env: { ...webhookEnv, ...options.env } })
    // A success applied after its hold or order had ended, while the units were free: the order paid after all.
    const expectRecovered = (reply: Reply, holdId: string, orderId: string = expect.any(String)) => {
      expect(reply.status, reply.text).toBe(200)
      expect(reply.body).toEqual(processed({ hold_id: holdId, order_id: orderId, order_status: 'paid', outcome: 'recovered' }))
    }

    describe('duplicates', () => {
      it('applies one key sent 20 times concurrently once: one sale, 20 identical answers, 19 marked replayed', async () => {
        const t = await build({ stock: 5 })
        const { holdId, orderId } = await pendingOrder(t, t.productId, 2)
        const body = { order_id: orderId, status: 'success', payment_id: 'pay_1' }

        const replies = await Promise.all(times(20, () => webhook(t, body, 'evt-concurrent')))

        expect(countBy(replies, (reply) => reply.status)).toEqual({ 200: 20 })
        expect(new Set(replies.map((reply) => reply.text)).size).toBe(1)
        expect(replies[0]!.body).toEqual(processed({ hold_id: holdId, order_id: orderId, order_status: 'paid', outcome: 'paid' }))
        expect(replies.filter(isReplay)).toHaveLength(19)
        expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 3, reserved: 0, sold: 2 })
        expect(await getOrder(t, orderId)).toMatchObject({ status: 'paid', payment_id: 'pay_1', refund_required: false })
        expect(t.events.filter((event) => event.name === 'payment.applied')).toHaveLength(1)
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      for (const processes of processCounts(engine.name)) {
        it(`applies one key sent 20 times concurrently across ${processes} process(es) once: one sale, 20 identical answers, 19 replays`, async () => {
          const cluster = await startCluster(engine.name, { processes, stock: 5, env: webhookEnv })
          const { servers } = cluster
          const { holdId, orderId } = await pendingOrder(servers[0]!.baseUrl, cluster.productId, 2)
          const body = { order_id: orderId, status: 'success', payment_id: 'pay_cluster' }

          // The servers run on the wall clock, so the signature's default timestamp (now) is fresh.
          const replies = await Promise.all(
            times(20, (index) => request(serverFor(servers, index).baseUrl, 'POST', '/api/payments/webhook', signedWebhook(testWebhookSecret, body, { key: 'evt-cluster' }))),
          )

          expect(countBy(replies, (reply) => reply.status)).toEqual({ 200: 20 })
          expect(new Set(replies.map((reply) => reply.text)).size).toBe(1)
          expect(replies[0]!.body).toEqual(processed({ hold_id: holdId, order_id: orderId, order_status: 'paid', outcome: 'paid' }))
          expect(replies.filter(isReplay)).toHaveLength(19)
          expect(await stockOf(serverFor(servers, 1).baseUrl, cluster.productId)).toEqual({ stock: 5, available_stock: 3, reserved: 0, sold: 2 })
          expect(await getOrder(serverFor(servers, processes - 1).baseUrl, orderId)).toMatchObject({ status: 'paid', payment_id: 'pay_cluster' })
          expect(await cluster.runtime.store.getPaymentEvent('evt-cluster')).toMatchObject({ state: 'processed', orderId })
          // One effect: one payment.applied across every process (final once they have stopped).
          expect(await stopGracefully(servers)).toEqual(servers.map(() => ({ code: 0, signal: null })))
          expect(logEvents(servers, 'payment.applied').filter((line) => line.key === 'evt-cluster')).toHaveLength(1)
          expect(await cluster.audit()).toMatchObject(cleanAudit)
        })
      }

      it('serves a burst of webhooks on one product in batches: each order paid once, a repeated key replayed, another key a duplicate, a wrong amount refused alone (batched path)', async () => {
        // A server process of its own, so webhooks queue behind the transaction in flight.
        const cluster = await startCluster(engine.name, { processes: 1, stock: 100, env: webhookEnv })
        const { baseUrl } = cluster.servers[0]!
        const orders = await Promise.all(times(40, () => pendingOrder(baseUrl, cluster.productId, 1)))
        const send = (orderId: string, key: string, extra: Record<string, unknown> = {}) =>
          request(baseUrl, 'POST', '/api/payments/webhook', signedWebhook(testWebhookSecret, { order_id: orderId, status: 'success', payment_id: `pay_${key}`, ...extra }, { key }))
        const calls = [
          ...orders.map(({ orderId }, index) => ({ orderId, kind: 'first', key: `evt-burst-${index}`, reply: send(orderId, `evt-burst-${index}`) })),
          // The same key again, side by side with the first: one effect, the same answer.
          ...orders.slice(0, 10).map(({ orderId }, index) => ({ orderId, kind: 'same key', key: `evt-burst-${index}`, reply: send(orderId, `evt-burst-${index}`) })),
          // Another key for the same order: whichever comes second is a recorded duplicate.
          ...orders.slice(10, 20).map(({ orderId }, index) => ({ orderId, kind: 'other key', key: `evt-other-${index}`, reply: send(orderId, `evt-other-${index}`) })),
          { orderId: orders[20]!.orderId, kind: 'wrong amount', key: 'evt-wrong-amount', reply: send(orders[20]!.orderId, 'evt-wrong-amount', { amount: '0.01' }) },
        ]
        const replies = await Promise.all(calls.map((call) => call.reply))

        expect(countBy(replies, (reply) => reply.status)).toEqual({ 200: 60, 422: 1 })
        expect(replies[calls.length - 1]!.body).toMatchObject({ code: 'amount_mismatch' })
        for (const [index, { orderId }] of orders.entries()) {
          const mine = calls.flatMap((call, callIndex) => (call.orderId === orderId && call.kind !== 'wrong amount' ? [replies[callIndex]!] : []))
          // Exactly one answer made the sale; the others are a replay of it or a duplicate.
          expect(
            mine.filter((reply) => reply.body.outcome === 'paid' && !isReplay(reply)),
            `order ${index}`,
          ).toHaveLength(1)
          if (index < 10) {
            expect(mine.map((reply) => reply.text)[0]).toBe(mine.map((reply) => reply.text)[1])
            expect(mine.filter(isReplay)).toHaveLength(1)
          }
          if (index >= 10 && index < 20) expect(mine.map((reply) => reply.body.outcome).sort()).toEqual(['duplicate', 'paid'])
          expect(await getOrder(baseUrl, orderId)).toMatchObject({ status: 'paid' })
        }
        // Served in batches: fewer transactions than webhooks. Every key's first call goes through
        // a batch (51); a repeat that arrives after its first committed is replayed before one.
        const metrics = (await request(baseUrl, 'GET', '/metrics')).text
        const batches = Number(/flash_sale_webhook_batch_size_count (\d+)/.exec(metrics)?.[1])
        const batched = Number(/flash_sale_webhook_batch_size_sum (\d+)/.exec(metrics)?.[1])
        expect(batched).toBeGreaterThanOrEqual(51)
        expect(batched).toBeLessThanOrEqual(61)
        expect(batches).toBeLessThan(batched)
        expect(await stockOf(baseUrl, cluster.productId)).toEqual({ stock: 100, available_stock: 60, reserved: 0, sold: 40 })
        expect(await cluster.audit()).toMatchObject(cleanAudit)
      })

      it('refuses the same key with another body (422 idempotency_key_reused) and keeps the first answer', async () => {
        const t = await build({ stock: 5 })
        const { holdId, orderId } = await pendingOrder(t, t.productId, 1)
        const body = { order_id: orderId, status: 'success', payment_id: 'pay_1' }
        const first = await webhook(t, body, 'evt-reused')
        expect(first.status).toBe(200)

        for (const other of [
          { ...body, status: 'failed' },
          { ...body, payment_id: 'pay_2' },
          { ...body, amount: '99.99' },
        ]) {
          const reused = await webhook(t, other, 'evt-reused')
          expect(reused.status, JSON.stringify(other)).toBe(422)
          expect(reused.body.code).toBe('idempotency_key_reused')
          expect(reused.headers.get('content-type')).toContain('application/problem+json')
        }

        const replay = await webhook(t, body, 'evt-reused')
        expect(replay.status).toBe(200)
        expect(isReplay(replay)).toBe(true)
        expect(replay.body).toEqual(processed({ hold_id: holdId, order_id: orderId, order_status: 'paid', outcome: 'paid' }))
        expect(await getOrder(t, orderId)).toMatchObject({ status: 'paid', payment_id: 'pay_1' })
        expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 4, reserved: 0, sold: 1 })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('replays a retry that writes the same amount otherwise ("10.00", "10", "10.0", 10), refuses another amount 422, and still replays an event stored with the amount text as sent (before amounts were canonical)', async () => {
        const t = await build({ stock: 5, priceMinor: 1000 })
        const { orderId } = await pendingOrder(t, t.productId, 1)
        const amount = '10.00'
        expect(await getOrder(t, orderId)).toMatchObject({ amount })
        const body = { order_id: orderId, status: 'success', payment_id: 'pay_1', amount }
        const first = await webhook(t, body, 'evt-amount')
        expect(first.status, first.text).toBe(200)
        for (const written of ['10', '10.0', 10, 10.0, '010.00']) {
          const retried = await webhook(t, { ...body, amount: written }, 'evt-amount')
          expect({ written, status: retried.status, replayed: isReplay(retried) }).toEqual({ written, status: 200, replayed: true })
          expect(retried.text).toBe(first.text)
        }
        const other = await webhook(t, { ...body, amount: '10.01' }, 'evt-amount')
        expect(other.status).toBe(422)
        expect(other.body.code).toBe('idempotency_key_reused')

        // An event stored by the earlier code kept the amount's text as sent in its fingerprint.
        const second = await pendingOrder(t, t.productId, 1)
        const legacyBody = { order_id: second.orderId, status: 'success', payment_id: 'pay_2', amount }
        expect((await webhook(t, legacyBody, 'evt-legacy')).status).toBe(200)
        const legacyFingerprint = fingerprintOf(['payments', second.orderId, null, 'success', 'pay_2', amount])
        await rawQuery(t.engine, t.databaseUrl, `update payment_events set fingerprint = '${legacyFingerprint}' where idem_key = 'evt-legacy'`)
        const legacyReplay = await webhook(t, legacyBody, 'evt-legacy')
        expect({ status: legacyReplay.status, replayed: isReplay(legacyReplay) }).toEqual({ status: 200, replayed: true })
        expect((await webhook(t, { ...legacyBody, amount: '10.01' }, 'evt-legacy')).body.code).toBe('idempotency_key_reused')
        expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 3, reserved: 0, sold: 2 })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('refuses a body naming an order and another hold (422 naming hold_id), storing nothing; the order and its own hold together are accepted', async () => {
        const t = await build({ stock: 5 })
        const { holdId, orderId } = await pendingOrder(t, t.productId, 1)
        const otherHoldId = await holdOf(t, await t.createProduct(3), 1)
        const mismatched = await webhook(t, { order_id: orderId, hold_id: otherHoldId, status: 'success' }, 'evt-pair')
        expect({ status: mismatched.status, code: mismatched.body.code, invalid: mismatched.body.invalid_fields }).toEqual({
          status: 422,
          code: 'validation_failed',
          invalid: ['hold_id'],
        })
        expect(await getOrder(t, orderId)).toMatchObject({ status: 'pending' })
        // Not stored: the same key then carries the right pair.
        const matched = await webhook(t, { order_id: orderId, hold_id: holdId, status: 'success' }, 'evt-pair')
        expect(matched.status, matched.text).toBe(200)
        expect(matched.body).toEqual(processed({ hold_id: holdId, order_id: orderId, order_status: 'paid', outcome: 'paid' }))
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('records a different key for an already-paid order as a duplicate (or ignored failure) with no second sale', async () => {
        const t = await build({ stock: 5 })
        const { holdId, orderId } = await pendingOrder(t, t.productId, 2)
        expect((await webhook(t, { order_id: orderId, status: 'success', payment_id: 'pay_1' }, 'evt-first')).body.outcome).toBe('paid')

        const second = await webhook(t, { order_id: orderId, status: 'success', payment_id: 'pay_2' }, 'evt-second')
        expect(second.status).toBe(200)
        expect(isReplay(second)).toBe(false)
        expect(second.body).toEqual(processed({ hold_id: holdId, order_id: orderId, order_status: 'paid', outcome: 'duplicate' }))
        // Recorded: the same second key again is a replay of that answer.
        const secondAgain = await webhook(t, { order_id: orderId, status: 'success', payment_id: 'pay_2' }, 'evt-second')
        expect(isReplay(secondAgain)).toBe(true)
        expect(secondAgain.text).toBe(second.text)

        const failed = await webhook(t, { order_id: orderId, status: 'failed' }, 'evt-failed-after-paid')
        expect(failed.body).toEqual(processed({ hold_id: holdId, order_id: orderId, order_status: 'paid', outcome: 'ignored' }))

        expect(await getOrder(t, orderId)).toMatchObject({ status: 'paid', payment_id: 'pay_1', refund_required: false })
        expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 3, reserved: 0, sold: 2 })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('treats a key given in the body like the same key in the header', async () => {
        const t = await build({ stock: 5 })
        const { orderId } = await pendingOrder(t, t.productId, 1)
        const body = { order_id: orderId, status: 'success' }
        const inBody = await t.request('POST', '/api/payments/webhook', signedWebhook(testWebhookSecret, { ...body, idempotency_key: 'evt-body' }, { timestampS: serverTimestampS(t) }))
        expect(inBody.status).toBe(200)
        expect(inBody.body.outcome).toBe('paid')

        const inHeader = await webhook(t, body, 'evt-body')
        expect(inHeader.status).toBe(200)
        expect(isReplay(inHeader)).toBe(true)
        expect(inHeader.text).toBe(inBody.text)
        expect(await stockOf(t, t.productId)).toMatchObject({ reserved: 0, sold: 1 })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })
    })

    it('cancels a pending order on a failed payment and returns its units to available_stock at once', async () => {
      const t = await build({ stock: 5 })
      const { holdId, orderId } = await pendingOrder(t, t.productId, 3)
      expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 2, reserved: 3, sold: 0 })

      const reply = await webhook(t, { order_id: orderId, status: 'failed', payment_id: 'pay_declined' }, 'evt-failed')

      expect(reply.status).toBe(200)
      expect(reply.body).toEqual(processed({ hold_id: holdId, order_id: orderId, order_status: 'cancelled', outcome: 'cancelled' }))
      expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 5, reserved: 0, sold: 0 })
      expect(await getOrder(t, orderId)).toMatchObject({ status: 'cancelled', paid_at: null, refund_required: false })
      // The units are really back: another buyer can hold all five.
      await holdOf(t, t.productId, 5)
      expect(await t.audit()).toMatchObject(cleanAudit)
    })

    describe('payment before the order', () => {
      // A hold of 2 units whose success came first: stored, answered 202, waiting for an order.
      const waitingSuccess = async (stock: number) => {
        const t = await build({ stock })
        const holdId = await holdOf(t, t.productId, 2)
        const body = { hold_id: holdId, status: 'success', payment_id: 'pay_waiting' }
        expect((await webhook(t, body, 'evt-waiting')).status).toBe(202)
        return { t, holdId, replay: () => webhook(t, body, 'evt-waiting') }
      }

      it('accepts a success naming a hold with 202 (its replay too), creates the order paid, then replays 200 processed', async () => {
        const t = await build({ stock: 5 })
        const holdId = await holdOf(t, t.productId, 2)
        const body = { hold_id: holdId, status: 'success', payment_id: 'pay_early' }

        const early = await webhook(t, body, 'evt-early')
        expect(early.status).toBe(202)
        expect(early.body).toEqual(accepted(holdId))
        expect(isReplay(early)).toBe(false)
        const waiting = await webhook(t, body, 'evt-early')
        expect(waiting.status).toBe(202)
        expect(waiting.body).toEqual(accepted(holdId))
        expect(isReplay(waiting)).toBe(true)
        // Stored, not applied: the units are still only held.
        expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 3, reserved: 2, sold: 0 })

        const order = await t.request('POST', '/api/orders', { body: { hold_id: holdId } })
        expect(order.status).toBe(201)
        expect(order.body).toMatchObject({ hold_id: holdId, status: 'paid', payment_id: 'pay_early', refund_required: false })
        expect(order.body.paid_at).toEqual(expect.any(String))
        expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 3, reserved: 0, sold: 2 })

        const applied = await webhook(t, body, 'evt-early')
        expect(applied.status).toBe(200)
        expect(isReplay(applied)).toBe(true)
        expect(applied.body).toEqual(processed({ hold_id: holdId, order_id: order.body.order_id, order_status: 'paid', outcome: 'paid' }))
        expect(await getOrder(t, order.body.order_id)).toMatchObject({ status: 'paid' })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('stores an early payment sent 20 times concurrently once: 20 × 202, 19 replayed, the order then paid once', async () => {
        const t = await build({ stock: 5 })
        const holdId = await holdOf(t, t.productId, 2)
        const body = { hold_id: holdId, status: 'success' }

        const replies = await Promise.all(times(20, () => webhook(t, body, 'evt-early-burst')))

        expect(countBy(replies, (reply) => reply.status)).toEqual({ 202: 20 })
        expect(replies.filter(isReplay)).toHaveLength(19)
        const order = await orderOf(t, holdId)
        expect(order.status).toBe('paid')
        const applied = await webhook(t, body, 'evt-early-burst')
        expect(applied.body).toEqual(processed({ hold_id: holdId, order_id: order.order_id, order_status: 'paid', outcome: 'paid' }))
        expect(t.events.filter((event) => event.name === 'payment.applied')).toHaveLength(1)
        expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 3, reserved: 0, sold: 2 })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('ends with one paid order, sold once, whichever of a payment and the order for the same hold commits first', async () => {
        const t = await build({ stock: 10 })
        const holdIds = await Promise.all(times(5, () => holdOf(t, t.productId, 2)))

        const races = await Promise.all(
          holdIds.map((holdId, index) =>
            Promise.all([t.request('POST', '/api/orders', { body: { hold_id: holdId } }), webhook(t, { hold_id: holdId, status: 'success' }, `evt-race-${index}`)]),
          ),
        )

        for (const [index, [order, payment]] of races.entries()) {
          expect(order.status, order.text).toBe(201)
          expect([200, 202]).toContain(payment.status)
          // Whichever came first, the key now answers the one order it paid.
          const settled = await webhook(t, { hold_id: holdIds[index], status: 'success' }, `evt-race-${index}`)
          expect(settled.body).toEqual(processed({ hold_id: holdIds[index]!, order_id: order.body.order_id, order_status: 'paid', outcome: 'paid' }))
          expect(await getOrder(t, order.body.order_id)).toMatchObject({ status: 'paid' })
        }
        expect(await stockOf(t, t.productId)).toEqual({ stock: 10, available_stock: 0, reserved: 0, sold: 10 })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('applies early events in arrival order: failed cancels the new order, the later success recovers it', async () => {
        const t = await build({ stock: 5 })
        const holdId = await holdOf(t, t.productId, 2)
        expect((await webhook(t, { hold_id: holdId, status: 'failed' }, 'evt-1-failed')).status).toBe(202)
        expect((await webhook(t, { hold_id: holdId, status: 'success', payment_id: 'pay_retry' }, 'evt-2-success')).status).toBe(202)

        const order = await orderOf(t, holdId)

        expect(order).toMatchObject({ status: 'paid', payment_id: 'pay_retry', refund_required: false })
        const failed = await webhook(t, { hold_id: holdId, status: 'failed' }, 'evt-1-failed')
        expect(failed.body).toEqual(processed({ hold_id: holdId, order_id: order.order_id, order_status: 'cancelled', outcome: 'cancelled' }))
        const success = await webhook(t, { hold_id: holdId, status: 'success', payment_id: 'pay_retry' }, 'evt-2-success')
        expect(success.body).toEqual(processed({ hold_id: holdId, order_id: order.order_id, order_status: 'paid', outcome: 'recovered' }))
        expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 3, reserved: 0, sold: 2 })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('applies early events in arrival order: success pays the new order, the later failure is ignored', async () => {
        const t = await build({ stock: 5 })
        const holdId = await holdOf(t, t.productId, 2)
        expect((await webhook(t, { hold_id: holdId, status: 'success', payment_id: 'pay_ok' }, 'evt-1-success')).status).toBe(202)
        expect((await webhook(t, { hold_id: holdId, status: 'failed' }, 'evt-2-failed')).status).toBe(202)

        const order = await orderOf(t, holdId)

        expect(order).toMatchObject({ status: 'paid', payment_id: 'pay_ok' })
        const success = await webhook(t, { hold_id: holdId, status: 'success', payment_id: 'pay_ok' }, 'evt-1-success')
        expect(success.body).toEqual(processed({ hold_id: holdId, order_id: order.order_id, order_status: 'paid', outcome: 'paid' }))
        const failed = await webhook(t, { hold_id: holdId, status: 'failed' }, 'evt-2-failed')
        expect(failed.body).toEqual(processed({ hold_id: holdId, order_id: order.order_id, order_status: 'paid', outcome: 'ignored' }))
        expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 3, reserved: 0, sold: 2 })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('settles a waiting success when the hold is released: the replay then answers 200 with a recovered paid order', async () => {
        const { t, holdId, replay: replayOf } = await waitingSuccess(5)

        const released = await t.request('DELETE', `/api/holds/${holdId}`)
        expect(released.status).toBe(200)
        expect(released.body.status).toBe('released')

        const replay = await replayOf()
        expectRecovered(replay, holdId)
        expect(isReplay(replay)).toBe(true)
        expect(await getOrder(t, replay.body.order_id)).toMatchObject({ hold_id: holdId, status: 'paid', payment_id: 'pay_waiting', refund_required: false })
        expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 3, reserved: 0, sold: 2 })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('settles a waiting success when the sweeper expires the hold: the replay then answers 200 with a recovered paid order', async () => {
        const { t, holdId, replay: replayOf } = await waitingSuccess(5)

        t.clock.advanceMs(t.config.holdTtlMs + 1)
        expect((await t.sweep()).expiredCount).toBe(1)

        const replay = await replayOf()
        expectRecovered(replay, holdId)
        expect(await getOrder(t, replay.body.order_id)).toMatchObject({ status: 'paid', refund_required: false })
        expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 3, reserved: 0, sold: 2 })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('gives a lapsed hold units to its waiting success before the next buyer: the buyer is refused 409, the payment recovered', async () => {
        const { t, holdId, replay: replayOf } = await waitingSuccess(2)
        t.clock.advanceMs(t.config.holdTtlMs + 1)

        const buyer = await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 2 } })

        expect(buyer.status).toBe(409)
        expect(buyer.body).toMatchObject({ code: 'insufficient_stock', available_stock: 0 })
        const replay = await replayOf()
        expectRecovered(replay, holdId)
        expect(await stockOf(t, t.productId)).toEqual({ stock: 2, available_stock: 0, reserved: 0, sold: 2 })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('answers a replay after the hold expired with 200 processed even before the sweeper has run', async () => {
        // SPEC §4: the hold is expired from expires_at on, whether or not a job has run; the
        // replay answers "what is true now" (§3), so the stored success is a late payment by then.
        const { t, holdId, replay: replayOf } = await waitingSuccess(5)

        t.clock.advanceMs(t.config.holdTtlMs + 1)

        const replay = await replayOf()
        expectRecovered(replay, holdId)
        expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 3, reserved: 0, sold: 2 })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })
    })

    describe('late payments', () => {
      // Two ways a pending order ends before its success arrives; the units stay free either way.
      const endedOrders = [
        {
          title: 'recovers the sale when a success follows a failure and the units are still available',
          end: async (t: TestApp, orderId: string) => expect((await webhook(t, { order_id: orderId, status: 'failed' }, 'evt-failed')).body.outcome).toBe('cancelled'),
        },
        {
          title: 'treats a success for a pending order past ORDER_TTL as a late payment, recovered when units are free',
          end: async (t: TestApp, orderId: string) => {
            t.clock.advanceMs(t.config.orderTtlMs + 1)
            expect(await getOrder(t, orderId)).toMatchObject({ status: 'expired' })
          },
        },
      ]
      for (const ended of endedOrders) {
        it(ended.title, async () => {
          const t = await build({ stock: 5 })
          const { holdId, orderId } = await pendingOrder(t, t.productId, 2)
          await ended.end(t, orderId)

          const late = await webhook(t, { order_id: orderId, status: 'success', payment_id: 'pay_late' }, 'evt-late')

          expectRecovered(late, holdId, orderId)
          expect(await getOrder(t, orderId)).toMatchObject({ status: 'paid', payment_id: 'pay_late', refund_required: false })
          expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 3, reserved: 0, sold: 2 })
          expect(await t.audit()).toMatchObject(cleanAudit)
        })
      }

      it('marks a success after a failure refund_required when the units were sold to someone else meanwhile', async () => {
        const t = await build({ stock: 2 })
        const first = await pendingOrder(t, t.productId, 2)
        expect((await webhook(t, { order_id: first.orderId, status: 'failed' }, 'evt-failed')).body.outcome).toBe('cancelled')
        // Another buyer takes and pays for every unit the cancellation released.
        const other = await pendingOrder(t, t.productId, 2)
        expect((await webhook(t, { order_id: other.orderId, status: 'success' }, 'evt-other')).body.outcome).toBe('paid')

        const late = await webhook(t, { order_id: first.orderId, status: 'success', payment_id: 'pay_late' }, 'evt-late')

        expect(late.status).toBe(200)
        expect(late.body).toEqual(processed({ hold_id: first.holdId, order_id: first.orderId, order_status: 'cancelled', outcome: 'refund_required' }))
        expect(await getOrder(t, first.orderId)).toMatchObject({ status: 'cancelled', paid_at: null, refund_required: true })
        expect(await getOrder(t, other.orderId)).toMatchObject({ status: 'paid', refund_required: false })
        expect(await stockOf(t, t.productId)).toEqual({ stock: 2, available_stock: 0, reserved: 0, sold: 2 })
        expect(t.events.filter((event) => event.name === 'payment.refund_required')).toMatchObject([{ orderId: first.orderId }])
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('marks a success after ORDER_TTL refund_required, the order staying expired, when another buyer took the units', async () => {
        const t = await build({ stock: 3 })
        const { holdId, orderId } = await pendingOrder(t, t.productId, 3)
        t.clock.advanceMs(t.config.orderTtlMs + 1)
        // The lapsed order's units are available again, and another buyer holds them all.
        await holdOf(t, t.productId, 3)

        const late = await webhook(t, { order_id: orderId, status: 'success', payment_id: 'pay_slow' }, 'evt-slow')

        expect(late.status).toBe(200)
        expect(late.body).toEqual(processed({ hold_id: holdId, order_id: orderId, order_status: 'expired', outcome: 'refund_required' }))
        // The order names the payment to refund; a second refused one leaves it named.
        expect(await getOrder(t, orderId)).toMatchObject({ status: 'expired', paid_at: null, refund_required: true, payment_id: 'pay_slow' })
        const again = await webhook(t, { order_id: orderId, status: 'success', payment_id: 'pay_slower' }, 'evt-slower')
        expect(again.body).toMatchObject({ outcome: 'refund_required' })
        expect(await getOrder(t, orderId)).toMatchObject({ refund_required: true, payment_id: 'pay_slow' })
        expect(await stockOf(t, t.productId)).toEqual({ stock: 3, available_stock: 0, reserved: 3, sold: 0 })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('ignores a failed payment for a pending order past ORDER_TTL and releases its units', async () => {
        const t = await build({ stock: 5 })
        const { holdId, orderId } = await pendingOrder(t, t.productId, 2)
        t.clock.advanceMs(t.config.orderTtlMs + 1)

        const late = await webhook(t, { order_id: orderId, status: 'failed' }, 'evt-failed-late')

        expect(late.body).toEqual(processed({ hold_id: holdId, order_id: orderId, order_status: 'expired', outcome: 'ignored' }))
        expect(await getOrder(t, orderId)).toMatchObject({ status: 'expired', refund_required: false })
        expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 5, reserved: 0, sold: 0 })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('creates a recovered paid order for a success naming a released hold', async () => {
        const t = await build({ stock: 5 })
        const holdId = await holdOf(t, t.productId, 2)
        expect((await t.request('DELETE', `/api/holds/${holdId}`)).status).toBe(200)

        const late = await webhook(t, { hold_id: holdId, status: 'success', payment_id: 'pay_after_release' }, 'evt-late')

        expectRecovered(late, holdId)
        expect(await getOrder(t, late.body.order_id)).toMatchObject({ hold_id: holdId, qty: 2, amount: '199.98', status: 'paid', refund_required: false })
        expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 3, reserved: 0, sold: 2 })
        // I4: the hold made its one order; it cannot make another.
        const again = await t.request('POST', '/api/orders', { body: { hold_id: holdId } })
        expect(again.status).toBe(409)
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('creates a recovered paid order for a success naming a hold past expires_at that no sweeper has expired yet', async () => {
        const t = await build({ stock: 5 })
        const holdId = await holdOf(t, t.productId, 2)
        t.clock.advanceMs(t.config.holdTtlMs + 1)

        const late = await webhook(t, { hold_id: holdId, status: 'success' }, 'evt-late')

        expectRecovered(late, holdId)
        expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 3, reserved: 0, sold: 2 })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      const endings = [
        {
          orderStatus: 'expired',
          hold: 'an expired hold',
          body: { status: 'success', payment_id: 'pay_too_late' },
          end: async (t: TestApp) => t.clock.advanceMs(t.config.holdTtlMs + 1),
        },
        {
          orderStatus: 'cancelled',
          hold: 'a released hold',
          body: { status: 'success' },
          end: async (t: TestApp, holdId: string) => expect((await t.request('DELETE', `/api/holds/${holdId}`)).status).toBe(200),
        },
      ]
      for (const ending of endings) {
        it(`creates a${ending.orderStatus === 'expired' ? 'n' : ''} ${ending.orderStatus} order marked refund_required for a success naming ${ending.hold} whose units another buyer took`, async () => {
          const t = await build({ stock: 2 })
          const holdId = await holdOf(t, t.productId, 2)
          await ending.end(t, holdId)
          await holdOf(t, t.productId, 2)

          const late = await webhook(t, { hold_id: holdId, ...ending.body }, 'evt-late')

          expect(late.status).toBe(200)
          expect(late.body).toEqual(processed({ hold_id: holdId, order_id: expect.any(String), order_status: ending.orderStatus, outcome: 'refund_required' }))
          expect(await getOrder(t, late.body.order_id)).toMatchObject({ hold_id: holdId, status: ending.orderStatus, paid_at: null, refund_required: true })
          expect(await stockOf(t, t.productId)).toEqual({ stock: 2, available_stock: 0, reserved: 2, sold: 0 })
          expect(await t.audit()).toMatchObject(cleanAudit)
        })
      }

      it('processes a failed payment naming an ended hold with no order (outcome ignored) and changes no stock', async () => {
        const t = await build({ stock: 5 })
        const holdId = await holdOf(t, t.productId, 2)
        expect((await t.request('DELETE', `/api/holds/${holdId}`)).status).toBe(200)

        const late = await webhook(t, { hold_id: holdId, status: 'failed' }, 'evt-late-failed')

        expect(late.status).toBe(200)
        expect(late.body).toEqual(processed({ hold_id: holdId, order_id: null, order_status: null, outcome: 'ignored' }))
        const replay = await webhook(t, { hold_id: holdId, status: 'failed' }, 'evt-late-failed')
        expect(isReplay(replay)).toBe(true)
        expect(replay.text).toBe(late.text)
        expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 5, reserved: 0, sold: 0 })
        const order = await t.request('POST', '/api/orders', { body: { hold_id: holdId } })
        expect(order.status).toBe(409)
        expect(order.body.code).toBe('hold_released')
        expect(await t.audit()).toMatchObject(cleanAudit)
      })
    })

    describe('signature', () => {
      it('refuses a wrong secret, a tampered body, a missing header and timestamps over 300 s old or ahead with 401, changing nothing', async () => {
        const t = await build({ stock: 5 })
        const { holdId, orderId } = await pendingOrder(t, t.productId, 1)
        const body = { order_id: orderId, status: 'success', payment_id: 'pay_sig' }
        const key = 'evt-sig'
        const nowS = serverTimestampS(t)
        const tampered = signedWebhook(testWebhookSecret, body, { key, timestampS: nowS })
        tampered.rawBody = JSON.stringify({ ...body, status: 'failed' })

        const refusals = {
          'wrong secret': await webhook(t, body, key, { secret: 'not-the-secret' }),
          'tampered body': await t.request('POST', '/api/payments/webhook', tampered),
          'missing header': await t.request('POST', '/api/payments/webhook', { body, headers: { 'idempotency-key': key } }),
          'stale timestamp': await webhook(t, body, key, { timestampS: nowS - 301 }),
          'future timestamp': await webhook(t, body, key, { timestampS: nowS + 301 }),
        }

        for (const [name, reply] of Object.entries(refusals)) {
          expect(reply.status, name).toBe(401)
          expect(reply.body.code, name).toBe('invalid_signature')
          expect(reply.headers.get('content-type'), name).toContain('application/problem+json')
        }
        expect(await getOrder(t, orderId)).toMatchObject({ status: 'pending' })
        expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 4, reserved: 1, sold: 0 })
        // The refused calls did not use up the key: the first valid one is applied afresh.
        const valid = await webhook(t, body, key)
        expect(valid.status).toBe(200)
        expect(isReplay(valid)).toBe(false)
        expect(valid.body).toEqual(processed({ hold_id: holdId, order_id: orderId, order_status: 'paid', outcome: 'paid' }))
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('measures the 300 s tolerance against the server clock: wall-clock time is refused once the clock moved, 299 s either way is accepted', async () => {
        const t = await build({ stock: 5 })
        const late = await pendingOrder(t, t.productId, 1)
        const early = await pendingOrder(t, t.productId, 1)
        t.clock.advanceMs(60 * 60 * 1000)

        const wallClock = await webhook(t, { order_id: late.orderId, status: 'success' }, 'evt-wall', { timestampS: Math.floor(Date.now() / 1000) })
        expect(wallClock.status).toBe(401)
        expect(wallClock.body.code).toBe('invalid_signature')

        // An hour on, both orders are past ORDER_TTL: these are late payments, recovered.
        const behind = await webhook(t, { order_id: late.orderId, status: 'success' }, 'evt-behind', { timestampS: serverTimestampS(t) - 299 })
        expect(behind.status).toBe(200)
        expect(behind.body.outcome).toBe('recovered')
        const ahead = await webhook(t, { order_id: early.orderId, status: 'success' }, 'evt-ahead', { timestampS: serverTimestampS(t) + 299 })
        expect(ahead.status).toBe(200)
        expect(ahead.body.outcome).toBe('recovered')
        expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 3, reserved: 0, sold: 2 })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('accepts a timestamp exactly 300 s either way, whatever the fraction of the current second, and refuses 301 s', async () => {
        const t = await build({ stock: 5 })
        const orders = [await pendingOrder(t, t.productId, 1), await pendingOrder(t, t.productId, 1)]
        // The server's clock 999 ms into its second: measured in milliseconds, 300 s in the past
        // was 300.999 s away and refused, while 300 s ahead was accepted.
        t.clock.advanceMs(999 - (t.clock.now().getTime() % 1000))
        const nowS = serverTimestampS(t)
        for (const offsetS of [-301, 301]) {
          const refused = await webhook(t, { order_id: orders[0]!.orderId, status: 'success' }, `evt-off-${offsetS}`, { timestampS: nowS + offsetS })
          expect(refused.status).toBe(401)
        }
        for (const [index, offsetS] of [-300, 300].entries()) {
          const accepted = await webhook(t, { order_id: orders[index]!.orderId, status: 'success' }, `evt-edge-${offsetS}`, { timestampS: nowS + offsetS })
          expect([offsetS, accepted.status]).toEqual([offsetS, 200])
        }
        expect(await t.audit()).toMatchObject(cleanAudit)
      })
    })

    describe('amount and refusals', () => {
      it('accepts the amount as a JSON number or a decimal string equal to the order amount', async () => {
        const t = await build({ stock: 5 })
        const one = await pendingOrder(t, t.productId, 1)
        const two = await pendingOrder(t, t.productId, 2)
        expect(await getOrder(t, two.orderId)).toMatchObject({ amount: '199.98', currency: 'USD' })

        const asNumber = await webhook(t, { order_id: one.orderId, status: 'success', amount: 99.99 }, 'evt-number')
        const asString = await webhook(t, { order_id: two.orderId, status: 'success', amount: '199.98' }, 'evt-string')

        expect(asNumber.status, asNumber.text).toBe(200)
        expect(asNumber.body.outcome).toBe('paid')
        expect(asString.status, asString.text).toBe(200)
        expect(asString.body.outcome).toBe('paid')
        expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 2, reserved: 0, sold: 3 })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('refuses a differing amount with 422 amount_mismatch and stores nothing: the same key with the right amount is processed afresh', async () => {
        const t = await build({ stock: 5 })
        const { holdId, orderId } = await pendingOrder(t, t.productId, 1)

        for (const amount of ['99.98', '100', 100, 0]) {
          const mismatch = await webhook(t, { order_id: orderId, status: 'success', amount }, 'evt-amount')
          expect(mismatch.status, String(amount)).toBe(422)
          expect(mismatch.body.code).toBe('amount_mismatch')
        }
        expect(await getOrder(t, orderId)).toMatchObject({ status: 'pending' })
        expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 4, reserved: 1, sold: 0 })

        const right = await webhook(t, { order_id: orderId, status: 'success', amount: '99.99' }, 'evt-amount')
        expect(right.status).toBe(200)
        expect(isReplay(right)).toBe(false)
        expect(right.body).toEqual(processed({ hold_id: holdId, order_id: orderId, order_status: 'paid', outcome: 'paid' }))
        expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 4, reserved: 0, sold: 1 })
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('refuses an amount with more decimals than the currency has, or not a number, with 422 validation_failed naming amount in invalid_fields', async () => {
        const t = await build({ stock: 5 })
        const { orderId } = await pendingOrder(t, t.productId, 1)
        for (const amount of ['99.990', '1e2', 'ten']) {
          const refused = await webhook(t, { order_id: orderId, status: 'success', amount }, 'evt-amount-format')
          expect([amount, refused.status, refused.body.code, refused.body.invalid_fields]).toEqual([amount, 422, 'validation_failed', ['amount']])
        }
        expect(await getOrder(t, orderId)).toMatchObject({ status: 'pending' })
      })

      it('refuses a differing amount on a payment before the order and stores nothing: the order is created pending', async () => {
        const t = await build({ stock: 5 })
        const holdId = await holdOf(t, t.productId, 2)

        const mismatch = await webhook(t, { hold_id: holdId, status: 'success', amount: '99.99' }, 'evt-early-amount')
        expect(mismatch.status).toBe(422)
        expect(mismatch.body.code).toBe('amount_mismatch')

        const order = await orderOf(t, holdId)
        expect(order.status).toBe('pending')
        const right = await webhook(t, { hold_id: holdId, status: 'success', amount: '199.98' }, 'evt-early-amount')
        expect(right.status).toBe(200)
        expect(right.body).toEqual(processed({ hold_id: holdId, order_id: order.order_id, order_status: 'paid', outcome: 'paid' }))
        expect(await t.audit()).toMatchObject(cleanAudit)
      })

      it('answers 404 for an unknown order_id or hold_id without storing the key, and 422 when no key is given', async () => {
        const t = await build({ stock: 5 })
        const { holdId, orderId } = await pendingOrder(t, t.productId, 1)

        const unknownOrder = await webhook(t, { order_id: 'ord_does_not_exist', status: 'success' }, 'evt-unknown')
        expect(unknownOrder.status).toBe(404)
        expect(unknownOrder.body.code).toBe('order_not_found')
        const unknownHold = await webhook(t, { hold_id: 'hold_does_not_exist', status: 'success' }, 'evt-unknown')
        expect(unknownHold.status).toBe(404)
        expect(unknownHold.body.code).toBe('hold_not_found')
        const noKey = await t.request('POST', '/api/payments/webhook', signedWebhook(testWebhookSecret, { order_id: orderId, status: 'success' }, { timestampS: serverTimestampS(t) }))
        expect(noKey.status).toBe(422)
        expect(noKey.body.code).toBe('idempotency_key_required')
        expect(await getOrder(t, orderId)).toMatchObject({ status: 'pending' })

        // Neither 404 stored the key, so it is free for the provider's corrected retry.
        const retry = await webhook(t, { order_id: orderId, status: 'success' }, 'evt-unknown')
        expect(retry.status).toBe(200)
        expect(isReplay(retry)).toBe(false)
        expect(retry.body).toEqual(processed({ hold_id: holdId, order_id: orderId, order_status: 'paid', outcome: 'paid' }))
        expect(await t.audit()).toMatchObject(cleanAudit)
      })
    })
  })
}
