// The only SQL in the service. Implements domain/store.ts on SQLite, PostgreSQL and MySQL;
// what differs between them is asked of the engine as a capability.
import { setTimeout as sleep } from 'node:timers/promises'
import { CompiledQuery, Kysely, Migrator, sql, type Selectable } from 'kysely'
import type { EngineName } from '../config.js'
import { DomainError } from '../domain/errors.js'
import type { Observer } from '../domain/events.js'
import type {
  AuditFacts,
  Hold,
  HoldStatus,
  IdempotencyAnswer,
  IdempotencyClaim,
  IdempotencyRecord,
  IdempotencyScope,
  LapsedRow,
  NewProduct,
  Order,
  OrderStatus,
  PaymentEvent,
  Product,
  ProductCountsDelta,
  ProductSnapshot,
  Store,
  StoreTx,
  TransactionOptions,
} from '../domain/store.js'
import type { Engine } from './engines/engine.js'
import { claimKeys, completeKeys, releaseKeys, statusCodeOf, toIdempotencyRecord } from './idempotency-keys.js'
import { mysqlEngine } from './engines/mysql.js'
import { postgresEngine } from './engines/postgres.js'
import { sqliteEngine } from './engines/sqlite.js'
import { migrationProvider, type SeedProduct } from './migrations/index.js'
import type { Database, HoldsTable, OrdersTable, PaymentEventsTable, ProductsTable } from './schema.js'

export const engines: Record<EngineName, Engine> = { sqlite: sqliteEngine, postgres: postgresEngine, mysql: mysqlEngine }

export interface StoreOptions {
  databaseUrl: string
  engine: EngineName
  observer: Observer
  txAttemptsMax: number
  poolSizeMax?: number
  // Product 1 of a new database (see migrations/0002_seed_product).
  seed?: SeedProduct
}

const retryBackoffMsMin = 2
const retryBackoffMsMax = 200
// While the database is away every request fails alike; one log line per interval says so.
const unavailableLogIntervalMs = 5_000

type Db = Kysely<Database>

export class KyselyStore implements Store {
  readonly engine: EngineName
  private readonly db: Db
  private readonly capabilities: Engine
  private readonly hotSql = new HotSql()
  private unavailableLoggedAtMs = -Infinity

  constructor(private readonly options: StoreOptions) {
    this.engine = options.engine
    this.capabilities = engines[options.engine]
    const dialect = this.capabilities.createDialect(options.databaseUrl, {
      poolSizeMax: options.poolSizeMax ?? 16,
      onConnectionError: (error) => this.noteUnavailable(error),
    })
    this.db = new Kysely<Database>({ dialect })
  }

  async migrate(): Promise<void> {
    const schema = this.capabilities.schemaOf(this.options.databaseUrl)
    const migrator = new Migrator({ db: this.db, provider: migrationProvider(this.capabilities, this.options.seed), ...(schema ? { migrationTableSchema: schema } : {}) })
    // The migrator first introspects the catalogue of every schema; another schema being dropped
    // at that moment (other tenants, parallel test suites) makes that look-up fail. Nothing has
    // run yet then, and each migration runs in its own transaction, so a bounded retry is safe.
    const attemptsMax = 5
    for (let attempt = 1; ; attempt++) {
      const { error, results } = await migrator.migrateToLatest()
      const failed = results?.find((result) => result.status === 'Error')
      if (!error && !failed) return
      if (attempt >= attemptsMax || failed) {
        throw new Error(`migration failed${failed ? ` at ${failed.migrationName}` : ''}: ${String(error)}`)
      }
      this.options.observer.emit({ name: 'tx.retry', label: 'migrate', attempt, delayMs: 100 * attempt, reason: String(error).slice(0, 200) })
      await sleep(100 * attempt)
    }
  }

