// What the use cases need from storage. store/kysely-store.ts implements it on every engine;
// the domain never sees SQL, rows or engine names.
import type { EventLog } from './events.js'

export interface Product {
  id: number
  name: string
  priceMinor: number
  currency: string
  stock: number
  reserved: number
  sold: number
  createdAt: Date
  // Drop settings (SPEC §8); null when unset.
  drop: DropSettings
  // The waitlist's counts, kept on the product row beside stock (migration 0005).
  line: LineCounts
}

export interface LineCounts {
  // Units and tickets still waiting: held back from direct holds and from available_stock.
  waitingQty: number
  waitingTickets: number
  // Tickets ever taken: the next ticket's place in join order.
  joined: number
}

export const emptyLine: LineCounts = Object.freeze({ waitingQty: 0, waitingTickets: 0, joined: 0 })

export interface DropSettings {
  perBuyerLimit: number | null
  // When per_buyer_limit last changed: the audit judges I8 only for buyers granted units since,
  // so lowering a limit below what a buyer already has is not reported as a violation.
  perBuyerLimitSetAt: Date | null
  saleStartsAt: Date | null
  saleEndsAt: Date | null
}

export const noDropSettings: DropSettings = Object.freeze({ perBuyerLimit: null, perBuyerLimitSetAt: null, saleStartsAt: null, saleEndsAt: null })

// A product with what its unswept rows no longer hold: units of active holds and pending orders
// past their expiry count as available to readers (SPEC §4) before any sweeper has run.
export interface ProductSnapshot extends Product {
  lapsedQty: number
}

export type HoldStatus = 'active' | 'converted' | 'expired' | 'released'

export interface Hold {
  id: string
  productId: number
  qty: number
  status: HoldStatus
  expiresAt: Date
  createdAt: Date
  buyerId: string | null
}

export type TicketStatus = 'waiting' | 'admitted' | 'left' | 'closed'

// A place in a product's waitlist (SPEC §8). `holdId` is drawn when the ticket is taken and is the
// id of the hold it becomes if admitted (shown only then), so admission writes no per-ticket value.
export interface Ticket {
  id: string
  productId: number
  qty: number
  status: TicketStatus
  // Line order: tickets taken before the sale starts get a random rank below every later ticket,
  // whose rank follows join order. Never shown: it is the pre-sale draw.
  lineRank: number
  // Join order in its product (0, 1, 2, ...): the position shown before the draw.
  joinSeq: number
  presale: boolean
  holdId: string
  // The TTL the hold gets when the ticket is admitted (the join's HOLD_TTL_SECONDS).
  holdTtlMs: number
  buyerId: string | null
  createdAt: Date
  // When it was admitted, left or closed.
  endedAt: Date | null
}

export type OrderStatus = 'pending' | 'paid' | 'cancelled' | 'expired'

export interface Order {
  id: string
  holdId: string
  productId: number
  qty: number
  amountMinor: number
  currency: string
  status: OrderStatus
  createdAt: Date
  expiresAt: Date
  paidAt: Date | null
  paymentId: string | null
  refundRequired: boolean
  // The hold's buyer, inherited whoever made the order.
  buyerId: string | null
}

export type PaymentStatus = 'success' | 'failed'
export type PaymentEventState = 'waiting' | 'processed'
// What a payment event did: the order became paid or cancelled, a late success recovered the
// sale or could not (refund_required), or it changed nothing (duplicate / ignored).
export type PaymentOutcome = 'paid' | 'recovered' | 'cancelled' | 'refund_required' | 'duplicate' | 'ignored'

export interface PaymentEvent {
  idempotencyKey: string
  fingerprint: string
  orderId: string | null
  holdId: string | null
  status: PaymentStatus
  paymentId: string | null
  amountMinor: number | null
  state: PaymentEventState
  outcome: PaymentOutcome | null
  responseJson: string | null
  createdAt: Date
  processedAt: Date | null
}

export type IdempotencyScope = 'holds' | 'orders' | 'waitlist'

// `completed`: the key holds its answer (keys are written only with their answer). No version
// commits a `claimed` row (older ones claimed and completed in one transaction); one found
// anyway reads as in flight.
export type IdempotencyKeyState = 'claimed' | 'completed'

export interface IdempotencyRecord {
  scope: IdempotencyScope
  key: string
  fingerprint: string
  state: IdempotencyKeyState
  responseJson: string
  expiresAt: Date
}

// A keyed hold's key, kept in the hold's own row (migration 0010) rather than in a row of
// idempotency_keys: a keyed hold adds one index entry to a plain one's, not a row and two.
export interface RowKey {
  key: string
  fingerprint: string
}

// A hold row that keeps a key: the answer its key replays is the hold as it was created.
export interface KeyedHold extends RowKey {
  hold: Hold
}

// The answer a key keeps, with the meaning of the request that used it up.
export interface IdempotencyAnswer {
  key: string
  fingerprint: string
  responseJson: string
}

export interface NewProduct {
  name: string
  priceMinor: number
  currency: string
  stock: number
  createdAt: Date
  // Absent: no limit and no window.
  drop?: DropSettings
}

