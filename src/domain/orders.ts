// Orders: a hold becomes at most one order (I4), in one transaction that also applies any
// payment that arrived before it (SPEC §3), so the order may be created paid or cancelled.
// Order requests for one product are group-committed like holds (keyed-batches.ts).
import { assert } from './assert.js'
import { addMs, type Clock } from './clock.js'
import { DomainError } from './errors.js'
import type { DomainEvent, EventLog, Observer } from './events.js'
import { fingerprintOf } from './idempotency.js'
import { isResourceId, newOrderId } from './ids.js'
import { KeyedBatches, type KeyedBatchLimits, type KeyedUseCase, type Verdict } from './keyed-batches.js'
import { applyPaymentToOrder, type SettleContext } from './settle.js'
import { effectiveStatus } from './status.js'
import type { Hold, Order, Store } from './store.js'

export interface OrderSettings extends KeyedBatchLimits {
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

// Judges a batch of order requests in arrival order, as if each came alone: `holds` are the
// batch's holds read under the product lock, `existing` the orders already made from the ones
// that are no longer active. Pure (no I/O). Where several refusals apply, the order is: already
// used, released, expired. A new rule for orders is one more check here.
export function judgeOrders(
  requests: readonly OrderRequest[],
  holds: ReadonlyMap<string, Hold>,
  existing: ReadonlyMap<string, Order>,
  candidateOf: (hold: Hold, index: number) => Order,
  now: Date,
): Array<DomainError | Order> {
  const madeInBatch = new Map<string, Order>()
  return requests.map((request, index) => {
    const hold = holds.get(request.holdId)
    assert(hold !== undefined, 'holds are never deleted and keep their product')
    const earlier = madeInBatch.get(hold.id) ?? existing.get(hold.id)
    if (earlier || hold.status === 'converted') return new DomainError('hold_already_used', { order_id: earlier?.id ?? null })
    if (hold.status === 'released') return new DomainError('hold_released')
    if (effectiveStatus(hold, now) === 'expired') return new DomainError('hold_expired')
    const order = candidateOf(hold, index)
    madeInBatch.set(hold.id, order)
    return order
  })
}

export class Orders {
  private readonly batches: KeyedBatches<OrderRequest, Order>

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly observer: Observer,
    private readonly settings: OrderSettings,
  ) {
    const useCase: KeyedUseCase<OrderRequest, Order> = {
      scope: 'orders',
      label: 'orders.create',
      batchMax: settings.orderBatchMax,
      idempotencyTtlMs: settings.idempotencyTtlMs,
      batchEvent: 'order.batch',
      refusedBeforeBatch: ['hold_not_found'],
      fingerprint: (request) => fingerprintOf(['orders', request.holdId]),
      serve: (ctx, requests) => this.serve(ctx, requests),
      encode: (order) => JSON.stringify(order),
      decode: reviveOrder,
    }
    this.batches = new KeyedBatches(store, clock, observer, useCase, settings)
  }

  async get(orderId: string): Promise<Order> {
    const order = isResourceId(orderId) ? await this.store.getOrder(orderId) : undefined
    if (!order) throw new DomainError('order_not_found')
    return order
  }

  async create(request: OrderRequest, log?: EventLog): Promise<OrderAnswer> {
    try {
      // The hold names the product whose lock (and batch) the order needs; it never changes.
      const known = isResourceId(request.holdId) ? await this.store.getHold(request.holdId) : undefined
      if (!known) throw new DomainError('hold_not_found')
      const { answer, replayed } = await this.batches.submit(known.productId, request, log)
      return { order: answer, replayed }
    } catch (error) {
      if (error instanceof DomainError) return this.batches.refuse(request, error).then(({ answer, replayed }) => ({ order: answer, replayed }))
      throw error
    }
  }

  // Resolves when every queued order request has been answered (graceful shutdown).
  async drain(): Promise<void> {
    await this.batches.drain()
  }

  // One read of the batch's holds, one compare-and-set of them, one multi-row insert, one look-up
  // of payments that arrived before their order (applied in arrival order, SPEC §3).
  private async serve(ctx: SettleContext, requests: readonly OrderRequest[]): Promise<Array<Verdict<Order>>> {
    const { tx, ledger, now } = ctx
    const product = ledger.product
    const holds = new Map((await tx.getHolds([...new Set(requests.map((request) => request.holdId))])).map((hold) => [hold.id, hold]))
    // An active hold has no order (orders are made only from converted or ended holds), so the
    // common case spends no round trip looking for one.
    const existing = new Map<string, Order>()
    for (const hold of holds.values()) {
      assert(hold.productId === product.id, 'holds keep their product')
      const order = hold.status === 'active' ? undefined : await tx.getOrderByHold(hold.id)
      if (order) existing.set(hold.id, order)
    }
    const candidateOf = (hold: Hold): Order => ({
      id: newOrderId(now),
      holdId: hold.id,
      productId: product.id,
      qty: hold.qty,
      amountMinor: product.priceMinor * hold.qty,
      currency: product.currency,
      status: 'pending',
      createdAt: now,
      expiresAt: addMs(now, this.settings.orderTtlMs),
      paidAt: null,
      paymentId: null,
      refundRequired: false,
      buyerId: hold.buyerId,
    })
    const judged = judgeOrders(requests, holds, existing, candidateOf, now)
    const created = judged.filter((result): result is Order => !(result instanceof DomainError))
    const ordersByHold = new Map(created.map((order) => [order.holdId, order]))
    const eventsByHold = new Map<string, DomainEvent[]>()
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
        eventsByHold.set(order.holdId, [{ name: 'order.created', orderId: order.id, holdId: order.holdId, productId: product.id, qty: order.qty, status: 'pending' }])
      }
      for (const event of await tx.waitingPaymentEvents(created.map((order) => order.holdId))) {
        const order = ordersByHold.get(event.holdId ?? '')
        assert(order !== undefined, 'a waiting payment names a hold converted in this batch')
        const applied = await applyPaymentToOrder({ ...ctx, events: eventsByHold.get(order.holdId)! }, order, event, true)
        assert(applied.order !== null, 'a payment applied to an order names it')
        ordersByHold.set(order.holdId, applied.order)
        await tx.markPaymentEventProcessed(applied.event)
      }
    }
    return judged.map((result): Verdict<Order> => {
      if (result instanceof DomainError) return { ok: false, error: result, events: [] }
      return { ok: true, answer: ordersByHold.get(result.holdId)!, events: eventsByHold.get(result.holdId) ?? [] }
    })
  }
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