  async transaction<T>(options: TransactionOptions, fn: (tx: StoreTx) => Promise<T>): Promise<T> {
    const { txAttemptsMax, observer } = this.options
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.db.connection().execute(async (connection) => {
          await sql.raw(this.capabilities.beginSql).execute(connection)
          try {
            const result = await fn(new KyselyTx(connection, this.capabilities, this.hotSql))
            await sql`commit`.execute(connection)
            return result
          } catch (error) {
            await sql`rollback`.execute(connection).catch(() => undefined)
            throw error
          }
        })
      } catch (error) {
        // A unique violation on an idempotency key means a duplicate committed concurrently:
        // the retried attempt sees it and answers as a replay.
        const transient = this.capabilities.isTransientConflict(error) || this.capabilities.isUniqueViolation(error)
        if (!transient) {
          if (this.capabilities.isUnavailable(error)) throw this.unavailable(error)
          throw error
        }
        if (attempt >= txAttemptsMax) {
          observer.emit({ name: 'tx.busy', label: options.label, attempts: attempt })
          throw new DomainError('busy', { retry_after_s: 1 }, `gave up after ${attempt} attempts: ${String(error)}`)
        }
        // Full jitter on an exponential ceiling: racing retriers spread out instead of colliding again.
        const ceilingMs = Math.min(retryBackoffMsMax, retryBackoffMsMin * 2 ** attempt)
        const delayMs = Math.round(Math.random() * ceilingMs)
        observer.emit({ name: 'tx.retry', label: options.label, attempt, delayMs, reason: errorText(error) })
        await sleep(delayMs)
      }
    }
  }

  // Reads that fail because the database is gone answer 503 busy (retry later), not 500.
  private async read<T>(query: () => Promise<T>): Promise<T> {
    try {
      return await query()
    } catch (error) {
      if (this.capabilities.isUnavailable(error)) throw this.unavailable(error)
      throw error
    }
  }

  private unavailable(error: unknown): DomainError {
    this.noteUnavailable(error)
    return new DomainError('busy', { retry_after_s: 1 }, 'database unavailable')
  }

  private noteUnavailable(error: unknown): void {
    const nowMs = Date.now()
    if (nowMs - this.unavailableLoggedAtMs < unavailableLogIntervalMs) return
    this.unavailableLoggedAtMs = nowMs
    this.options.observer.emit({ name: 'db.unavailable', reason: errorText(error) })
  }

  // Every coalesced read burst sends this one: compiled once, not built anew each time.
  async productSnapshot(productId: number, now: Date): Promise<ProductSnapshot | undefined> {
    const template = this.hotSql.template('productSnapshot', [snapshotNowSentinel, snapshotProductSentinel], () =>
      this.snapshotQuery(new Date(snapshotNowSentinel)).where('p.id', '=', snapshotProductSentinel).compile(),
    )
    const parameters = template.parameters.map((value) => (value === snapshotNowSentinel ? now.getTime() : value === snapshotProductSentinel ? productId : value))
    const { rows } = await this.read(() => this.db.executeQuery<SnapshotRow>(CompiledQuery.raw(template.sql, parameters)))
    const row = rows[0]
    return row ? toSnapshot(row) : undefined
  }

  async allProductSnapshots(now: Date, limit: number): Promise<ProductSnapshot[]> {
    const rows = await this.snapshotQuery(now).orderBy('p.id').limit(limit).execute()
    return rows.map(toSnapshot)
  }

  private snapshotQuery(now: Date) {
    const nowMs = now.getTime()
    return this.db
      .selectFrom('products as p')
      .selectAll('p')
      .select((eb) => [
        eb
          .selectFrom('holds as h')
          .select(sql<number>`coalesce(sum(h.qty), 0)`.as('q'))
          .whereRef('h.product_id', '=', 'p.id')
          .where('h.status', '=', 'active')
          .where('h.expires_at', '<=', nowMs)
          // A lapsed hold with a success waiting on it is not free: settling it will sell its
          // units to that payer (a late payment), so readers must not be promised them.
          .where((inner) =>
            inner.not(
              inner.exists(
                inner
                  .selectFrom('payment_events as pe')
                  .select('pe.seq')
                  .whereRef('pe.hold_id', '=', 'h.id')
                  .where('pe.state', '=', 'waiting')
                  .where('pe.status', '=', 'success'),
              ),
            ),
          )
          .as('lapsed_hold_qty'),
        eb
          .selectFrom('orders as o')
          .select(sql<number>`coalesce(sum(o.qty), 0)`.as('q'))
          .whereRef('o.product_id', '=', 'p.id')
          .where('o.status', '=', 'pending')
          .where('o.expires_at', '<=', nowMs)
          .as('lapsed_order_qty'),
      ])
  }

  async getHold(holdId: string): Promise<Hold | undefined> {
    const row = await this.read(() => this.db.selectFrom('holds').selectAll().where('id', '=', holdId).executeTakeFirst())
    return row ? toHold(row) : undefined
  }

  async getOrder(orderId: string): Promise<Order | undefined> {
    const row = await this.read(() => this.db.selectFrom('orders').selectAll().where('id', '=', orderId).executeTakeFirst())
    return row ? toOrder(row) : undefined
  }

  async getPaymentEvent(idempotencyKey: string): Promise<PaymentEvent | undefined> {
    const row = await this.read(() => this.db.selectFrom('payment_events').selectAll().where('idem_key', '=', idempotencyKey).executeTakeFirst())
    return row ? toPaymentEvent(row) : undefined
  }

  async getIdempotencyRecord(scope: IdempotencyScope, key: string): Promise<IdempotencyRecord | undefined> {
    return this.read(() => readIdempotencyRecord(this.db, scope, key))
  }

  // Products with lapsed rows, found through the per-product (product_id, status, expires_at)
  // indexes: a hot product's holds need no second index just for the sweeper.
  async productsWithLapsedRows(now: Date, limit: number): Promise<number[]> {
    const nowMs = now.getTime()
    const rows = await this.db
      .selectFrom('products as p')
      .select('p.id')
      .where((eb) =>
        eb.or([
          eb.exists(eb.selectFrom('holds as h').select('h.id').whereRef('h.product_id', '=', 'p.id').where('h.status', '=', 'active').where('h.expires_at', '<=', nowMs)),
          eb.exists(eb.selectFrom('orders as o').select('o.id').whereRef('o.product_id', '=', 'p.id').where('o.status', '=', 'pending').where('o.expires_at', '<=', nowMs)),
        ]),
      )
      // Ascending product ids: sweepers lock products in one order.
      .orderBy('p.id')
      .limit(limit)
      .execute()
    return rows.map((row) => Number(row.id))
  }

  async deleteExpiredIdempotencyKeys(now: Date, limit: number): Promise<number> {
    const expired = await this.db
      .selectFrom('idempotency_keys')
      .select(['scope', 'idem_key'])
      .where('expires_at', '<=', now.getTime())
      .where('status_code', '!=', statusCodeOf('claimed'))
      .limit(limit)
      .execute()
    let deleted = 0
    for (const row of expired) {
      const result = await this.db
        .deleteFrom('idempotency_keys')
        .where('scope', '=', row.scope)
        .where('idem_key', '=', row.idem_key)
        .where('expires_at', '<=', now.getTime())
        .executeTakeFirst()
      deleted += Number(result.numDeletedRows)
    }
    return deleted
  }

  async auditFacts(): Promise<AuditFacts> {
    const products = await this.db
      .selectFrom('products as p')
      .select(['p.id', 'p.stock', 'p.reserved', 'p.sold'])
      .select((eb) => [
        eb.selectFrom('holds as h').select(sql<number>`coalesce(sum(h.qty), 0)`.as('q')).whereRef('h.product_id', '=', 'p.id').where('h.status', '=', 'active').as('active_hold_qty'),
        eb.selectFrom('orders as o').select(sql<number>`coalesce(sum(o.qty), 0)`.as('q')).whereRef('o.product_id', '=', 'p.id').where('o.status', '=', 'pending').as('pending_order_qty'),
        eb.selectFrom('orders as o').select(sql<number>`coalesce(sum(o.qty), 0)`.as('q')).whereRef('o.product_id', '=', 'p.id').where('o.status', '=', 'paid').as('paid_order_qty'),
      ])
      .orderBy('p.id')
      .execute()
    const holdsWithManyOrders = await this.db.selectFrom('orders').select('hold_id').groupBy('hold_id').having(sql`count(*)`, '>', 1).execute()
    const convertedHoldsWithoutOrder = await this.db
      .selectFrom('holds as h')
      .leftJoin('orders as o', 'o.hold_id', 'h.id')
      .select('h.id')
      .where('h.status', '=', 'converted')
      .where('o.id', 'is', null)
      .execute()
    const ordersWithoutHold = await this.db.selectFrom('orders as o').leftJoin('holds as h', 'h.id', 'o.hold_id').select('o.id').where('h.id', 'is', null).execute()
    const ordersOfOtherProduct = await this.db
      .selectFrom('orders as o')
      .innerJoin('holds as h', 'h.id', 'o.hold_id')
      .select('o.id')
      .where((eb) => eb.or([eb('h.product_id', '!=', eb.ref('o.product_id')), eb('h.qty', '!=', eb.ref('o.qty'))]))
      .execute()
    return {
      products: products.map((row) => ({
        productId: Number(row.id),
        stock: Number(row.stock),
        reserved: Number(row.reserved),
        sold: Number(row.sold),
        activeHoldQty: Number(row.active_hold_qty),
        pendingOrderQty: Number(row.pending_order_qty),
        paidOrderQty: Number(row.paid_order_qty),
      })),
      holdsWithManyOrders: holdsWithManyOrders.map((row) => row.hold_id),
      convertedHoldsWithoutOrder: convertedHoldsWithoutOrder.map((row) => row.id),
      ordersWithoutHold: ordersWithoutHold.map((row) => row.id),
      ordersOfOtherProduct: ordersOfOtherProduct.map((row) => row.id),
    }
  }

  async countProducts(): Promise<number> {
    const row = await this.db.selectFrom('products').select(sql<number>`count(*)`.as('n')).executeTakeFirstOrThrow()
    return Number(row.n)
  }

  async ping(): Promise<void> {
    await sql`select 1`.execute(this.db)
  }

  async close(): Promise<void> {
    await this.db.destroy()
  }
}


