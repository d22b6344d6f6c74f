// Row mapping: table rows (schema.ts) to domain values and back. Row types never leave store/.
import type { Selectable } from 'kysely'
import { assert } from '../domain/assert.js'
import type { DropSettings, Hold, HoldStatus, KeyedHold, Order, OrderStatus, PaymentEvent, Product, ProductSnapshot, RowKey, Ticket, TicketStatus } from '../domain/store.js'
import type { ArrayColumn } from './engines/engine.js'
import type { HoldsTable, OrdersTable, PaymentEventsTable, ProductsTable, WaitlistTicketsTable } from './schema.js'

export type SnapshotRow = Selectable<ProductsTable> & {
  lapsed_bucket_qty: number | null
  lapsed_hold_qty: number | null
  lapsed_order_qty: number | null
  paid_lapsed_hold_qty: number | null
}

// The columns of holds with their types in migrations 0001 and 0003, in the order holdValues gives them.
export const holdColumns = [
  { name: 'id', type: 'varchar' },
  { name: 'product_id', type: 'integer' },
  { name: 'qty', type: 'integer' },
  { name: 'status', type: 'varchar' },
  { name: 'expires_at', type: 'bigint' },
  { name: 'created_at', type: 'bigint' },
  { name: 'updated_at', type: 'bigint' },
  // Migration 0003.
  { name: 'buyer_id', type: 'varchar' },
] as const satisfies readonly (ArrayColumn & { name: keyof HoldsTable })[]

// Every column of holds: a batch in which some hold keeps a key (migration 0010) inserts these;
// one without, the columns above only (two NULL columns fewer to send and store a hold).
export const keyedHoldColumns = [...holdColumns, { name: 'idem_key', type: 'varchar' }, { name: 'idem_fingerprint', type: 'varchar' }] as const satisfies readonly (ArrayColumn & {
  name: keyof HoldsTable
})[]

// Every column of orders, as orderValues sets them: one parameter each a row inserted.
export const orderColumns = [
  'id',
  'hold_id',
  'product_id',
  'qty',
  'amount_minor',
  'currency',
  'status',
  'created_at',
  'expires_at',
  'updated_at',
  'paid_at',
  'payment_id',
  'refund_required',
  'buyer_id',
] as const satisfies readonly (keyof OrdersTable)[]

export function toProduct(row: Selectable<ProductsTable>): Product {
  return {
    id: Number(row.id),
    name: row.name,
    priceMinor: Number(row.price_minor),
    currency: row.currency,
    stock: Number(row.stock),
    reserved: Number(row.reserved),
    sold: Number(row.sold),
    createdAt: new Date(Number(row.created_at)),
    drop: {
      perBuyerLimit: row.per_buyer_limit == null ? null : Number(row.per_buyer_limit),
      perBuyerLimitSetAt: instantOrNull(row.per_buyer_limit_set_at),
      saleStartsAt: instantOrNull(row.sale_starts_at),
      saleEndsAt: instantOrNull(row.sale_ends_at),
    },
    line: { waitingQty: Number(row.waiting_qty ?? 0), waitingTickets: Number(row.waiting_tickets ?? 0), joined: Number(row.waitlist_joined ?? 0) },
  }
}

export function toTicket(row: Selectable<WaitlistTicketsTable>): Ticket {
  return {
    id: row.id,
    productId: Number(row.product_id),
    qty: Number(row.qty),
    status: row.status as TicketStatus,
    lineRank: Number(row.line_rank),
    joinSeq: Number(row.join_seq),
    presale: Number(row.presale) === 1,
    holdId: row.hold_id,
    holdTtlMs: Number(row.hold_ttl_ms),
    buyerId: row.buyer_id ?? null,
    createdAt: new Date(Number(row.created_at)),
    endedAt: instantOrNull(row.ended_at),
  }
}

export function ticketValues(ticket: Ticket): Selectable<WaitlistTicketsTable> {
  return {
    id: ticket.id,
    product_id: ticket.productId,
    qty: ticket.qty,
    status: ticket.status,
    line_rank: ticket.lineRank,
    join_seq: ticket.joinSeq,
    presale: ticket.presale ? 1 : 0,
    hold_id: ticket.holdId,
    hold_ttl_ms: ticket.holdTtlMs,
    buyer_id: ticket.buyerId,
    created_at: ticket.createdAt.getTime(),
    updated_at: (ticket.endedAt ?? ticket.createdAt).getTime(),
    ended_at: ticket.endedAt?.getTime() ?? null,
  }
}

function instantOrNull(epochMs: number | null | undefined): Date | null {
  return epochMs === null || epochMs === undefined ? null : new Date(Number(epochMs))
}