export interface ProductCountsDelta {
  reserved: number
  sold: number
  stock: number
  // The waitlist's counts (absent: unchanged).
  waitingQty?: number
  waitingTickets?: number
  joined?: number
}

export interface AuditRow {
  productId: number
  stock: number
  reserved: number
  sold: number
  activeHoldQty: number
  pendingOrderQty: number
  paidOrderQty: number
}

// A buyer of a limited product with more units than the limit, granted units since it was set.
export interface BuyerOverLimit {
  productId: number
  buyerId: string
  units: number
  perBuyerLimit: number
}

// An expiry bucket (the store's per-product tally of when reserved units lapse, what reads
// count lapsed units from) that disagrees with the active holds and pending orders in it.
export interface ExpiryBucketDrift {
  productId: number
  bucket: number
  bookQty: number
  rowsQty: number
}

// What the audit checks of the waitlist (SPEC §8): the product row's counts against the waiting
// tickets, and every admitted ticket against the hold it names.
export interface LineAuditRow {
  productId: number
  waitingQty: number
  waitingTickets: number
  ticketWaitingQty: number
  ticketWaitingCount: number
}

export interface AuditFacts {
  products: AuditRow[]
  expiryBucketDrift: ExpiryBucketDrift[]
  lines: LineAuditRow[]
  // Admitted tickets without a hold of their product, qty and buyer, or sharing a hold.
  ticketsBadlyAdmitted: string[]
  buyersOverLimit: BuyerOverLimit[]
  holdsWithManyOrders: string[]
  convertedHoldsWithoutOrder: string[]
  ordersWithoutHold: string[]
  ordersOfOtherProduct: string[]
}

export interface LapsedRow {
  id: string
  productId: number
  qty: number
}

// Every method runs inside one database transaction. Lock order, everywhere: the product row
// first (lockProduct), then its holds, orders and payment events. The one exception: freeing a
// hold's key past its TTL (freeHoldKeys) runs in a transaction of its own with no product lock;
// it changes only the key columns, which nothing reads under the lock to decide a status or a
// count. Because every writer of a product's holds' status and of its orders holds that
// product's row lock, rows read after lockProduct are stable until commit: no RETURNING or SKIP
// LOCKED is needed to know what an UPDATE changed.
export interface StoreTx {
  lockProduct(productId: number): Promise<Product | undefined>
  applyProductDelta(productId: number, delta: ProductCountsDelta): Promise<void>
  insertProduct(product: NewProduct): Promise<number>
  setDropSettings(productId: number, drop: DropSettings, now: Date): Promise<void>
  // SPEC §8: each buyer's units of the product (unlapsed active holds + unlapsed pending orders
  // + paid orders + waiting tickets), in one grouped statement; buyers with none are absent.
  buyerUnits(productId: number, buyerIds: readonly string[], now: Date): Promise<Map<string, number>>

  // One multi-row insert; `keys` (one per hold, null for none) go into the rows. A key another
  // row keeps (committed, or committing while this waits) fails it with StoredKeyConflict.
  insertHolds(holds: readonly Hold[], keys?: readonly (RowKey | null)[]): Promise<void>
  // The hold rows that keep these keys, whatever their age, in one statement.
  readHoldKeys(keys: readonly string[]): Promise<KeyedHold[]>
  // Frees these keys in the rows created at or before `createdAtOrBefore` (keys past their TTL).
  freeHoldKeys(keys: readonly string[], createdAtOrBefore: Date): Promise<void>
  getHold(holdId: string): Promise<Hold | undefined>
  getHolds(holdIds: readonly string[]): Promise<Hold[]>
  // Compare-and-set: returns how many of the given holds moved from `from` to `to`.
  setHoldsStatus(holdIds: readonly string[], from: HoldStatus, to: HoldStatus, now: Date): Promise<number>
  lapsedHolds(productId: number, now: Date, limit: number): Promise<LapsedRow[]>

  insertOrder(order: Order): Promise<void>
  insertOrders(orders: readonly Order[]): Promise<void>
  getOrder(orderId: string): Promise<Order | undefined>
  getOrderByHold(holdId: string): Promise<Order | undefined>
  // Compare-and-set on status; returns whether the order was in `from` and is now updated.
  updateOrder(order: Order, from: OrderStatus, now: Date): Promise<boolean>
  setOrdersStatus(orderIds: readonly string[], from: OrderStatus, to: OrderStatus, now: Date): Promise<number>
  lapsedOrders(productId: number, now: Date, limit: number): Promise<LapsedRow[]>

  insertTickets(tickets: readonly Ticket[]): Promise<void>
  getTicket(ticketId: string): Promise<Ticket | undefined>
  // Waiting tickets of the product with qty <= qtyMax, in line order after `afterRank`.
  waitingTicketsThatFit(productId: number, qtyMax: number, afterRank: number, limit: number): Promise<Ticket[]>
  // Waiting tickets of the product with no buyer or qty > perBuyerLimit, in line order after `afterRank`.
  waitingTicketsOverLimit(productId: number, perBuyerLimit: number, afterRank: number, limit: number): Promise<Ticket[]>
  // Compare-and-set; returns how many moved.
  setTicketsStatus(ticketIds: readonly string[], from: TicketStatus, to: TicketStatus, now: Date): Promise<number>
  // Every waiting ticket of the product becomes closed; returns how many.
  closeWaitingTickets(productId: number, now: Date): Promise<number>