// The statements of the hold hot path, compiled by Kysely once (per row count for the insert)
// and then run with fresh parameters: building and compiling them on every batch cost more CPU
// than the database spent executing them. The first build checks, with sentinel values, that
// the parameters come out in the order the callers pass them.
class HotSql {
  private readonly texts = new Map<string, string>()
  private readonly templates = new Map<string, { sql: string; parameters: readonly unknown[] }>()

  // For statements with constant parameters besides the variable ones: the caller swaps each
  // sentinel in `parameters` for its value. Each sentinel must appear.
  template(key: string, sentinels: readonly unknown[], build: () => CompiledQuery): { sql: string; parameters: readonly unknown[] } {
    let template = this.templates.get(key)
    if (template === undefined) {
      const compiled = build()
      const missing = sentinels.filter((sentinel) => !compiled.parameters.includes(sentinel))
      if (missing.length > 0) throw new Error(`hot statement ${key} lacks the sentinels ${JSON.stringify(missing)}`)
      template = { sql: compiled.sql, parameters: compiled.parameters }
      this.templates.set(key, template)
    }
    return template
  }

  text(key: string, sentinels: readonly unknown[], build: () => CompiledQuery): string {
    let text = this.texts.get(key)
    if (text === undefined) {
      const compiled = build()
      if (JSON.stringify(compiled.parameters) !== JSON.stringify(sentinels)) {
        throw new Error(`hot statement ${key} has parameters ${JSON.stringify(compiled.parameters)}, expected ${JSON.stringify(sentinels)}`)
      }
      text = compiled.sql
      this.texts.set(key, text)
    }
    return text
  }
}

