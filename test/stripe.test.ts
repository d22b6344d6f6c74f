// Proves POST /api/payments/stripe keeps every rule of the generic webhook (duplicates, early,
// late, amount) for Stripe's own events, on every engine: events are signed with the stripe
// package's test-header helper against the server's clock, sent over real HTTP, and judged by
// the answers, the order and product as the API then reports them, and a clean audit.
import Stripe from 'stripe'
import { describe, expect, it } from 'vitest'
import { buildTestApp, type TestApp, type TestAppOptions } from './helpers/app.js'
import { accepted, cleanAudit, getOrder, holdOf, isReplay, orderOf, pendingOrder, processed, serverTimestampS, stockOf } from './helpers/checkout.js'
import { testEngines } from './helpers/engines.js'
import { countBy, times, type Reply } from './helpers/http.js'

const stripeSecret = 'whsec_test_flash_sale'
const priceMinor = 9_999

interface IntentFields {
  orderId?: string
  holdId?: string
  amountMinor?: number
  amountReceivedMinor?: number
  currency?: string
  intentId?: string
}

// A Stripe event as Stripe sends it (the fields the service reads, and the envelope around them).
function stripeEvent(id: string, type: string, fields: IntentFields) {
  const metadata: Record<string, string> = {}
  if (fields.orderId) metadata.order_id = fields.orderId
  if (fields.holdId) metadata.hold_id = fields.holdId
  const amount = fields.amountMinor ?? priceMinor
  return {
    id,
    object: 'event',
    api_version: '2025-10-29.clover',
    created: Math.floor(Date.now() / 1000),
    livemode: false,
    pending_webhooks: 1,
    request: { id: null, idempotency_key: null },
    type,
    data: {
      object: {
        id: fields.intentId ?? `pi_${id}`,
        object: 'payment_intent',
        amount,
        amount_received: fields.amountReceivedMinor ?? (type === 'payment_intent.succeeded' ? amount : 0),
        currency: fields.currency ?? 'usd',
        status: type === 'payment_intent.succeeded' ? 'succeeded' : 'requires_payment_method',
        metadata,
      },
    },
  }
}

function sendStripe(t: TestApp, event: unknown, options: { secret?: string; timestampS?: number; header?: string | null } = {}): Promise<Reply> {
  const payload = JSON.stringify(event)
  const header =
    options.header === undefined
      ? Stripe.webhooks.generateTestHeaderString({ payload, secret: options.secret ?? stripeSecret, timestamp: options.timestampS ?? serverTimestampS(t) })
      : options.header
  const headers: Record<string, string> = { 'content-type': 'application/json' }
  if (header !== null) headers['stripe-signature'] = header
  return t.request('POST', '/api/payments/stripe', { rawBody: payload, headers })
}

