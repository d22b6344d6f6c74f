// What happens to rows under one locked product: lapsed holds and orders are expired, and
// payment events are applied to orders (or to holds that never became orders). Every function
// here runs inside a transaction that already holds the product's row lock (StoreTx lock order).
import { assert } from './assert.js'
import type { DomainEvent } from './events.js'
import { newOrderId } from './ids.js'
import type { ProductLedger } from './ledger.js'
import type { Hold, LapsedRow, Order, PaymentEvent, PaymentOutcome, StoreTx } from './store.js'

export interface PaymentAnswerBody {
  state: 'accepted' | 'processed'
  holdId: string | null
  orderId: string | null
  orderStatus: Order['status'] | null
  outcome: PaymentOutcome | null
}

// How many lapsed rows a request may expire on the way (reclaim) before it answers: a named
// limit keeps its transaction short.
export const reclaimBatchMax = 200

// How many rounds of reclaimBatchMax rows a request still short of units may expire (1,000 rows
// at most, in one transaction): lapsed rows left by the sweeper's lag must not refuse a request
// GET shows free units to. A request that needed more (more than this many rows lapsed and
// unswept on one product, all of them needed) is still refused, and the sweeper frees the rest.
export const reclaimRoundsMax = 5

export interface SettleContext {
  tx: StoreTx
  ledger: ProductLedger
  now: Date
  events: DomainEvent[]
  // How many lapsed rows one reclaim may expire (a named limit keeps transactions short).
  reclaimBatchMax: number
}

// Expires this product's holds and pending orders whose time has passed (SPEC §4), releasing
// their units. Stored payments waiting on an expiring hold become late payments.
export async function expireLapsed(ctx: SettleContext, limit: number): Promise<number> {
  const { tx, ledger, now, events } = ctx
  const holds = await tx.lapsedHolds(ledger.productId, now, limit)
  await expireHolds(ctx, holds)
  const orderLimit = limit - holds.length
  if (orderLimit <= 0) return holds.length
  const orders = await tx.lapsedOrders(ledger.productId, now, orderLimit)
  if (orders.length > 0) {
    const movedCount = await tx.setOrdersStatus(
      orders.map((order) => order.id),
      'pending',
      'expired',
      now,
    )
    assert(movedCount === orders.length, 'lapsed orders read under the product lock are still pending')
    for (const order of orders) {
      ledger.release(order.qty)
      events.push({ name: 'order.expired', orderId: order.id, productId: order.productId, qty: order.qty })
    }
  }
  return holds.length + orders.length
}

// Expires these lapsed, still active holds of the locked product and settles the payments that
// were waiting on them (they become late payments).
export async function expireHolds(ctx: SettleContext, holds: readonly LapsedRow[]): Promise<void> {
  if (holds.length === 0) return
  const { tx, ledger, now, events } = ctx
  const movedCount = await tx.setHoldsStatus(
    holds.map((hold) => hold.id),
    'active',
    'expired',
    now,
  )
  // The product lock makes the rows read before stable, so every one of them must have moved.
  assert(movedCount === holds.length, 'lapsed holds read under the product lock are still active')
  for (const hold of holds) {
    ledger.release(hold.qty)
    events.push({ name: 'hold.expired', holdId: hold.id, productId: hold.productId, qty: hold.qty })
  }
  await settleWaitingPayments(
    ctx,
    holds.map((hold) => ({ ...hold, status: 'expired' as const })),
  )
}

// Expires lapsed rows, reclaimBatchMax at a time, while `short()` and the last round was full
// (more may be left), at most reclaimRoundsMax rounds. One round found only 200 of the 250 lapsed
// holds a hold of 250 needed: refused with 409 while GET showed 300 free (the fourth probe).
export async function reclaimWhileShort(ctx: SettleContext, short: () => boolean): Promise<number> {
  let expired = 0
  for (let round = 0; round < reclaimRoundsMax && short(); round++) {
    const count = await expireLapsed(ctx, ctx.reclaimBatchMax)
    expired += count
    if (count < ctx.reclaimBatchMax) break
  }
  return expired
}