const holdColumns = ['id', 'product_id', 'qty', 'status', 'expires_at', 'created_at', 'updated_at'] as const
// The column types of migration 0001, in holdColumns' order.
const insertHoldsUnnestSql =
  `insert into holds (${holdColumns.join(', ')}) ` +
  'select * from unnest($1::varchar[], $2::integer[], $3::integer[], $4::varchar[], $5::bigint[], $6::bigint[], $7::bigint[])'

class KyselyTx implements StoreTx {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly engine: Engine,
    private readonly hotSql: HotSql,
  ) {}

  async lockProduct(productId: number): Promise<Product | undefined> {
    const text = this.hotSql.text('lockProduct', [-1], () => {
      const query = this.db.selectFrom('products').selectAll().where('id', '=', -1)
      return (this.engine.supportsForUpdate ? query.forUpdate() : query).compile()
    })
    const { rows } = await this.db.executeQuery<Selectable<ProductsTable>>(CompiledQuery.raw(text, [productId]))
    const row = rows[0]
    return row ? toProduct(row) : undefined
  }

  async applyProductDelta(productId: number, delta: ProductCountsDelta): Promise<void> {
    const sentinels = [-11, -12, -13, -14, -15]
    const text = this.hotSql.text('applyProductDelta', sentinels, () =>
      this.db
        .updateTable('products')
        .set((eb) => ({ reserved: eb('reserved', '+', -11), sold: eb('sold', '+', -12), stock: eb('stock', '+', -13), updated_at: -14 }))
        .where('id', '=', -15)
        .compile(),
    )
    const result = await this.db.executeQuery(CompiledQuery.raw(text, [delta.reserved, delta.sold, delta.stock, Date.now(), productId]))
    if (Number(result.numAffectedRows ?? 0) !== 1) throw new Error(`product ${productId} vanished under its lock`)
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
    }
    if (this.engine.supportsReturning) {
      const row = await this.db.insertInto('products').values(values).returning('id').executeTakeFirstOrThrow()
      return Number(row.id)
    }
    const result = await this.db.insertInto('products').values(values).executeTakeFirstOrThrow()
    return Number(result.insertId)
  }

  async insertHolds(holds: readonly Hold[]): Promise<void> {
    if (holds.length === 0) return
    if (this.engine.insertManyStyle === 'unnest') {
      const columns = holdColumns.map((): unknown[] => [])
      for (const hold of holds) {
        const row = [hold.id, hold.productId, hold.qty, hold.status, hold.expiresAt.getTime(), hold.createdAt.getTime(), hold.createdAt.getTime()]
        for (const [column, value] of row.entries()) columns[column]!.push(value)
      }
      await this.db.executeQuery(CompiledQuery.raw(insertHoldsUnnestSql, columns))
      return
    }
    const sentinels = holds.flatMap((_, row) => holdColumns.map((_, column) => `s${row}_${column}`))
    const text = this.hotSql.text(`insertHolds:${holds.length}`, sentinels, () =>
      this.db
        .insertInto('holds')
        .values(holds.map((_, row) => Object.fromEntries(holdColumns.map((name, column) => [name, `s${row}_${column}`])) as never))
        .compile(),
    )
    const parameters = holds.flatMap((hold) => [
      hold.id,
      hold.productId,
      hold.qty,
      hold.status,
      hold.expiresAt.getTime(),
      hold.createdAt.getTime(),
      hold.createdAt.getTime(),
    ])
    await this.db.executeQuery(CompiledQuery.raw(text, parameters))
  }

  async getHold(holdId: string): Promise<Hold | undefined> {
    const row = await this.db.selectFrom('holds').selectAll().where('id', '=', holdId).executeTakeFirst()
    return row ? toHold(row) : undefined
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
    const result = await this.db.updateTable(table).set({ status: to, updated_at: now.getTime() }).where('id', 'in', ids).where('status', '=', from).executeTakeFirst()
    return Number(result.numUpdatedRows)
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
    await this.db.insertInto('orders').values(orderValues(order)).execute()
  }

  async insertOrders(orders: readonly Order[]): Promise<void> {
    if (orders.length === 0) return
    await this.db.insertInto('orders').values(orders.map(orderValues)).execute()
  }

  async getOrder(orderId: string): Promise<Order | undefined> {
    const row = await this.db.selectFrom('orders').selectAll().where('id', '=', orderId).executeTakeFirst()
    return row ? toOrder(row) : undefined
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
    return Number(result.numUpdatedRows) === 1
  }

  async setOrdersStatus(orderIds: readonly string[], from: OrderStatus, to: OrderStatus, now: Date): Promise<number> {
    return this.moveStatus('orders', orderIds, from, to, now)
  }

  async lapsedOrders(productId: number, now: Date, limit: number): Promise<LapsedRow[]> {
    return this.lapsedRows('orders', 'pending', productId, now, limit)
  }

  async getPaymentEvent(idempotencyKey: string): Promise<PaymentEvent | undefined> {
    const row = await this.db.selectFrom('payment_events').selectAll().where('idem_key', '=', idempotencyKey).executeTakeFirst()
    return row ? toPaymentEvent(row) : undefined
  }

  async insertPaymentEvent(event: PaymentEvent): Promise<void> {
    await this.db
      .insertInto('payment_events')
      .values({
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
      })
      .execute()
  }

  async waitingPaymentEvents(holdIds: readonly string[]): Promise<PaymentEvent[]> {
    if (holdIds.length === 0) return []
    const rows = await this.db
      .selectFrom('payment_events')
      .selectAll()
      .where('hold_id', 'in', holdIds)
      .where('state', '=', 'waiting')
      .orderBy('seq')
      .execute()
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

  async claimIdempotencyKey(record: IdempotencyRecord, now: Date): Promise<boolean> {
    // An expired key is free again: remove it first, so the insert below can take it.
    await this.db
      .deleteFrom('idempotency_keys')
      .where('scope', '=', record.scope)
      .where('idem_key', '=', record.key)
      .where('expires_at', '<=', now.getTime())
      .execute()
    const values = {
      scope: record.scope,
      idem_key: record.key,
      fingerprint: record.fingerprint,
      status_code: statusCodeOf(record.state),
      response_json: record.responseJson,
      created_at: now.getTime(),
      expires_at: record.expiresAt.getTime(),
    }
    const insert = this.db.insertInto('idempotency_keys').values(values)
    if (this.engine.insertIgnoreStyle === 'on_conflict') {
      const result = await insert.onConflict((conflict) => conflict.columns(['scope', 'idem_key']).doNothing()).executeTakeFirst()
      return Number(result.numInsertedOrUpdatedRows ?? 0) === 1
    }
    // MySQL: a failed statement does not abort the transaction, so the duplicate error is the answer.
    try {
      await insert.execute()
      return true
    } catch (error) {
      if (this.engine.isUniqueViolation(error)) return false
      throw error
    }
  }

  async completeIdempotencyKey(scope: IdempotencyScope, key: string, responseJson: string): Promise<void> {
    await this.db
      .updateTable('idempotency_keys')
      .set({ status_code: statusCodeOf('completed'), response_json: responseJson })
      .where('scope', '=', scope)
      .where('idem_key', '=', key)
      .execute()
  }

  async releaseIdempotencyKey(scope: IdempotencyScope, key: string): Promise<void> {
    await this.db.deleteFrom('idempotency_keys').where('scope', '=', scope).where('idem_key', '=', key).where('status_code', '=', statusCodeOf('claimed')).execute()
  }

  async getIdempotencyRecord(scope: IdempotencyScope, key: string): Promise<IdempotencyRecord | undefined> {
    return readIdempotencyRecord(this.db, scope, key)
  }

  claimIdempotencyKeys(scope: IdempotencyScope, claims: readonly IdempotencyClaim[], now: Date, expiresAt: Date): Promise<IdempotencyRecord[]> {
    return claimKeys(this.db, this.engine, scope, claims, now, expiresAt)
  }

  completeIdempotencyKeys(scope: IdempotencyScope, answers: readonly IdempotencyAnswer[]): Promise<void> {
    return completeKeys(this.db, scope, answers)
  }

  releaseIdempotencyKeys(scope: IdempotencyScope, keys: readonly string[]): Promise<void> {
    return releaseKeys(this.db, scope, keys)
  }
}

