// Orders: a hold becomes at most one order (I4), in one transaction that also applies any
// payment that arrived before it (SPEC §3), so the order may be created paid or cancelled.
// Order requests for one product are group-committed like holds (batcher.ts).
import { assert } from './assert.js'
import { ProductBatches } from './batcher.js'
import { addMs, type Clock } from './clock.js'
import { DomainError } from './errors.js'
import { emitAll, type DomainEvent, type Observer } from './events.js'
import { assertSameFingerprint, claimKey, fingerprintOf, InFlightKeys } from './idempotency.js'
import { isResourceId, newOrderId } from './ids.js'
import { ProductLedger } from './ledger.js'
import { applyPaymentToOrder, reclaimBatchMax, type SettleContext } from './settle.js'
import { effectiveStatus } from './status.js'
import type { Hold, IdempotencyRecord, Order, Store, StoreTx } from './store.js'

export interface OrderSettings {
  orderTtlMs: number
  idempotencyTtlMs: number
  orderBatchMax: number
}

export interface OrderRequest {
  holdId: string
  idempotencyKey: string | null
}

export interface OrderAnswer {
  order: Order
  replayed: boolean
}

// Each outcome carries its own events, emitted in its request's context (so the log lines have
// that request's id), not in the batch leader's.
type Outcome = { ok: true; order: Order; events: DomainEvent[] } | { ok: false; error: DomainError } | { ok: 'key_taken' }

interface Waiter {
  request: OrderRequest
  fingerprint: string
  resolve: (outcome: Outcome) => void
  reject: (error: unknown) => void
}

