// The payment webhook: applied at most once per idempotency key (I4), in any order, before or
// after the order exists. The payment_events table is the key store: its unique key on the
// idempotency key is what makes a concurrent duplicate a replay and never a second effect.
import { assert } from './assert.js'
import { ProductBatches, type QueueLimits } from './batcher.js'
import type { Clock } from './clock.js'
import { DomainError } from './errors.js'
import { emitAll, type DomainEvent, type Observer } from './events.js'
import { assertSameFingerprint, fingerprintOf } from './idempotency.js'
import { isResourceId } from './ids.js'
import { withLockedProduct } from './locked-product.js'
import { parseAmountMinor } from './money.js'
import { applyPaymentToHold, expireHolds, type PaymentAnswerBody, type SettleContext } from './settle.js'
import type { PaymentEvent, PaymentStatus, Store } from './store.js'

export type { PaymentAnswerBody } from './settle.js'

export interface PaymentSettings extends QueueLimits {
  webhookBatchMax: number
}

export interface PaymentRequest {
  idempotencyKey: string
  orderId: string | null
  holdId: string | null
  status: PaymentStatus
  paymentId: string | null
  amount: string | number | null
}

// body.state says what happened: `accepted` (stored until its order exists) or `processed`.
export interface PaymentAnswer {
  body: PaymentAnswerBody
  replayed: boolean
}

// Each outcome carries its own events, emitted in its request's context.
type Outcome = { ok: true; answer: PaymentAnswer; events: DomainEvent[] } | { ok: false; error: DomainError } | { ok: 'replay'; event: PaymentEvent }

interface Waiter {
  request: PaymentRequest
  fingerprint: string
  resolve: (outcome: Outcome) => void
  reject: (error: unknown) => void
}