export function dropValues(drop: DropSettings) {
  return {
    per_buyer_limit: drop.perBuyerLimit,
    per_buyer_limit_set_at: drop.perBuyerLimitSetAt?.getTime() ?? null,
    sale_starts_at: drop.saleStartsAt?.getTime() ?? null,
    sale_ends_at: drop.saleEndsAt?.getTime() ?? null,
  }
}

export function toSnapshot(row: SnapshotRow): ProductSnapshot {
  const lapsedQty = Number(row.lapsed_bucket_qty ?? 0) + Number(row.lapsed_hold_qty ?? 0) + Number(row.lapsed_order_qty ?? 0) - Number(row.paid_lapsed_hold_qty ?? 0)
  return { ...toProduct(row), lapsedQty }
}

export function toHold(row: Selectable<HoldsTable>): Hold {
  return {
    id: row.id,
    productId: Number(row.product_id),
    qty: Number(row.qty),
    status: row.status as HoldStatus,
    expiresAt: new Date(Number(row.expires_at)),
    createdAt: new Date(Number(row.created_at)),
    buyerId: row.buyer_id ?? null,
  }
}

// A row that keeps a key (idem_key not null).
export function toKeyedHold(row: Selectable<HoldsTable>): KeyedHold {
  assert(row.idem_key !== null && row.idem_fingerprint !== null, 'a keyed hold row has its key and fingerprint')
  return { key: row.idem_key, fingerprint: row.idem_fingerprint, hold: toHold(row) }
}

export function holdValues(hold: Hold, key: RowKey | null = null): Selectable<HoldsTable> {
  return {
    id: hold.id,
    product_id: hold.productId,
    qty: hold.qty,
    status: hold.status,
    expires_at: hold.expiresAt.getTime(),
    created_at: hold.createdAt.getTime(),
    updated_at: hold.createdAt.getTime(),
    buyer_id: hold.buyerId,
    idem_key: key?.key ?? null,
    idem_fingerprint: key?.fingerprint ?? null,
  }
}

export function toOrder(row: Selectable<OrdersTable>): Order {
  return {
    id: row.id,
    holdId: row.hold_id,
    productId: Number(row.product_id),
    qty: Number(row.qty),
    amountMinor: Number(row.amount_minor),
    currency: row.currency,
    status: row.status as OrderStatus,
    createdAt: new Date(Number(row.created_at)),
    expiresAt: new Date(Number(row.expires_at)),
    paidAt: row.paid_at === null ? null : new Date(Number(row.paid_at)),
    paymentId: row.payment_id,
    refundRequired: Number(row.refund_required) === 1,
    buyerId: row.buyer_id ?? null,
  }
}

export function orderValues(order: Order): Selectable<OrdersTable> {
  return {
    id: order.id,
    hold_id: order.holdId,
    product_id: order.productId,
    qty: order.qty,
    amount_minor: order.amountMinor,
    currency: order.currency,
    status: order.status,
    created_at: order.createdAt.getTime(),
    expires_at: order.expiresAt.getTime(),
    updated_at: order.createdAt.getTime(),
    paid_at: order.paidAt?.getTime() ?? null,
    payment_id: order.paymentId,
    refund_required: order.refundRequired ? 1 : 0,
    buyer_id: order.buyerId,
  }
}

export function toPaymentEvent(row: Selectable<PaymentEventsTable>): PaymentEvent {
  return {
    idempotencyKey: row.idem_key,
    fingerprint: row.fingerprint,
    orderId: row.order_id,
    holdId: row.hold_id,
    status: row.status as PaymentEvent['status'],
    paymentId: row.payment_id,
    amountMinor: row.amount_minor === null ? null : Number(row.amount_minor),
    state: row.state as PaymentEvent['state'],
    outcome: row.outcome as PaymentEvent['outcome'],
    responseJson: row.response_json,
    createdAt: new Date(Number(row.created_at)),
    processedAt: row.processed_at === null ? null : new Date(Number(row.processed_at)),
  }
}

// The columns paymentEventValues fills: what one row of the multi-row insert takes.
export const paymentEventColumnsCount = 12

// The sequence number is the database's to give.
export function paymentEventValues(event: PaymentEvent): Omit<Selectable<PaymentEventsTable>, 'seq'> {
  return {
    idem_key: event.idempotencyKey,
    fingerprint: event.fingerprint,
    order_id: event.orderId,
    hold_id: event.holdId,
    status: event.status,
    payment_id: event.paymentId,
    amount_minor: event.amountMinor,
    state: event.state,
    outcome: event.outcome,
    response_json: event.responseJson,
    created_at: event.createdAt.getTime(),
    processed_at: event.processedAt?.getTime() ?? null,
  }
}