// True when qty units can be taken now, after reclaiming lapsed rows if they are short.
export async function ensureAvailable(ctx: SettleContext, qty: number, reclaim: boolean): Promise<boolean> {
  if (ctx.ledger.available() >= qty) return true
  if (!reclaim) return false
  await reclaimWhileShort(ctx, () => ctx.ledger.available() < qty)
  return ctx.ledger.available() >= qty
}

interface HoldLike {
  id: string
  productId: number
  qty: number
  status: Hold['status']
  buyerId: string | null
}

// SPEC §8, I8: a late success may recover a sale only if the buyer stays within the product's
// limit; the counted units are read under the product lock (a rare path: one query each).
// Judged after ensureAvailable: its reclaim settles payments waiting on lapsed holds, which may
// recover units for this same buyer (counted first, a buyer with a limit of 3 ended with 4).
async function fitsBuyerLimit(ctx: SettleContext, buyerId: string | null, qty: number): Promise<boolean> {
  const limit = ctx.ledger.drop.perBuyerLimit
  if (limit === null || buyerId === null) return true
  const units = (await ctx.tx.buyerUnits(ctx.ledger.productId, [buyerId], ctx.now)).get(buyerId) ?? 0
  return units + qty <= limit
}

// Payments that arrived before an order: applied in arrival order when the hold becomes an
// order or stops being active without one.
export async function settleWaitingPayments(ctx: SettleContext, holds: ReadonlyArray<Omit<HoldLike, 'buyerId'>>): Promise<void> {
  if (holds.length === 0) return
  const waiting = await ctx.tx.waitingPaymentEvents(holds.map((hold) => hold.id))
  if (waiting.length === 0) return
  // The buyers of the holds payments wait on (the swept rows do not carry them): the late order
  // inherits its hold's buyer.
  const buyerOf = new Map((await ctx.tx.getHolds([...new Set(waiting.map((event) => event.holdId ?? ''))])).map((hold) => [hold.id, hold.buyerId]))
  const holdsById = new Map(holds.map((hold) => [hold.id, { ...hold, buyerId: buyerOf.get(hold.id) ?? null }]))
  const ordersByHold = new Map<string, Order>()
  for (const event of waiting) {
    const hold = holdsById.get(event.holdId ?? '')
    assert(hold !== undefined, 'a waiting payment names one of the settled holds')
    const order = ordersByHold.get(hold.id) ?? null
    // Reclaiming here could recurse into this function; the units of the hold that just
    // lapsed are available anyway, so a first success always finds them.
    const result = await applyPaymentToHold(ctx, hold, order, event, false)
    if (result.order) ordersByHold.set(hold.id, result.order)
    await ctx.tx.markPaymentEventProcessed(result.event)
  }
}

export interface AppliedPayment {
  order: Order | null
  event: PaymentEvent
  body: PaymentAnswerBody
}

// Applies one payment to a hold whose order may not exist. With an order, it is applied to the
// order; without one (the hold expired or was released first), a success is a late payment that
// creates the order: paid if the units can still be had, else marked refund_required.
export async function applyPaymentToHold(ctx: SettleContext, hold: HoldLike, order: Order | null, event: PaymentEvent, reclaim: boolean): Promise<AppliedPayment> {
  if (order) return applyPaymentToOrder(ctx, order, event, reclaim)
  assert(hold.status !== 'active' && hold.status !== 'converted', 'a payment settles on a hold without an order only once the hold has ended')
  if (event.status === 'failed') {
    return finish(ctx, event, null, 'ignored')
  }
  const product = ctx.ledger.product
  const created: Order = {
    id: newOrderId(ctx.now),
    holdId: hold.id,
    productId: hold.productId,
    qty: hold.qty,
    amountMinor: product.priceMinor * hold.qty,
    currency: product.currency,
    status: hold.status === 'released' ? 'cancelled' : 'expired',
    createdAt: ctx.now,
    expiresAt: ctx.now,
    paidAt: null,
    paymentId: event.paymentId,
    refundRequired: false,
    buyerId: hold.buyerId,
  }
  let outcome: PaymentOutcome
  if ((await ensureAvailable(ctx, hold.qty, reclaim)) && (await fitsBuyerLimit(ctx, hold.buyerId, hold.qty))) {
    ctx.ledger.sellAvailable(hold.qty)
    created.status = 'paid'
    created.paidAt = ctx.now
    outcome = 'recovered'
  } else {
    created.refundRequired = true
    outcome = 'refund_required'
  }
  await ctx.tx.insertOrder(created)
  ctx.events.push({ name: 'order.created', orderId: created.id, holdId: hold.id, productId: hold.productId, qty: hold.qty, status: created.status, late: true })
  return finish(ctx, event, created, outcome)
}