export class Payments {
  private readonly batches: ProductBatches<Waiter>

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly observer: Observer,
    private readonly settings: PaymentSettings,
  ) {
    this.batches = new ProductBatches(settings.webhookBatchMax, settings, 'payments.receive', (productId, batch) => this.serveBatch(productId, batch))
  }

  async receive(request: PaymentRequest): Promise<PaymentAnswer> {
    const fingerprint = fingerprintOf([
      'payments',
      request.orderId,
      request.orderId === null ? request.holdId : null,
      request.status,
      request.paymentId,
      request.amount === null ? null : String(request.amount),
    ])
    const stored = await this.store.getPaymentEvent(request.idempotencyKey)
    if (stored) {
      assertSameFingerprint(stored.fingerprint, fingerprint)
      // A replay answers what is true now: a payment still waiting on a hold that has lapsed
      // is settled first (as a late payment), even if no sweeper has reached the hold yet.
      const settled = stored.state === 'waiting' && stored.holdId !== null ? await this.settleLapsedHold(stored.holdId) : false
      const current = settled ? await this.store.getPaymentEvent(request.idempotencyKey) : stored
      assert(current !== undefined, 'payment events are never deleted')
      return this.replay(current, fingerprint)
    }

    const productId = await this.productOf(request)
    const outcome = await new Promise<Outcome>((resolve, reject) => this.batches.add(productId, { request, fingerprint, resolve, reject }))
    if (outcome.ok === 'replay') return this.replay(outcome.event, fingerprint)
    if (outcome.ok === false) throw outcome.error
    emitAll(this.observer, outcome.events)
    return outcome.answer
  }

  // Resolves when every queued webhook has been answered (graceful shutdown).
  async drain(): Promise<void> {
    await this.batches.drain()
  }

  // One transaction for every webhook of this product that queued meanwhile: one lock and one
  // commit for all, each webhook then handled in arrival order exactly as it would be alone
  // (a duplicate key later in the batch sees the first one's row and replays it).
  private async serveBatch(productId: number, batch: Waiter[]): Promise<void> {
    const now = this.clock.now()
    let outcomes: Outcome[]
    try {
      outcomes = await withLockedProduct(this.store, this.observer, { label: 'payments.receive', productId, now }, async (ctx) => {
        const results: Outcome[] = []
        for (const waiter of batch) {
          try {
            // Each webhook's events are its own, emitted in its request's context.
            results.push(await this.receiveIn({ ...ctx, events: [] }, waiter.request, waiter.fingerprint))
          } catch (error) {
            // Refusals (a bad amount) are decided before the webhook writes anything.
            if (!(error instanceof DomainError)) throw error
            results.push({ ok: false, error })
          }
        }
        ctx.events.push({ name: 'payment.batch', productId, size: batch.length })
        return results
      })
    } catch (error) {
      // The batch did not commit: every webhook in it fails alike and none was answered yet.
      for (const waiter of batch) waiter.reject(error)
      return
    }
    for (const [index, waiter] of batch.entries()) waiter.resolve(outcomes[index]!)
  }

  private async receiveIn(ctx: SettleContext, request: PaymentRequest, fingerprint: string): Promise<Outcome> {
    const { tx, ledger, now, events } = ctx
    const product = ledger.product
    const productId = product.id
    // A duplicate that committed while this one waited for the product lock, or that came
    // earlier in this batch, is seen here.
    const earlier = await tx.getPaymentEvent(request.idempotencyKey)
    if (earlier) return { ok: 'replay', event: earlier }
    const event: PaymentEvent = {
      idempotencyKey: request.idempotencyKey,
      fingerprint,
      orderId: request.orderId,
      holdId: request.holdId,
      status: request.status,
      paymentId: request.paymentId,
      amountMinor: null,
      state: 'waiting',
      outcome: null,
      responseJson: null,
      createdAt: now,
      processedAt: null,
    }
    let order = request.orderId !== null ? await tx.getOrder(request.orderId) : await tx.getOrderByHold(request.holdId ?? '')
    let hold = order ? await tx.getHold(order.holdId) : await tx.getHold(request.holdId ?? '')
    assert(hold !== undefined, 'the hold named by a payment exists')
    event.holdId = hold.id
    // `amount`, when given, must be what the order costs; a mismatch changes nothing (422).
    const expectedMinor = order?.amountMinor ?? product.priceMinor * hold.qty
    if (request.amount !== null) {
      const amountMinor = parseAmountMinor(request.amount, product.currency)
      if (amountMinor === undefined) {
        throw new DomainError('validation_failed', { errors: [{ field: 'amount', message: `must be a non-negative amount in ${product.currency}` }] })
      }
      if (amountMinor !== expectedMinor) throw new DomainError('amount_mismatch', { expected_amount_minor: expectedMinor })
      event.amountMinor = amountMinor
    }

    if (!order && hold.status === 'active' && hold.expiresAt.getTime() > now.getTime()) {
      // Webhook before the order: stored durably, applied when the order is created.
      await tx.insertPaymentEvent(event)
      events.push({ name: 'payment.early', key: event.idempotencyKey, holdId: hold.id, productId })
      const body: PaymentAnswerBody = { state: 'accepted', holdId: hold.id, orderId: null, orderStatus: null, outcome: null }
      return { ok: true, answer: { body, replayed: false }, events }
    }
    if (!order && hold.status === 'active') {
      // The hold lapsed and no sweeper has caught it yet: expire it now, which also settles
      // any payment that was waiting on it (possibly creating the order).
      await expireHolds(ctx, [hold])
      hold = await tx.getHold(hold.id)
      assert(hold !== undefined && hold.status === 'expired', 'a lapsed hold is expired by the reclaim')
      order = await tx.getOrderByHold(hold.id)
    }
    const applied = await applyPaymentToHold(ctx, hold, order ?? null, event, true)
    await tx.insertPaymentEvent(applied.event)
    return { ok: true, answer: { body: applied.body, replayed: false }, events }
  }

  // Expires the hold if it has lapsed while still active, settling its waiting payments.
  private async settleLapsedHold(holdId: string): Promise<boolean> {
    const known = await this.store.getHold(holdId)
    const now = this.clock.now()
    if (!known || known.status !== 'active' || known.expiresAt.getTime() > now.getTime()) return false
    await withLockedProduct(this.store, this.observer, { label: 'payments.settle', productId: known.productId, now }, async (ctx) => {
      const hold = await ctx.tx.getHold(holdId)
      // Someone else (a sweeper, an order, a reclaim) may have settled it meanwhile.
      if (hold && hold.status === 'active') await expireHolds(ctx, [hold])
    })
    return true
  }

  private async productOf(request: PaymentRequest): Promise<number> {
    if (request.orderId !== null) {
      const order = isResourceId(request.orderId) ? await this.store.getOrder(request.orderId) : undefined
      if (!order) throw new DomainError('order_not_found')
      return order.productId
    }
    const holdId = request.holdId ?? ''
    const hold = isResourceId(holdId) ? await this.store.getHold(holdId) : undefined
    if (!hold) throw new DomainError('hold_not_found')
    return hold.productId
  }

  private replay(event: PaymentEvent, fingerprint: string): PaymentAnswer {
    assertSameFingerprint(event.fingerprint, fingerprint)
    this.observer.emit({ name: 'payment.duplicate', key: event.idempotencyKey, holdId: event.holdId, replayed: true })
    if (event.state === 'waiting') {
      const body: PaymentAnswerBody = { state: 'accepted', holdId: event.holdId, orderId: null, orderStatus: null, outcome: null }
      return { body, replayed: true }
    }
    assert(event.responseJson !== null, 'a processed payment stores its answer')
    return { body: JSON.parse(event.responseJson) as PaymentAnswerBody, replayed: true }
  }
}
