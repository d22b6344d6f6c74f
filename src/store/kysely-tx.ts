// One transaction's statements (domain/store.ts StoreTx), on the connection the transaction
// runner (kysely-store.ts) holds.
import { CompiledQuery, sql, type Kysely } from 'kysely'
import { noDropSettings, StoredKeyConflict } from '../domain/store.js'
import type {
  DropSettings,
  Hold,
  HoldStatus,
  IdempotencyAnswer,
  IdempotencyRecord,
  IdempotencyScope,
  KeyedHold,
  LapsedRow,
  NewProduct,
  Order,
  OrderStatus,
  PaymentEvent,
  Product,
  ProductCountsDelta,
  RowKey,
  StoreTx,
  Ticket,
  TicketStatus,
} from '../domain/store.js'
import type { Engine } from './engines/engine.js'
import { ExpiryBook } from './expiry-buckets.js'
import type { HotSql } from './hot-sql.js'
import { findHold, findIdempotencyRecord, findKeyedHolds, findOrder } from './reads.js'
import { freeExpiredKeys } from './idempotency-keys.js'
import { runWrite } from './write-behind.js'
import { dropValues, orderColumns, orderValues, paymentEventColumnsCount, paymentEventValues, toHold, toOrder, toPaymentEvent } from './rows.js'
import type { Database } from './schema.js'
import { closeWaiting, findTicket, insertTickets, moveTickets, waitingTicketsOverLimit, waitingTicketsThatFit } from './waitlist-sql.js'
import { inListShape, type StatementShape } from './statement-shape.js'

type Db = Kysely<Database>

// The statements whose parameters grow with the rows they touch.
export const holdsByIdShape = inListShape('reading holds by id', 0)
// Beside the ids: the new status, updated_at and the status compared against.
export const moveStatusShape = inListShape('moving holds or orders to another status', 3)
// Beside the hold ids: the state.
export const waitingPaymentEventsShape = inListShape('reading the payments waiting on holds', 1)
// Beside the buyer ids (three times: holds, orders, waiting tickets): product ids, statuses, the clock.
export const buyerUnitsShape: StatementShape = {
  statement: "the count of a batch's buyers' units",
  parameters: (engine) => (engine.perElementSql ? { fixed: 3, perRow: 0 } : { fixed: 9, perRow: 3 }),
}
// Beside the keys: nothing to read them; to free them, the two nulls set and the time.
export const readHoldKeysShape = inListShape('reading holds by idempotency key', 0)
export const freeHoldKeysShape = inListShape('freeing the expired keys of holds', 3)
export const paymentEventsByKeyShape = inListShape('reading payment events by idempotency key', 0)
export const insertPaymentEventsShape: StatementShape = {
  statement: 'the multi-row insert of payment events',
  parameters: () => ({ fixed: 0, perRow: paymentEventColumnsCount }),
}
export const insertOrdersShape: StatementShape = { statement: 'the multi-row insert of orders', parameters: () => ({ fixed: 0, perRow: orderColumns.length }) }

// The statuses in which a row's units count in the expiry buckets (expiry-buckets.ts).
const liveStatus = { holds: 'active', orders: 'pending' } as const

export class KyselyTx implements StoreTx {
  // Every change of a live row is noted here as it is made; written once, before commit (finish).
  private readonly expiryBook = new ExpiryBook()

  // Where the engine merges writes (write-behind.ts), the writes a batch makes last wait on the
  // connection and go with the next statement's round trip or the commit's.
  private readonly defer: boolean

  constructor(
    private readonly db: Db,
    private readonly engine: Engine,
    private readonly hotSql: HotSql,
  ) {
    this.defer = engine.writeMerging !== undefined
  }

  // Called by the transaction runner after the work and before commit.
  async finish(): Promise<void> {
    await this.expiryBook.flush(this.db, this.engine, this.defer)
  }

  async lockProduct(productId: number): Promise<Product | undefined> {
    return this.hotSql.lockProduct(this.db, productId)
  }

  async applyProductDelta(productId: number, delta: ProductCountsDelta): Promise<void> {
    await this.hotSql.applyProductDelta(this.db, productId, delta, new Date(), this.defer)
  }

