// The payment webhook: applied at most once per idempotency key (I4), in any order, before or
// after the order exists. The payment_events table is the key store: its unique key on the
// idempotency key is what makes a concurrent duplicate a replay and never a second effect.
import { assert } from './assert.js'
import { ProductBatches, type QueueLimits } from './batcher.js'
import type { Clock } from './clock.js'
import { DomainError } from './errors.js'
import { batchLog, emitAll, type DomainEvent, type EventLog, type Observer } from './events.js'
import { fingerprintOf } from './idempotency.js'
import { isResourceId } from './ids.js'
import { withLockedProduct } from './locked-product.js'
import { canonicalAmountText, parseAmountMinor } from './money.js'
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
  // Stated by providers that send one (Stripe): a payment in another currency than the order's
  // is a different amount. Absent from the generic webhook, whose amount is in the order's.
  currency?: string | null
}

// body.state says what happened: `accepted` (stored until its order exists) or `processed`.
export interface PaymentAnswer {
  body: PaymentAnswerBody
  replayed: boolean
}

// Each outcome carries its own events, emitted in its request's context.
type Outcome = { ok: true; answer: PaymentAnswer; events: DomainEvent[] } | { ok: false; error: DomainError } | { ok: 'replay'; event: PaymentEvent }

// A webhook's fingerprint as stored with a new event, and the one events stored before amounts
// were canonical have for the same request, when it differs.
interface WebhookFingerprint {
  stored: string
  legacy: string | null
}

function isSameWebhook(storedFingerprint: string, fingerprint: WebhookFingerprint): boolean {
  return storedFingerprint === fingerprint.stored || storedFingerprint === fingerprint.legacy
}

function assertSameWebhook(storedFingerprint: string, fingerprint: WebhookFingerprint): void {
  if (!isSameWebhook(storedFingerprint, fingerprint)) throw new DomainError('idempotency_key_reused')
}

