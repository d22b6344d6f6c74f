// Table interfaces. Row types never leave store/: rows.ts maps them to domain types.
// Instants are stored as integer milliseconds since the epoch (UTC) on every engine, which
// sidesteps DATETIME precision and session time zones, and compares exactly across engines.
import type { Generated } from 'kysely'

export interface ProductsTable {
  id: Generated<number>
  name: string
  price_minor: number
  currency: string
  stock: number
  reserved: number
  sold: number
  created_at: number
  updated_at: number
  // Migration 0003 (drop settings), all nullable; instants in epoch ms.
  per_buyer_limit: number | null
  per_buyer_limit_set_at: number | null
  sale_starts_at: number | null
  sale_ends_at: number | null
  // Migration 0005 (waitlist counts; zero when a product is made).
  waiting_qty: Generated<number>
  waiting_tickets: Generated<number>
  waitlist_joined: Generated<number>
}

export interface WaitlistTicketsTable {
  id: string
  product_id: number
  qty: number
  status: string
  line_rank: number
  join_seq: number
  presale: number
  hold_id: string
  hold_ttl_ms: number
  buyer_id: string | null
  created_at: number
  updated_at: number
  ended_at: number | null
}

export interface HoldsTable {
  id: string
  product_id: number
  qty: number
  status: string
  expires_at: number
  created_at: number
  updated_at: number
  buyer_id: string | null
  // Migration 0010: a keyed hold's idempotency key and its request's fingerprint (null: no key,
  // or a key freed after its TTL).
  idem_key: string | null
  idem_fingerprint: string | null
}

export interface OrdersTable {
  id: string
  hold_id: string
  product_id: number
  qty: number
  amount_minor: number
  currency: string
  status: string
  created_at: number
  expires_at: number
  updated_at: number
  paid_at: number | null
  payment_id: string | null
  refund_required: number
  buyer_id: string | null
}

export interface PaymentEventsTable {
  seq: Generated<number>
  idem_key: string
  fingerprint: string
  order_id: string | null
  hold_id: string | null
  status: string
  payment_id: string | null
  amount_minor: number | null
  state: string
  outcome: string | null
  response_json: string | null
  created_at: number
  processed_at: number | null
}

export interface IdempotencyKeysTable {
  scope: string
  idem_key: string
  fingerprint: string
  status_code: number
  response_json: string
  created_at: number
  expires_at: number
}

// Migration 0004: units of active holds and pending orders per product and 50 ms expiry slice
// (expiry-buckets.ts). Only buckets with live units are kept.
export interface ExpiryBucketsTable {
  product_id: number
  bucket: number
  qty: number
}

export interface Database {
  products: ProductsTable
  holds: HoldsTable
  orders: OrdersTable
  payment_events: PaymentEventsTable
  idempotency_keys: IdempotencyKeysTable
  expiry_buckets: ExpiryBucketsTable
  waitlist_tickets: WaitlistTicketsTable
}