  async insertProduct(product: NewProduct): Promise<number> {
    const values = {
      name: product.name,
      price_minor: product.priceMinor,
      currency: product.currency,
      stock: product.stock,
      reserved: 0,
      sold: 0,
      created_at: product.createdAt.getTime(),
      updated_at: product.createdAt.getTime(),
      ...dropValues(product.drop ?? noDropSettings),
    }
    if (this.engine.supportsReturning) {
      const row = await this.db.insertInto('products').values(values).returning('id').executeTakeFirstOrThrow()
      return Number(row.id)
    }
    const result = await this.db.insertInto('products').values(values).executeTakeFirstOrThrow()
    return Number(result.insertId)
  }

  async setDropSettings(productId: number, drop: DropSettings, now: Date): Promise<void> {
    const result = await this.db
      .updateTable('products')
      .set({ ...dropValues(drop), updated_at: now.getTime() })
      .where('id', '=', productId)
      .executeTakeFirst()
    if (Number(result.numUpdatedRows) !== 1) throw new Error(`product ${productId} vanished under its lock`)
  }

  async buyerUnits(productId: number, buyerIds: readonly string[], now: Date): Promise<Map<string, number>> {
    if (buyerIds.length === 0) return new Map()
    const nowMs = now.getTime()
    const perBuyer = this.engine.perElementSql
    if (perBuyer) {
      // $1 the product, $2 the buyer ids, $3 the clock: the same three subqueries as below.
      const each = (inner: string) => perBuyer(2, 'varchar', inner)
      // `product_id + 0`: only the buyer-first indexes can serve these (migration 0007).
      const text =
        `select x.buyer_id, sum(x.qty) as units from (` +
        each(`select buyer_id, qty from holds where buyer_id = u.v and product_id + 0 = $1 and status = 'active' and expires_at > $3`) +
        ` union all ` +
        each(`select buyer_id, qty from orders where buyer_id = u.v and product_id + 0 = $1 and (status = 'paid' or (status = 'pending' and expires_at > $3))`) +
        ` union all ` +
        each(`select buyer_id, qty from waitlist_tickets where buyer_id = u.v and product_id + 0 = $1 and status = 'waiting'`) +
        `) as x group by x.buyer_id`
      const { rows } = await this.db.executeQuery<{ buyer_id: string; units: unknown }>(CompiledQuery.raw(text, [productId, buyerIds, nowMs]))
      return new Map(rows.map((row) => [row.buyer_id, Number(row.units)]))
    }
    return this.hotSql.buyerUnits(this.db, productId, buyerIds, nowMs)
  }

  async insertHolds(holds: readonly Hold[], keys?: readonly (RowKey | null)[]): Promise<void> {
    // As for insertIdempotencyKeys: a key another row keeps fails the insert, or the statement
    // that sends it merged, with a unique violation, and the batch runs again reading its keys.
    const mapError = keys ? (error: unknown): unknown => (this.engine.isUniqueViolation(error) ? new StoredKeyConflict('holds') : error) : undefined
    await this.hotSql.insertHolds(this.db, holds, { keys, mapError, defer: this.defer })
    for (const hold of holds) if (hold.status === liveStatus.holds) this.expiryBook.note(hold.productId, hold.expiresAt.getTime(), hold.qty)
  }

  async getHold(holdId: string): Promise<Hold | undefined> {
    return findHold(this.db, holdId)
  }

  async getHolds(holdIds: readonly string[]): Promise<Hold[]> {
    if (holdIds.length === 0) return []
    const rows = await this.db.selectFrom('holds').selectAll().where('id', 'in', holdIds).execute()
    return rows.map(toHold)
  }

  async setHoldsStatus(holdIds: readonly string[], from: HoldStatus, to: HoldStatus, now: Date): Promise<number> {
    return this.moveStatus('holds', holdIds, from, to, now)
  }

  async lapsedHolds(productId: number, now: Date, limit: number): Promise<LapsedRow[]> {
    return this.lapsedRows('holds', 'active', productId, now, limit)
  }