interface Waiter {
  request: PaymentRequest
  fingerprint: WebhookFingerprint
  log: EventLog | undefined
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
    this.batches = new ProductBatches(settings.webhookBatchMax, settings, 'payments.receive', (productId, batch, queuedSinceMs) => this.serveBatch(productId, batch, queuedSinceMs))
  }

  async receive(request: PaymentRequest, log?: EventLog): Promise<PaymentAnswer> {
    const fingerprintWith = (amountText: string | null): string =>
      fingerprintOf([
        'payments',
        request.orderId,
        request.orderId === null ? request.holdId : null,
        request.status,
        request.paymentId,
        amountText,
        // Only when stated, so the generic webhook's stored fingerprints stay what they were.
        ...(request.currency ? [request.currency] : []),
      ])
    // The amount's canonical text: a retry writing "10.00" as "10" was refused 422 (the fifth
    // probe). Events stored before fingerprinted the text as sent, and payment keys are kept for
    // good, so that fingerprint is still accepted for them (never stored for a new event).
    const canonical = request.amount === null ? null : canonicalAmountText(request.amount)
    const asSent = request.amount === null ? null : String(request.amount)
    const fingerprint: WebhookFingerprint = { stored: fingerprintWith(canonical), legacy: asSent === canonical ? null : fingerprintWith(asSent) }
    // The order or hold names the product whose lock (and batch) the webhook needs. A stored
    // event for the key is read in the batch, with every other key of the batch at once.
    const productId = await this.productOf(request).catch((error: unknown) => this.refuse(request, fingerprint, error))
    const outcome = await new Promise<Outcome>((resolve, reject) => this.batches.add(productId, { request, fingerprint, log, resolve, reject }))
    if (outcome.ok === 'replay') return this.replay(outcome.event, fingerprint, log)
    if (outcome.ok === false) throw outcome.error
    emitAll(this.observer, outcome.events, log)
    return outcome.answer
  }

  // Resolves when every queued webhook has been answered (graceful shutdown).
  async drain(): Promise<void> {
    await this.batches.drain()
  }

  // A webhook naming no known order or hold is still a replay (or a 422) when its key is stored.
  private async refuse(request: PaymentRequest, fingerprint: WebhookFingerprint, error: unknown): Promise<never> {
    if (!(error instanceof DomainError) || (error.code !== 'order_not_found' && error.code !== 'hold_not_found')) throw error
    const stored = await this.store.getPaymentEvent(request.idempotencyKey)
    if (stored) assertSameWebhook(stored.fingerprint, fingerprint)
    throw error
  }

  // One transaction for every webhook of this product that queued meanwhile: one lock and one
  // commit for all, one read of the stored events of the batch's keys and one insert of the new
  // ones; each webhook is handled in arrival order exactly as it would be alone (a duplicate key
  // later in the batch replays the first one's event).
  private async serveBatch(productId: number, batch: Waiter[], queuedSinceMs: number): Promise<void> {
    const now = this.clock.now()
    let outcomes: Outcome[]
    try {
      outcomes = await withLockedProduct(
        this.store,
        this.observer,
        { label: 'payments.receive', productId, now, log: batchLog(batch.map((waiter) => waiter.log)), queuedSinceMs },
        async (ctx) => {
          const known = await this.storedEvents(ctx, batch)
          const created: PaymentEvent[] = []
          const results: Outcome[] = []
          for (const waiter of batch) {
            const earlier = known.get(waiter.request.idempotencyKey)
            if (earlier) {
              results.push({ ok: 'replay', event: earlier })
              continue
            }
            try {
              // Each webhook's events are its own, emitted in its request's context.
              const received = await this.receiveIn({ ...ctx, events: [] }, waiter.request, waiter.fingerprint.stored)
              known.set(received.event.idempotencyKey, received.event)
              created.push(received.event)
              results.push(received.outcome)
            } catch (error) {
              // Refusals (a bad amount) are decided before the webhook writes anything.
              if (!(error instanceof DomainError)) throw error
              results.push({ ok: false, error })
            }
          }
          // Nothing in the batch reads a new event back from the table: a waiting one waits on a
          // live hold, which no webhook of this batch can end (they share `now`).
          if (created.length > 0) await ctx.tx.insertPaymentEvents(created)
          ctx.events.push({ name: 'payment.batch', productId, size: batch.length })
          return results
        },
      )
    } catch (error) {
      // The batch did not commit: every webhook in it fails alike and none was answered yet.
      for (const waiter of batch) waiter.reject(error)
      return
    }
    for (const [index, waiter] of batch.entries()) waiter.resolve(outcomes[index]!)
  }

  // The stored events of the batch's keys (one read), each as it is true now: a replayed payment
  // still waiting on a hold that has lapsed is settled first (as a late payment), even if no
  // sweeper has reached the hold yet, and read again.
  private async storedEvents(ctx: SettleContext, batch: readonly Waiter[]): Promise<Map<string, PaymentEvent>> {
    const { tx, ledger, now } = ctx
    const keys = [...new Set(batch.map((waiter) => waiter.request.idempotencyKey))]
    const known = new Map((await tx.getPaymentEvents(keys)).map((event) => [event.idempotencyKey, event]))
    // Only a replay settles (another fingerprint is refused 422 and changes nothing).
    const replayed = batch.flatMap(({ request, fingerprint }) => {
      const event = known.get(request.idempotencyKey)
      return event && event.state === 'waiting' && event.holdId !== null && isSameWebhook(event.fingerprint, fingerprint) ? [event] : []
    })
    if (replayed.length === 0) return known
    const holds = await tx.getHolds([...new Set(replayed.map((event) => event.holdId!))])
    const lapsed = holds.filter((hold) => hold.productId === ledger.productId && hold.status === 'active' && hold.expiresAt.getTime() <= now.getTime())
    if (lapsed.length === 0) return known
    await expireHolds(ctx, lapsed)
    const lapsedIds = new Set(lapsed.map((hold) => hold.id))
    const settled = await tx.getPaymentEvents(replayed.filter((event) => lapsedIds.has(event.holdId!)).map((event) => event.idempotencyKey))
    for (const event of settled) known.set(event.idempotencyKey, event)
    return known
  }

  private async receiveIn(ctx: SettleContext, request: PaymentRequest, fingerprint: string): Promise<{ outcome: Outcome; event: PaymentEvent }> {
    const { tx, ledger, now, events } = ctx
    const product = ledger.product
    const productId = product.id
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
    if (request.currency && request.currency !== product.currency) {
      throw new DomainError('amount_mismatch', { expected_amount_minor: expectedMinor, expected_currency: product.currency })
    }
    if (request.amount !== null) {
      const amountMinor = parseAmountMinor(request.amount, product.currency)
      if (amountMinor === undefined) {
        throw new DomainError('validation_failed', { errors: [{ field: 'amount', message: `must be a non-negative amount in ${product.currency}` }], invalid_fields: ['amount'] })
      }
      if (amountMinor !== expectedMinor) throw new DomainError('amount_mismatch', { expected_amount_minor: expectedMinor })
      event.amountMinor = amountMinor
    }

    if (!order && hold.status === 'active' && hold.expiresAt.getTime() > now.getTime()) {
      // Webhook before the order: stored durably, applied when the order is created.
      events.push({ name: 'payment.early', key: event.idempotencyKey, holdId: hold.id, productId })
      const body: PaymentAnswerBody = { state: 'accepted', holdId: hold.id, orderId: null, orderStatus: null, outcome: null }
      return { outcome: { ok: true, answer: { body, replayed: false }, events }, event }
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
    return { outcome: { ok: true, answer: { body: applied.body, replayed: false }, events }, event: applied.event }
  }

  private async productOf(request: PaymentRequest): Promise<number> {
    if (request.orderId !== null) {
      const order = isResourceId(request.orderId) ? await this.store.getOrder(request.orderId) : undefined
      if (!order) throw new DomainError('order_not_found')
      // Both named: they must agree. A hold of another product was ignored and the order paid
      // (the fifth probe); the sender meant one of two payments and cannot be told which.
      if (request.holdId !== null && request.holdId !== order.holdId) {
        throw new DomainError('validation_failed', { errors: [{ field: 'hold_id', message: 'names another hold than the order was made from' }], invalid_fields: ['hold_id'] })
      }
      return order.productId
    }
    const holdId = request.holdId ?? ''
    const hold = isResourceId(holdId) ? await this.store.getHold(holdId) : undefined
    if (!hold) throw new DomainError('hold_not_found')
    return hold.productId
  }

  private replay(event: PaymentEvent, fingerprint: WebhookFingerprint, log: EventLog | undefined): PaymentAnswer {
    assertSameWebhook(event.fingerprint, fingerprint)
    this.observer.emit({ name: 'payment.duplicate', key: event.idempotencyKey, holdId: event.holdId, replayed: true }, log)
    if (event.state === 'waiting') {
      const body: PaymentAnswerBody = { state: 'accepted', holdId: event.holdId, orderId: null, orderStatus: null, outcome: null }
      return { body, replayed: true }
    }
    assert(event.responseJson !== null, 'a processed payment stores its answer')
    return { body: JSON.parse(event.responseJson) as PaymentAnswerBody, replayed: true }
  }
}