  // The stored events of these keys (a webhook batch's), in one statement.
  getPaymentEvents(idempotencyKeys: readonly string[]): Promise<PaymentEvent[]>
  // One multi-row insert, in the given (arrival) order.
  insertPaymentEvents(events: readonly PaymentEvent[]): Promise<void>
  // Payments stored before their hold had an order, in arrival order.
  waitingPaymentEvents(holdIds: readonly string[]): Promise<PaymentEvent[]>
  markPaymentEventProcessed(event: PaymentEvent): Promise<void>

  // Every stored row of these keys, expired ones included, in one statement.
  readIdempotencyKeys(scope: IdempotencyScope, keys: readonly string[]): Promise<IdempotencyRecord[]>
  // Deletes the rows of these keys that have expired by `now`, in one statement.
  freeExpiredIdempotencyKeys(scope: IdempotencyScope, keys: readonly string[], now: Date): Promise<void>
  // Stores the answers of a batch's keys, in one statement. A key already stored (by another
  // transaction, committed or committing while this one waits, or one this transaction did not
  // read) fails it with StoredKeyConflict: the caller rolls back and runs the batch again,
  // reading its keys first.
  insertIdempotencyKeys(scope: IdempotencyScope, answers: readonly IdempotencyAnswer[], now: Date, expiresAt: Date): Promise<void>
  getIdempotencyRecord(scope: IdempotencyScope, key: string): Promise<IdempotencyRecord | undefined>
}

export interface TransactionOptions {
  // Names the use case in tx.retry logs and metrics.
  label: string
  // Where its tx.retry and tx.busy lines go: the log of the one request it serves, if it serves one.
  log?: EventLog
  // When the oldest request it serves was queued (performance.now(), ms): the database bound
  // (DB_TIMEOUT_MS) counts from then, not from the transaction's start. Absent: from the start.
  queuedSinceMs?: number
}

export interface Store {
  readonly engine: string
  // `upTo`: the last migration to run (the tests of a migration); absent, every one.
  migrate(upTo?: string): Promise<void>
  // Runs fn in a transaction, retrying transient conflicts (deadlock, serialization failure,
  // lock timeout) with bounded, jittered backoff; fn must therefore be safe to run twice.
  transaction<T>(options: TransactionOptions, fn: (tx: StoreTx) => Promise<T>): Promise<T>

  // Reads outside any transaction: each sees everything committed before it started.
  // `queuedSinceMs`: when the oldest read it answers was queued (as TransactionOptions).
  productSnapshot(productId: number, now: Date, queuedSinceMs?: number): Promise<ProductSnapshot | undefined>
  // The newest `limit` products, newest first.
  allProductSnapshots(now: Date, limit: number): Promise<ProductSnapshot[]>
  getHold(holdId: string): Promise<Hold | undefined>
  getOrder(orderId: string): Promise<Order | undefined>
  getTicket(ticketId: string): Promise<Ticket | undefined>
  // How many waiting tickets of its product are ahead of this one: in line order, or (before the
  // pre-sale draw, `byJoinOrder`) in join order among the pre-sale tickets.
  ticketsAhead(ticket: Ticket, byJoinOrder: boolean): Promise<number>
  // Products whose line the sweeper can move: the sale ended or sold out for good (it closes), or
  // a waiting ticket fits in the free units (the pre-sale draw at the start needs no request).
  productsWithLineWork(now: Date, limit: number): Promise<number[]>
  getPaymentEvent(idempotencyKey: string): Promise<PaymentEvent | undefined>
  getIdempotencyRecord(scope: IdempotencyScope, key: string): Promise<IdempotencyRecord | undefined>
  getHoldByKey(key: string): Promise<KeyedHold | undefined>
  productsWithLapsedRows(now: Date, limit: number): Promise<number[]>
  // Per product (the newest `limit`, newest first), the expiry of its oldest lapsed hold or order
  // still unswept.
  oldestLapsedByProduct(now: Date, limit: number): Promise<Array<{ productId: number; oldestLapsedAt: Date | null }>>
  // The expiry of the oldest lapsed hold or order still unswept, of any product (null: none).
  oldestLapsedOverall(now: Date): Promise<Date | null>
  deleteExpiredIdempotencyKeys(now: Date, limit: number): Promise<number>
  // `now` decides which holds and pending orders have lapsed (I8 counts unlapsed ones only).
  auditFacts(now?: Date): Promise<AuditFacts>
  countProducts(): Promise<number>
  ping(): Promise<void>
  close(): Promise<void>
}

// A batch stored a key that already holds a row. Not a transient conflict for the store to retry
// as it is: the batch must run again reading its keys first (keyed-batches.ts).
export class StoredKeyConflict extends Error {
  override name = 'StoredKeyConflict'
  constructor(readonly scope: IdempotencyScope) {
    super(`an idempotency key of scope ${scope} is already stored`)
  }
}