export class Orders {
  private readonly inFlight = new InFlightKeys()
  private readonly batches: ProductBatches<Waiter>

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly observer: Observer,
    private readonly settings: OrderSettings,
  ) {
    this.batches = new ProductBatches(settings.orderBatchMax, (productId, batch) => this.serveBatch(productId, batch))
  }

  async get(orderId: string): Promise<Order> {
    const order = isResourceId(orderId) ? await this.store.getOrder(orderId) : undefined
    if (!order) throw new DomainError('order_not_found')
    return order
  }

  async create(request: OrderRequest): Promise<OrderAnswer> {
    const fingerprint = fingerprintOf(['orders', request.holdId])
    const key = request.idempotencyKey
    if (key === null) return this.createOnce(request, fingerprint)
    const attemptsMax = 3
    for (let attempt = 1; attempt <= attemptsMax; attempt++) {
      const record = await this.liveRecord(key)
      if (record) return answerFromRecord(record, fingerprint)
      const run = await this.inFlight.run(`orders:${key}`, () => this.createOnce(request, fingerprint))
      if (!run.waited) return run.value as OrderAnswer
    }
    throw new DomainError('idempotency_key_in_flight')
  }

  private async liveRecord(key: string): Promise<IdempotencyRecord | undefined> {
    const record = await this.store.getIdempotencyRecord('orders', key)
    return record && record.expiresAt.getTime() > this.clock.now().getTime() ? record : undefined
  }

  // Resolves when every queued order request has been answered (graceful shutdown).
  async drain(): Promise<void> {
    await this.batches.drain()
  }

  private async createOnce(request: OrderRequest, fingerprint: string): Promise<OrderAnswer> {
    // The hold names the product whose lock (and batch) the order needs; it never changes.
    const known = isResourceId(request.holdId) ? await this.store.getHold(request.holdId) : undefined
    if (!known) throw new DomainError('hold_not_found')
    const outcome = await new Promise<Outcome>((resolve, reject) => this.batches.add(known.productId, { request, fingerprint, resolve, reject }))
    if (outcome.ok === true) {
      emitAll(this.observer, outcome.events)
      return { order: outcome.order, replayed: false }
    }
    if (outcome.ok === false) throw outcome.error
    // Another process committed this key first: answer what it stored.
    const key = request.idempotencyKey
    assert(key !== null, 'only keyed requests can find their key taken')
    const record = await this.store.getIdempotencyRecord('orders', key)
    if (!record) throw new DomainError('idempotency_key_in_flight')
    return answerFromRecord(record, fingerprint)
  }

  // One transaction for every order request of this product that queued meanwhile: one lock,
  // one read of their holds, one compare-and-set of the holds, one multi-row insert, one
  // commit. Requests are judged in arrival order, each as if it were alone (a second request
  // for a hold converted earlier in the batch is refused naming that order).
  private async serveBatch(productId: number, batch: Waiter[]): Promise<void> {
    const now = this.clock.now()
    // Ids are made before the transaction so a retried attempt inserts the same orders.
    const orderIds = batch.map(() => newOrderId(now))
    let outcomes: Outcome[]
    try {
      outcomes = await this.store.transaction({ label: 'orders.create' }, async (tx) => {
        const product = await tx.lockProduct(productId)
        assert(product !== undefined, 'a hold names an existing product')
        const holds = new Map((await tx.getHolds([...new Set(batch.map((waiter) => waiter.request.holdId))])).map((hold) => [hold.id, hold]))
        const results: Array<Outcome | undefined> = batch.map(() => undefined)
        const ordersByHold = new Map<string, Order>()
        const refusedKeys: string[] = []
        for (const [index, waiter] of batch.entries()) {
          const key = waiter.request.idempotencyKey
          if (key !== null && !(await claimKey(tx, 'orders', key, waiter.fingerprint, now, this.settings.idempotencyTtlMs))) {
            results[index] = { ok: 'key_taken' }
            continue
          }
          const hold = holds.get(waiter.request.holdId)
          assert(hold !== undefined && hold.productId === productId, 'holds are never deleted and keep their product')
          const refusal = await this.refusal(tx, hold, ordersByHold.get(hold.id), now)
          if (refusal) {
            results[index] = { ok: false, error: refusal }
            // Only answers that changed something use up the key (SPEC §3).
            if (key !== null) refusedKeys.push(key)
            continue
          }
          const order: Order = {
            id: orderIds[index]!,
            holdId: hold.id,
            productId,
            qty: hold.qty,
            amountMinor: product.priceMinor * hold.qty,
            currency: product.currency,
            status: 'pending',
            createdAt: now,
            expiresAt: addMs(now, this.settings.orderTtlMs),
            paidAt: null,
            paymentId: null,
            refundRequired: false,
          }
          ordersByHold.set(hold.id, order)
        }
        const created = [...ordersByHold.values()]
        const eventsByHold = new Map<string, DomainEvent[]>()
        const ledger = new ProductLedger(product)
        if (created.length > 0) {
          const moved = await tx.setHoldsStatus(
            created.map((order) => order.holdId),
            'active',
            'converted',
            now,
          )
          assert(moved === created.length, 'I4: active holds read under the product lock convert once')
          // The holds' units stay reserved: they now belong to the pending orders (I2).
          await tx.insertOrders(created)
          for (const order of created) {
            eventsByHold.set(order.holdId, [{ name: 'order.created', orderId: order.id, holdId: order.holdId, productId, qty: order.qty, status: 'pending' }])
          }
          // Payments that arrived before their order (SPEC §3), in arrival order.
          for (const event of await tx.waitingPaymentEvents(created.map((order) => order.holdId))) {
            const order = ordersByHold.get(event.holdId ?? '')
            assert(order !== undefined, 'a waiting payment names a hold converted in this batch')
            const events = eventsByHold.get(order.holdId)!
            const ctx: SettleContext = { tx, ledger, now, events, reclaimBatchMax }
            const applied = await applyPaymentToOrder(ctx, order, event, true)
            assert(applied.order !== null, 'a payment applied to an order names it')
            ordersByHold.set(order.holdId, applied.order)
            await tx.markPaymentEventProcessed(applied.event)
          }
        }
        await ledger.flush(tx)
        for (const key of refusedKeys) await tx.releaseIdempotencyKey('orders', key)
        for (const [index, waiter] of batch.entries()) {
          if (results[index]) continue
          const order = ordersByHold.get(waiter.request.holdId)
          assert(order !== undefined, 'every request not refused made an order')
          results[index] = { ok: true, order, events: eventsByHold.get(order.holdId) ?? [] }
          if (waiter.request.idempotencyKey !== null) await tx.completeIdempotencyKey('orders', waiter.request.idempotencyKey, JSON.stringify(order))
        }
        return results.map((result) => result ?? { ok: false as const, error: new DomainError('internal_error') })
      })
    } catch (error) {
      // The batch did not commit: every request in it fails alike and none was answered yet.
      for (const waiter of batch) waiter.reject(error)
      return
    }
    this.observer.emit({ name: 'order.batch', productId, size: batch.length })
    for (const [index, waiter] of batch.entries()) waiter.resolve(outcomes[index]!)
  }

  // Why a hold cannot become an order now, if it cannot. Where several refusals apply, the
  // order is: already used, released, expired.
  private async refusal(tx: StoreTx, hold: Hold, madeInBatch: Order | undefined, now: Date): Promise<DomainError | undefined> {
    if (madeInBatch) return new DomainError('hold_already_used', { order_id: madeInBatch.id })
    // An active hold has no order (orders are made only from converted or ended holds), so
    // the common case spends no round trip under the product lock looking for one.
    const existing = hold.status === 'active' ? undefined : await tx.getOrderByHold(hold.id)
    if (existing || hold.status === 'converted') return new DomainError('hold_already_used', { order_id: existing?.id ?? null })
    if (hold.status === 'released') return new DomainError('hold_released')
    if (effectiveStatus(hold, now) === 'expired') return new DomainError('hold_expired')
    return undefined
  }
}

function answerFromRecord(record: IdempotencyRecord, fingerprint: string): OrderAnswer {
  assertSameFingerprint(record.fingerprint, fingerprint)
  if (record.state === 'claimed') throw new DomainError('idempotency_key_in_flight')
  return { order: reviveOrder(record.responseJson), replayed: true }
}

function reviveOrder(json: string): Order {
  const raw = JSON.parse(json) as Order & { createdAt: string; expiresAt: string; paidAt: string | null }
  return {
    ...raw,
    createdAt: new Date(raw.createdAt),
    expiresAt: new Date(raw.expiresAt),
    paidAt: raw.paidAt === null ? null : new Date(raw.paidAt),
  }
}