const succeeded = (id: string, fields: IntentFields) => stripeEvent(id, 'payment_intent.succeeded', fields)
const failed = (id: string, fields: IntentFields) => stripeEvent(id, 'payment_intent.payment_failed', fields)

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: Stripe webhook`, () => {
    const build = (options: TestAppOptions = {}) => buildTestApp(engine.name, { ...options, env: { STRIPE_WEBHOOK_SECRET: stripeSecret, ...options.env } })

    it('is 404 while STRIPE_WEBHOOK_SECRET is unset', async () => {
      const t = await buildTestApp(engine.name, { stock: 1 })
      const reply = await sendStripe(t, succeeded('evt_off', { orderId: 'ord_x' }))
      expect(reply.status).toBe(404)
      expect(reply.body.code).toBe('not_found')
    })

    it('refuses a missing, wrong, stale or future signature with 401 invalid_signature and changes nothing', async () => {
      const t = await build({ stock: 5 })
      const { orderId } = await pendingOrder(t, t.productId, 1)
      const event = succeeded('evt_sig', { orderId })
      // 999 ms into the server's second: the tolerance is whole seconds either way.
      t.clock.advanceMs(999 - (t.clock.now().getTime() % 1000))
      const nowS = serverTimestampS(t)
      const refused = [
        await sendStripe(t, event, { header: null }),
        await sendStripe(t, event, { header: 'nonsense' }),
        await sendStripe(t, event, { secret: 'whsec_someone_else' }),
        await sendStripe(t, event, { timestampS: nowS - 301 }),
        await sendStripe(t, event, { timestampS: nowS + 301 }),
      ]
      for (const reply of refused) {
        expect(reply.status, reply.text).toBe(401)
        expect(reply.body.code).toBe('invalid_signature')
      }
      // The signature covers the exact bytes: the same header on another body is refused.
      const header = Stripe.webhooks.generateTestHeaderString({ payload: JSON.stringify(event), secret: stripeSecret, timestamp: nowS })
      const tampered = await t.request('POST', '/api/payments/stripe', {
        rawBody: JSON.stringify(succeeded('evt_sig', { orderId, amountMinor: 1 })),
        headers: { 'content-type': 'application/json', 'stripe-signature': header },
      })
      expect(tampered.status).toBe(401)
      expect(await getOrder(t, orderId)).toMatchObject({ status: 'pending' })
      // Within the tolerance, either side of the server's clock, it is accepted: exactly 300 s
      // ahead, then (a replay) exactly 300 s behind.
      expect((await sendStripe(t, event, { timestampS: nowS + 300 })).status).toBe(200)
      expect(await getOrder(t, orderId)).toMatchObject({ status: 'paid' })
      expect((await sendStripe(t, event, { timestampS: nowS - 300 })).status).toBe(200)
      expect(await t.audit()).toMatchObject(cleanAudit)
    })

    it('pays a pending order on payment_intent.succeeded, with the PaymentIntent as payment_id', async () => {
      const t = await build({ stock: 5 })
      const { holdId, orderId } = await pendingOrder(t, t.productId, 2)
      const reply = await sendStripe(t, succeeded('evt_paid', { orderId, amountMinor: 2 * priceMinor, intentId: 'pi_123' }))
      expect(reply.status, reply.text).toBe(200)
      expect(reply.body).toEqual(processed({ hold_id: holdId, order_id: orderId, order_status: 'paid', outcome: 'paid' }))
      expect(await getOrder(t, orderId)).toMatchObject({ status: 'paid', payment_id: 'pi_123', refund_required: false })
      expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 3, reserved: 0, sold: 2 })
      expect(await t.audit()).toMatchObject(cleanAudit)
    })

    it('keeps a PaymentIntent id only if it is visible ASCII: one with a NUL or a space is paid under the event id, never a 500', async () => {
      const t = await build({ stock: 5 })
      for (const [index, intentId] of ['pi_\u0000nul', 'pi with spaces', `pi_${'x'.repeat(300)}`].entries()) {
        const { orderId } = await pendingOrder(t, t.productId, 1)
        const reply = await sendStripe(t, succeeded(`evt_odd_${index}`, { orderId, amountMinor: priceMinor, intentId }))
        expect(reply.status, reply.text).toBe(200)
        expect(await getOrder(t, orderId)).toMatchObject({ status: 'paid', payment_id: `evt_odd_${index}` })
      }
      expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 2, reserved: 0, sold: 3 })
      expect(await t.audit()).toMatchObject(cleanAudit)
    })

    it('cancels a pending order on payment_intent.payment_failed and frees its units at once', async () => {
      const t = await build({ stock: 5 })
      const { holdId, orderId } = await pendingOrder(t, t.productId, 2)
      const reply = await sendStripe(t, failed('evt_failed', { orderId, amountMinor: 2 * priceMinor }))
      expect(reply.status, reply.text).toBe(200)
      expect(reply.body).toEqual(processed({ hold_id: holdId, order_id: orderId, order_status: 'cancelled', outcome: 'cancelled' }))
      expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 5, reserved: 0, sold: 0 })
      expect(await t.audit()).toMatchObject(cleanAudit)
    })

    it('applies one event sent 20 times concurrently once: one sale, identical answers, 19 replayed; another event for the paid order is a duplicate', async () => {
      const t = await build({ stock: 5 })
      const { holdId, orderId } = await pendingOrder(t, t.productId, 1)
      const event = succeeded('evt_burst', { orderId })
      const replies = await Promise.all(times(20, () => sendStripe(t, event)))
      expect(countBy(replies, (reply) => reply.status)).toEqual({ 200: 20 })
      expect(new Set(replies.map((reply) => reply.text)).size).toBe(1)
      expect(replies.filter(isReplay)).toHaveLength(19)
      expect(replies[0]!.body).toEqual(processed({ hold_id: holdId, order_id: orderId, order_status: 'paid', outcome: 'paid' }))

      const other = await sendStripe(t, succeeded('evt_other', { orderId, intentId: 'pi_second' }))
      expect(other.body).toEqual(processed({ hold_id: holdId, order_id: orderId, order_status: 'paid', outcome: 'duplicate' }))
      expect(isReplay(other)).toBe(false)
      expect(await getOrder(t, orderId)).toMatchObject({ status: 'paid', payment_id: `pi_evt_burst` })
      expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 4, reserved: 0, sold: 1 })
      expect(await t.audit()).toMatchObject(cleanAudit)
    })

    it('refuses an amount or currency that differs from the order with 422 amount_mismatch, changing nothing, and a retry with the right amount is processed', async () => {
      const t = await build({ stock: 5 })
      const { orderId } = await pendingOrder(t, t.productId, 1)
      const short = await sendStripe(t, succeeded('evt_amount', { orderId, amountMinor: priceMinor, amountReceivedMinor: priceMinor - 1 }))
      expect(short.status).toBe(422)
      expect(short.body.code).toBe('amount_mismatch')
      const euros = await sendStripe(t, succeeded('evt_currency', { orderId, currency: 'eur' }))
      expect(euros.status).toBe(422)
      expect(euros.body.code).toBe('amount_mismatch')
      expect(await getOrder(t, orderId)).toMatchObject({ status: 'pending' })
      expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 4, reserved: 1, sold: 0 })
      // A refusal does not use up the event id: Stripe's retry of a corrected event is processed.
      const retried = await sendStripe(t, succeeded('evt_amount', { orderId }))
      expect(retried.body.order_status).toBe('paid')
      expect(await t.audit()).toMatchObject(cleanAudit)
    })

    it('refuses a PaymentIntent naming an order and another hold with 422 naming hold_id, as the generic webhook does; naming the order and its own hold pays it', async () => {
      const t = await build({ stock: 5 })
      const { holdId, orderId } = await pendingOrder(t, t.productId, 1)
      const otherHoldId = await holdOf(t, t.productId, 1)
      for (const [eventId, namedHoldId] of [
        ['evt_other_hold', otherHoldId],
        ['evt_unknown_hold', 'hold_not_there'],
      ] as const) {
        const mismatched = await sendStripe(t, succeeded(eventId, { orderId, holdId: namedHoldId }))
        expect(mismatched.status, mismatched.text).toBe(422)
        expect(mismatched.body).toMatchObject({ code: 'validation_failed', invalid_fields: ['hold_id'] })
      }
      expect(await getOrder(t, orderId)).toMatchObject({ status: 'pending' })
      const agreeing = await sendStripe(t, succeeded('evt_own_hold', { orderId, holdId }))
      expect(agreeing.status, agreeing.text).toBe(200)
      expect(agreeing.body.order_status).toBe('paid')
      expect(await t.audit()).toMatchObject(cleanAudit)
    })

    it('stores a success naming a hold before its order (202), applies it when the order is made, then replays 200', async () => {
      const t = await build({ stock: 5 })
      const holdId = await holdOf(t, t.productId, 2)
      const event = succeeded('evt_early', { holdId, amountMinor: 2 * priceMinor, intentId: 'pi_early' })
      const early = await sendStripe(t, event)
      expect(early.status).toBe(202)
      expect(early.body).toEqual(accepted(holdId))
      expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 3, reserved: 2, sold: 0 })

      const order = await orderOf(t, holdId)
      expect(order).toMatchObject({ status: 'paid', payment_id: 'pi_early' })
      const applied = await sendStripe(t, event)
      expect(applied.status).toBe(200)
      expect(isReplay(applied)).toBe(true)
      expect(applied.body).toEqual(processed({ hold_id: holdId, order_id: order.order_id, order_status: 'paid', outcome: 'paid' }))
      expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 3, reserved: 0, sold: 2 })
      expect(await t.audit()).toMatchObject(cleanAudit)
    })

    it('recovers a late success after ORDER_TTL when units are free, and flags refund_required when they are not', async () => {
      const t = await build({ stock: 3 })
      const recovered = await pendingOrder(t, t.productId, 1)
      const lost = await pendingOrder(t, t.productId, 2)
      t.clock.advanceMs(t.config.orderTtlMs + 1)
      // Both orders lapsed; another buyer takes two of the three units again.
      await holdOf(t, t.productId, 2)

      const late = await sendStripe(t, succeeded('evt_late_ok', { orderId: recovered.orderId }))
      expect(late.body).toEqual(processed({ hold_id: recovered.holdId, order_id: recovered.orderId, order_status: 'paid', outcome: 'recovered' }))
      const refused = await sendStripe(t, succeeded('evt_late_lost', { orderId: lost.orderId, amountMinor: 2 * priceMinor }))
      expect(refused.body).toEqual(processed({ hold_id: lost.holdId, order_id: lost.orderId, order_status: 'expired', outcome: 'refund_required' }))
      expect(await getOrder(t, lost.orderId)).toMatchObject({ status: 'expired', refund_required: true })
      expect(await stockOf(t, t.productId)).toEqual({ stock: 3, available_stock: 0, reserved: 2, sold: 1 })
      expect(t.events.filter((event) => event.name === 'payment.refund_required')).toMatchObject([{ orderId: lost.orderId }])
      expect(await t.audit()).toMatchObject(cleanAudit)
    })

    it('answers 200 ignored to other event types and to PaymentIntents naming no order or hold, the same again on a retry', async () => {
      const t = await build({ stock: 5 })
      const { orderId } = await pendingOrder(t, t.productId, 1)
      const charge = stripeEvent('evt_charge', 'charge.succeeded', { orderId })
      const first = await sendStripe(t, charge)
      expect(first.status).toBe(200)
      expect(first.body).toMatchObject({ status: 'ignored' })
      const again = await sendStripe(t, charge)
      expect(again.status).toBe(200)
      expect(again.body).toMatchObject({ status: 'ignored' })
      const anonymous = await sendStripe(t, succeeded('evt_anonymous', {}))
      expect(anonymous.status).toBe(200)
      expect(anonymous.body).toMatchObject({ status: 'ignored' })
      // Each one is recorded: a payment.ignored line (and counter) naming the event.
      expect(t.events.filter((event) => event.name === 'payment.ignored').map((event) => event.key)).toEqual(['evt_charge', 'evt_charge', 'evt_anonymous'])
      expect(await getOrder(t, orderId)).toMatchObject({ status: 'pending' })
      expect(await stockOf(t, t.productId)).toEqual({ stock: 5, available_stock: 4, reserved: 1, sold: 0 })
    })

    it('answers 404 for an order or hold that does not exist, without storing the event, so a retry is processed afresh', async () => {
      const t = await build({ stock: 5 })
      const unknownOrder = await sendStripe(t, succeeded('evt_unknown', { orderId: 'ord_doesnotexist000000000000' }))
      expect(unknownOrder.status).toBe(404)
      expect(unknownOrder.body.code).toBe('order_not_found')
      const unknownHold = await sendStripe(t, succeeded('evt_unknown_hold', { holdId: 'hold_doesnotexist00000000000' }))
      expect(unknownHold.status).toBe(404)
      expect(unknownHold.body.code).toBe('hold_not_found')
      // The same event id, now naming a real order, is processed: nothing was stored.
      const { orderId } = await pendingOrder(t, t.productId, 1)
      const retried = await sendStripe(t, succeeded('evt_unknown', { orderId }))
      expect(retried.status).toBe(200)
      expect(retried.body.order_status).toBe('paid')
      expect(isReplay(retried)).toBe(false)
      expect(await t.audit()).toMatchObject(cleanAudit)
    })

    it('refuses a body that is not JSON with 400 and an event id that is not a usable key with 422', async () => {
      const t = await build({ stock: 1 })
      const payload = '{"id": "evt_'
      const header = Stripe.webhooks.generateTestHeaderString({ payload, secret: stripeSecret, timestamp: serverTimestampS(t) })
      const malformed = await t.request('POST', '/api/payments/stripe', { rawBody: payload, headers: { 'content-type': 'application/json', 'stripe-signature': header } })
      expect(malformed.status).toBe(400)
      expect(malformed.body.code).toBe('malformed_json')
      const badId = await sendStripe(t, succeeded('evt with spaces', { orderId: 'ord_x' }))
      expect(badId.status).toBe(422)
      expect(badId.body.code).toBe('validation_failed')
    })

    it('refuses a signed event without a PaymentIntent, with an amount that is not whole minor units, or a success with no amount, with 422: never a 500, never paid unchecked', async () => {
      const t = await build({ stock: 5 })
      const { orderId } = await pendingOrder(t, t.productId, 1)
      const withoutObject = [
        null,
        { id: 'evt_no_data', type: 'payment_intent.succeeded' },
        { id: 'evt_data_empty', type: 'payment_intent.succeeded', data: {} },
        { id: 'evt_data_null', type: 'payment_intent.succeeded', data: null },
        { id: 'evt_object_null', type: 'payment_intent.payment_failed', data: { object: null } },
      ]
      for (const event of withoutObject) {
        const reply = await sendStripe(t, event)
        expect(reply.status, `${JSON.stringify(event)}: ${reply.text}`).toBe(422)
        expect(reply.body.code).toBe('validation_failed')
      }
      const oddAmounts: Array<Record<string, unknown>> = [
        { amount_received: priceMinor + 0.5 },
        { amount_received: 'x' },
        { amount_received: 1e300 },
        { amount_received: -1 },
        { amount: true, amount_received: null },
        { amount: [priceMinor] },
        // A success stating no amount at all.
        { amount: null, amount_received: null },
        { amount: undefined, amount_received: undefined },
      ]
      for (const [index, fields] of oddAmounts.entries()) {
        const event = succeeded(`evt_odd_amount_${index}`, { orderId })
        Object.assign(event.data.object, fields)
        const reply = await sendStripe(t, event)
        expect(reply.status, `${JSON.stringify(fields)}: ${reply.text}`).toBe(422)
        expect(reply.body.code).toBe('validation_failed')
      }
      // Nothing of that was applied: the order is still pending, and the right amount pays it.
      expect(await getOrder(t, orderId)).toMatchObject({ status: 'pending' })
      const right = await sendStripe(t, succeeded('evt_right_amount', { orderId, amountMinor: priceMinor }))
      expect(right.body).toMatchObject({ order_status: 'paid', outcome: 'paid' })
      expect(await t.audit()).toMatchObject(cleanAudit)
    })
  })
}