  // Compare-and-set on status: only rows still in `from` move, and the count says how many.
  private async moveStatus(table: 'holds' | 'orders', ids: readonly string[], from: string, to: string, now: Date): Promise<number> {
    if (ids.length === 0) return 0
    const live = liveStatus[table]
    if (from === to || (from !== live && to !== live)) {
      const result = await this.db.updateTable(table).set({ status: to, updated_at: now.getTime() }).where('id', 'in', ids).where('status', '=', from).executeTakeFirst()
      return Number(result.numUpdatedRows)
    }
    // Rows entering or leaving the live status change their bucket by their qty: the rows that
    // actually moved are needed, from RETURNING where there is one, else read first (the product
    // row lock keeps them as read until commit).
    const sign = to === live ? 1 : -1
    const update = this.db.updateTable(table).set({ status: to, updated_at: now.getTime() }).where('id', 'in', ids).where('status', '=', from)
    let moved: Array<{ product_id: number; qty: number; expires_at: number }>
    if (this.engine.supportsReturning) {
      moved = await update.returning(['product_id', 'qty', 'expires_at']).execute()
    } else {
      moved = await this.db.selectFrom(table).select(['product_id', 'qty', 'expires_at']).where('id', 'in', ids).where('status', '=', from).execute()
      const result = await update.executeTakeFirst()
      if (Number(result.numUpdatedRows) !== moved.length) throw new Error(`${table} changed under the product lock: read ${moved.length}, moved ${result.numUpdatedRows}`)
    }
    for (const row of moved) this.expiryBook.note(Number(row.product_id), Number(row.expires_at), sign * Number(row.qty))
    return moved.length
  }

  // Rows of one product still `liveStatus` whose expiry has passed, oldest first.
  private async lapsedRows(table: 'holds' | 'orders', liveStatus: string, productId: number, now: Date, limit: number): Promise<LapsedRow[]> {
    const rows = await this.db
      .selectFrom(table)
      .select(['id', 'product_id', 'qty'])
      .where('product_id', '=', productId)
      .where('status', '=', liveStatus)
      .where('expires_at', '<=', now.getTime())
      .orderBy('expires_at')
      .limit(limit)
      .execute()
    return rows.map((row) => ({ id: row.id, productId: Number(row.product_id), qty: Number(row.qty) }))
  }

  async insertOrder(order: Order): Promise<void> {
    await this.insertOrders([order])
  }

  async insertOrders(orders: readonly Order[]): Promise<void> {
    if (orders.length === 0) return
    await this.db.insertInto('orders').values(orders.map(orderValues)).execute()
    for (const order of orders) if (order.status === liveStatus.orders) this.expiryBook.note(order.productId, order.expiresAt.getTime(), order.qty)
  }

  async getOrder(orderId: string): Promise<Order | undefined> {
    return findOrder(this.db, orderId)
  }

  async getOrderByHold(holdId: string): Promise<Order | undefined> {
    const row = await this.db.selectFrom('orders').selectAll().where('hold_id', '=', holdId).executeTakeFirst()
    return row ? toOrder(row) : undefined
  }

  async updateOrder(order: Order, from: OrderStatus, now: Date): Promise<boolean> {
    const result = await this.db
      .updateTable('orders')
      .set({
        status: order.status,
        paid_at: order.paidAt?.getTime() ?? null,
        payment_id: order.paymentId,
        refund_required: order.refundRequired ? 1 : 0,
        updated_at: now.getTime(),
      })
      .where('id', '=', order.id)
      .where('status', '=', from)
      .executeTakeFirst()
    const updated = Number(result.numUpdatedRows) === 1
    // `order` is the row read under the product lock with its new status: its qty and expiry are the stored ones.
    const liveChange = (order.status === liveStatus.orders ? 1 : 0) - (from === liveStatus.orders ? 1 : 0)
    if (updated && liveChange !== 0) this.expiryBook.note(order.productId, order.expiresAt.getTime(), liveChange * order.qty)
    return updated
  }

  async setOrdersStatus(orderIds: readonly string[], from: OrderStatus, to: OrderStatus, now: Date): Promise<number> {
    return this.moveStatus('orders', orderIds, from, to, now)
  }

  async lapsedOrders(productId: number, now: Date, limit: number): Promise<LapsedRow[]> {
    return this.lapsedRows('orders', 'pending', productId, now, limit)
  }

  insertTickets(tickets: readonly Ticket[]): Promise<void> {
    return insertTickets(this.db, tickets)
  }

