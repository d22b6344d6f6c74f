// Orders: a hold becomes at most one order (I4), in one transaction that also applies any
// payment that arrived before it (SPEC §3), so the order may be created paid or cancelled.
import { assert } from './assert.js'
import { addMs, type Clock } from './clock.js'
import { DomainError } from './errors.js'
import { emitAll, type DomainEvent, type Observer } from './events.js'
import { assertSameFingerprint, fingerprintOf, InFlightKeys } from './idempotency.js'
import { isResourceId, newOrderId } from './ids.js'
import { ProductLedger } from './ledger.js'
import { applyPaymentToOrder, type SettleContext } from './settle.js'
import type { IdempotencyRecord, Order, Store } from './store.js'

export interface OrderSettings {
  orderTtlMs: number
  idempotencyTtlMs: number
  reclaimBatchMax: number
}

export interface OrderRequest {
  holdId: string
  idempotencyKey: string | null
}

export interface OrderAnswer {
  order: Order
  replayed: boolean
}

export class Orders {
  private readonly inFlight = new InFlightKeys()

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly observer: Observer,
    private readonly settings: OrderSettings,
  ) {}

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

  private async createOnce(request: OrderRequest, fingerprint: string): Promise<OrderAnswer> {
    const known = isResourceId(request.holdId) ? await this.store.getHold(request.holdId) : undefined
    if (!known) throw new DomainError('hold_not_found')
    const now = this.clock.now()
    const orderId = newOrderId(now)
    const key = request.idempotencyKey
    const result = await this.store.transaction({ label: 'orders.create' }, async (tx) => {
      const events: DomainEvent[] = []
      const product = await tx.lockProduct(known.productId)
      assert(product !== undefined, 'a hold names an existing product')
      if (key !== null) {
        const record: IdempotencyRecord = {
          scope: 'orders',
          key,
          fingerprint,
          statusCode: 0,
          responseJson: '',
          expiresAt: addMs(now, this.settings.idempotencyTtlMs),
        }
        if (!(await tx.claimIdempotencyKey(record, now))) return { taken: true as const }
      }
      const hold = await tx.getHold(request.holdId)
      assert(hold !== undefined, 'holds are never deleted')
      // Where several refusals apply, the order is: already used, released, expired. An active
      // hold has no order (orders are made only from converted or ended holds), so the common
      // case spends no round trip under the product lock looking for one.
      const existing = hold.status === 'active' ? undefined : await tx.getOrderByHold(hold.id)
      if (existing || hold.status === 'converted') {
        throw new DomainError('hold_already_used', { order_id: existing?.id ?? null })
      }
      if (hold.status === 'released') throw new DomainError('hold_released')
      if (hold.status === 'expired' || hold.expiresAt.getTime() <= now.getTime()) throw new DomainError('hold_expired')

      const moved = await tx.setHoldsStatus([hold.id], 'active', 'converted', now)
      assert(moved === 1, 'I4: an active hold read under the product lock converts once')
      let order: Order = {
        id: orderId,
        holdId: hold.id,
        productId: hold.productId,
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
      // The hold's units stay reserved: they now belong to the pending order (I2).
      await tx.insertOrder(order)
      events.push({ name: 'order.created', orderId, holdId: hold.id, productId: hold.productId, qty: hold.qty, status: 'pending' })
      const ledger = new ProductLedger(product)
      const ctx: SettleContext = { tx, ledger, now, events, reclaimBatchMax: this.settings.reclaimBatchMax }
      for (const event of await tx.waitingPaymentEvents([hold.id])) {
        const applied = await applyPaymentToOrder(ctx, order, event, true)
        assert(applied.order !== null, 'a payment applied to an order names it')
        order = applied.order
        await tx.markPaymentEventProcessed(applied.event)
      }
      await ledger.flush(tx)
      if (key !== null) await tx.completeIdempotencyKey('orders', key, 201, JSON.stringify(order))
      return { taken: false as const, order, events }
    })
    if (result.taken) {
      assert(key !== null, 'only keyed requests can find their key taken')
      const record = await this.store.getIdempotencyRecord('orders', key)
      if (!record) throw new DomainError('idempotency_key_in_flight')
      return answerFromRecord(record, fingerprint)
    }
    emitAll(this.observer, result.events)
    return { order: result.order, replayed: false }
  }
}

function answerFromRecord(record: IdempotencyRecord, fingerprint: string): OrderAnswer {
  assertSameFingerprint(record.fingerprint, fingerprint)
  if (record.statusCode === 0) throw new DomainError('idempotency_key_in_flight')
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