async function readIdempotencyRecord(db: Kysely<Database>, scope: IdempotencyScope, key: string): Promise<IdempotencyRecord | undefined> {
  const row = await db.selectFrom('idempotency_keys').selectAll().where('scope', '=', scope).where('idem_key', '=', key).executeTakeFirst()
  return row ? toIdempotencyRecord(row) : undefined
}

function errorText(error: unknown): string {
  if (error instanceof Error) return `${(error as { code?: unknown }).code ?? error.name}: ${error.message}`.slice(0, 200)
  return String(error).slice(0, 200)
}

function toProduct(row: Selectable<ProductsTable>): Product {
  return {
    id: Number(row.id),
    name: row.name,
    priceMinor: Number(row.price_minor),
    currency: row.currency,
    stock: Number(row.stock),
    reserved: Number(row.reserved),
    sold: Number(row.sold),
    createdAt: new Date(Number(row.created_at)),
  }
}

type SnapshotRow = Selectable<ProductsTable> & { lapsed_hold_qty: number | null; lapsed_order_qty: number | null }

// Stand-ins for the clock and the product id while the snapshot statement is compiled: values no
// real parameter takes (times and ids are positive).
const snapshotNowSentinel = -8_000_000_001
const snapshotProductSentinel = -8_000_000_002

function toSnapshot(row: SnapshotRow): ProductSnapshot {
  return { ...toProduct(row), lapsedQty: Number(row.lapsed_hold_qty ?? 0) + Number(row.lapsed_order_qty ?? 0) }
}

function toHold(row: Selectable<HoldsTable>): Hold {
  return {
    id: row.id,
    productId: Number(row.product_id),
    qty: Number(row.qty),
    status: row.status as HoldStatus,
    expiresAt: new Date(Number(row.expires_at)),
    createdAt: new Date(Number(row.created_at)),
  }
}

function toOrder(row: Selectable<OrdersTable>): Order {
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
  }
}

function orderValues(order: Order): Selectable<OrdersTable> {
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
  }
}

function toPaymentEvent(row: Selectable<PaymentEventsTable>): PaymentEvent {
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