  getTicket(ticketId: string): Promise<Ticket | undefined> {
    return findTicket(this.db, ticketId)
  }

  waitingTicketsThatFit(productId: number, qtyMax: number, afterRank: number, limit: number): Promise<Ticket[]> {
    return waitingTicketsThatFit(this.db, productId, qtyMax, afterRank, limit)
  }

  waitingTicketsOverLimit(productId: number, perBuyerLimit: number, afterRank: number, limit: number): Promise<Ticket[]> {
    return waitingTicketsOverLimit(this.db, productId, perBuyerLimit, afterRank, limit)
  }

  setTicketsStatus(ticketIds: readonly string[], from: TicketStatus, to: TicketStatus, now: Date): Promise<number> {
    return moveTickets(this.db, ticketIds, from, to, now)
  }

  closeWaitingTickets(productId: number, now: Date): Promise<number> {
    return closeWaiting(this.db, productId, now)
  }

  async getPaymentEvents(idempotencyKeys: readonly string[]): Promise<PaymentEvent[]> {
    if (idempotencyKeys.length === 0) return []
    const rows = await this.db.selectFrom('payment_events').selectAll().where('idem_key', 'in', idempotencyKeys).execute()
    return rows.map(toPaymentEvent)
  }

  async insertPaymentEvents(events: readonly PaymentEvent[]): Promise<void> {
    if (events.length === 0) return
    await this.db.insertInto('payment_events').values(events.map(paymentEventValues)).execute()
  }

  async waitingPaymentEvents(holdIds: readonly string[]): Promise<PaymentEvent[]> {
    if (holdIds.length === 0) return []
    const rows = await this.db.selectFrom('payment_events').selectAll().where('hold_id', 'in', holdIds).where('state', '=', 'waiting').orderBy('seq').execute()
    return rows.map(toPaymentEvent)
  }

  async markPaymentEventProcessed(event: PaymentEvent): Promise<void> {
    const result = await this.db
      .updateTable('payment_events')
      .set({
        state: 'processed',
        order_id: event.orderId,
        outcome: event.outcome,
        response_json: event.responseJson,
        processed_at: event.processedAt?.getTime() ?? null,
      })
      .where('idem_key', '=', event.idempotencyKey)
      .where('state', '=', 'waiting')
      .executeTakeFirst()
    if (Number(result.numUpdatedRows) !== 1) throw new Error(`payment event ${event.idempotencyKey} was not waiting`)
  }

  readHoldKeys(keys: readonly string[]): Promise<KeyedHold[]> {
    return findKeyedHolds(this.db, keys)
  }

  async freeHoldKeys(keys: readonly string[], createdAtOrBefore: Date): Promise<void> {
    if (keys.length === 0) return
    await this.db.updateTable('holds').set({ idem_key: null, idem_fingerprint: null }).where('idem_key', 'in', keys).where('created_at', '<=', createdAtOrBefore.getTime()).execute()
  }

  readIdempotencyKeys(scope: IdempotencyScope, keys: readonly string[]): Promise<IdempotencyRecord[]> {
    return this.hotSql.idempotencyKeys(this.db, scope, keys)
  }

  freeExpiredIdempotencyKeys(scope: IdempotencyScope, keys: readonly string[], now: Date): Promise<void> {
    return freeExpiredKeys(this.db, scope, keys, now)
  }

  insertIdempotencyKeys(scope: IdempotencyScope, answers: readonly IdempotencyAnswer[], now: Date, expiresAt: Date): Promise<void> {
    // Deferred, the violation fails whichever statement sends the merged writes; those writes
    // are all new rows but for the counts, so it is this insert's unless a minted id collided,
    // and running the batch again (StoredKeyConflict) is right either way.
    const mapError = (error: unknown): unknown => (this.engine.isUniqueViolation(error) ? new StoredKeyConflict(scope) : error)
    return this.hotSql.insertIdempotencyKeys(this.db, scope, answers, now, expiresAt, { what: 'the insert of idempotency keys', mapError, defer: this.defer })
  }

  async getIdempotencyRecord(scope: IdempotencyScope, key: string): Promise<IdempotencyRecord | undefined> {
    return findIdempotencyRecord(this.db, scope, key)
  }
}
