// Domain objects to JSON (snake_case, money as decimal strings, instants as ISO 8601 UTC).
import type { AuditReport } from '../domain/audit.js'
import { IsoTextMemo } from '../domain/clock.js'
import { formatAmount } from '../domain/money.js'
import type { PaymentAnswerBody } from '../domain/payments.js'
import type { ProductView } from '../domain/products.js'
import { effectiveOrderStatus, effectiveStatus } from '../domain/status.js'
import type { Hold, Order } from '../domain/store.js'
import type { TicketView } from '../domain/waitlist.js'

export function presentProduct(product: ProductView) {
  return {
    id: product.id,
    name: product.name,
    price: formatAmount(product.priceMinor, product.currency),
    currency: product.currency,
    stock: product.stock,
    available_stock: product.availableStock,
    reserved: product.reserved,
    sold: product.sold,
    created_at: product.createdAt.toISOString(),
    per_buyer_limit: product.drop.perBuyerLimit,
    sale_starts_at: product.drop.saleStartsAt?.toISOString() ?? null,
    sale_ends_at: product.drop.saleEndsAt?.toISOString() ?? null,
    sale_status: product.saleStatus,
  }
}

const shownExpiresAt = new IsoTextMemo()
const shownCreatedAt = new IsoTextMemo()

// `replayed`: the answer is a stored one (an Idempotency-Key replay), shown with the status it
// was stored with, not the one its times give now (README › Idempotency keys): a hold stored
// active and since converted is not shown `expired` once its expires_at passes.
export function presentHold(hold: Hold, now: Date, replayed = false) {
  return {
    hold_id: hold.id,
    product_id: hold.productId,
    qty: hold.qty,
    status: replayed ? hold.status : effectiveStatus(hold, now),
    expires_at: shownExpiresAt.of(hold.expiresAt),
    created_at: shownCreatedAt.of(hold.createdAt),
    buyer_id: hold.buyerId,
  }
}

export function presentTicket(view: TicketView) {
  const { ticket, hold } = view
  return {
    ticket_id: ticket.id,
    product_id: ticket.productId,
    qty: ticket.qty,
    status: view.status,
    position: view.position,
    created_at: ticket.createdAt.toISOString(),
    buyer_id: ticket.buyerId,
    hold_id: hold?.id ?? null,
    expires_at: hold?.expiresAt.toISOString() ?? null,
  }
}

// `replayed` as for presentHold: the stored status, not the one the order's times give now.
export function presentOrder(order: Order, now: Date, replayed = false) {
  return {
    order_id: order.id,
    hold_id: order.holdId,
    product_id: order.productId,
    qty: order.qty,
    amount: formatAmount(order.amountMinor, order.currency),
    currency: order.currency,
    status: replayed ? order.status : effectiveOrderStatus(order, now),
    created_at: order.createdAt.toISOString(),
    expires_at: order.expiresAt.toISOString(),
    paid_at: order.paidAt?.toISOString() ?? null,
    payment_id: order.paymentId,
    refund_required: order.refundRequired,
    buyer_id: order.buyerId,
  }
}

export function presentPayment(body: PaymentAnswerBody) {
  return {
    status: body.state,
    hold_id: body.holdId,
    order_id: body.orderId,
    order_status: body.orderStatus,
    outcome: body.outcome,
  }
}

// GET /admin/audit and `flash-sale audit` print the same report.
export function presentAudit(report: AuditReport) {
  return {
    ok: report.ok,
    checked_products: report.checkedProducts,
    violations: report.violations.map((violation) => ({ invariant: violation.invariant, product_id: violation.productId, message: violation.message })),
  }
}