export async function applyPaymentToOrder(ctx: SettleContext, stored: Order, event: PaymentEvent, reclaim: boolean): Promise<AppliedPayment> {
  const { ledger, now, events } = ctx
  const fromStatus = stored.status
  const order: Order = { ...stored }
  // A pending order past its TTL is expired before the payment is looked at (SPEC §4).
  if (order.status === 'pending' && order.expiresAt.getTime() <= now.getTime()) {
    ledger.release(order.qty)
    order.status = 'expired'
    events.push({ name: 'order.expired', orderId: order.id, productId: order.productId, qty: order.qty })
  }
  let outcome: PaymentOutcome
  if (event.status === 'failed') {
    if (order.status === 'pending') {
      ledger.release(order.qty)
      order.status = 'cancelled'
      events.push({ name: 'order.cancelled', orderId: order.id, productId: order.productId, qty: order.qty })
      outcome = 'cancelled'
    } else {
      outcome = 'ignored'
    }
  } else if (order.status === 'pending') {
    ledger.sellReserved(order.qty)
    order.status = 'paid'
    order.paidAt = now
    order.paymentId = event.paymentId
    outcome = 'paid'
  } else if (order.status === 'paid') {
    outcome = 'duplicate'
  } else if ((await ensureAvailable(ctx, order.qty, reclaim)) && (await fitsBuyerLimit(ctx, order.buyerId, order.qty))) {
    ledger.sellAvailable(order.qty)
    order.status = 'paid'
    order.paidAt = now
    order.paymentId = event.paymentId
    order.refundRequired = false
    outcome = 'recovered'
  } else {
    order.refundRequired = true
    // The order names the (first) payment that needs refunding; the log names each one.
    order.paymentId ??= event.paymentId
    outcome = 'refund_required'
  }
  if (order.status !== fromStatus || order.refundRequired !== stored.refundRequired || order.paymentId !== stored.paymentId) {
    const updated = await ctx.tx.updateOrder(order, fromStatus, now)
    assert(updated, 'an order read under the product lock keeps its status until commit')
  }
  return finish(ctx, event, order, outcome)
}

function finish(ctx: SettleContext, event: PaymentEvent, order: Order | null, outcome: PaymentOutcome): AppliedPayment {
  const body: PaymentAnswerBody = {
    state: 'processed',
    holdId: event.holdId,
    orderId: order?.id ?? null,
    orderStatus: order?.status ?? null,
    outcome,
  }
  const processed: PaymentEvent = {
    ...event,
    orderId: order?.id ?? event.orderId,
    state: 'processed',
    outcome,
    responseJson: JSON.stringify(body),
    processedAt: ctx.now,
  }
  const logged = { key: event.idempotencyKey, orderId: body.orderId, holdId: event.holdId, productId: ctx.ledger.productId, outcome }
  if (outcome === 'duplicate' || outcome === 'ignored') ctx.events.push({ name: 'payment.duplicate', ...logged })
  else if (outcome === 'refund_required') ctx.events.push({ name: 'payment.refund_required', ...logged, paymentId: event.paymentId, qty: order?.qty })
  else ctx.events.push({ name: 'payment.applied', ...logged })
  return { order, event: processed, body }
}
