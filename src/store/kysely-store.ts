// The store (domain/store.ts) on SQLite, PostgreSQL and MySQL: the reads made outside a
// transaction, and the transaction runner with its retries. What differs between the engines is
// asked of the engine as a capability (engines/); a transaction's statements are in kysely-tx.ts,
// the compiled-once hot statements in hot-sql.ts, row mapping in rows.ts.
import { setTimeout as sleep } from 'node:timers/promises'
import { Kysely, Migrator, sql } from 'kysely'
import { MigrationCatalogue, withMigrationCatalogue } from './migration-catalogue.js'
import { DomainError } from '../domain/errors.js'
import type { Observer } from '../domain/events.js'
import type {
  AuditFacts,
  BuyerOverLimit,
  Hold,
  IdempotencyRecord,
  IdempotencyScope,
  KeyedHold,
  Order,
  PaymentEvent,
  ProductSnapshot,
  Store,
  StoreTx,
  Ticket,
  TransactionOptions,
} from '../domain/store.js'
import type { Engine, EngineName } from './engines/engine.js'
import { engines } from './engines/index.js'
import { expiryBucketDrift } from './expiry-buckets.js'
import { HotSql, snapshotQuery } from './hot-sql.js'
import { deleteExpiredKeys, statusCodeOf } from './idempotency-keys.js'
import { KyselyTx } from './kysely-tx.js'
import { migrationProvider, type SeedProduct } from './migrations/index.js'
import { findHold, findIdempotencyRecord, findKeyedHolds, findOrder, findPaymentEvent } from './reads.js'
import { toSnapshot } from './rows.js'
import type { Database } from './schema.js'
import { earliestLapsed, oldestLapsedByProduct, oldestLapsedOverall, type OldestLapsed } from './sweeper-lag.js'
import { findTicket, lineAudit, productsWithLineWork, ticketsAhead } from './waitlist-sql.js'
import { commitQuery, rollbackQuery, writeBehindDialect } from './write-behind.js'

export { engines } from './engines/index.js'

export interface StoreOptions {
  databaseUrl: string
  engine: EngineName
  observer: Observer
  txAttemptsMax: number
  poolSizeMax?: number
  lockWaitMs?: number
  // How long a transaction or a read may wait for a database server (a connection, its
  // statements, the commit) before its request is answered 503 busy (DB_TIMEOUT_MS). Not on
  // SQLite, whose driver blocks the event loop while it waits (SQLITE_LOCK_WAIT_MS bounds it).
  timeoutMs?: number
  // Product 1 of a new database (see migrations/0002_seed_product).
  seed?: SeedProduct
  // Sees every statement run, with its parameters (tests count statements and explain them).
  onQuery?: (sqlText: string, parameters: readonly unknown[]) => void
}

const retryBackoffMsMin = 2
const retryBackoffMsMax = 200
// While the database is away every request fails alike; one log line per interval says so.
const unavailableLogIntervalMs = 5_000

type Db = Kysely<Database>

// A transaction whose request was answered 503 busy (KyselyStore.bounded) stops before it commits.
class TransactionAbandoned extends Error {
  constructor() {
    super('abandoned: its request was answered 503 busy after DB_TIMEOUT_MS')
  }
}

// The database could not be brought to the latest schema (unreachable, refused, a file that
// cannot be opened, a migration that failed): the server cannot start (server.ts).
export class MigrationFailed extends Error {}

export class KyselyStore implements Store {
  readonly engine: EngineName
  private readonly db: Db
  private readonly capabilities: Engine
  private readonly hotSql: HotSql
  private unavailableLoggedAtMs = -Infinity

  constructor(private readonly options: StoreOptions) {
    this.engine = options.engine
    this.capabilities = engines[options.engine]
    this.hotSql = new HotSql(this.capabilities)
    const dialect = writeBehindDialect(
      this.capabilities.createDialect(options.databaseUrl, {
        poolSizeMax: options.poolSizeMax ?? 16,
        lockWaitMs: options.lockWaitMs ?? 5_000,
        onConnectionError: (error) => this.noteUnavailable(error),
      }),
      this.capabilities,
    )
    const { onQuery } = options
    this.db = new Kysely<Database>(onQuery ? { dialect, log: (event) => onQuery(event.query.sql, event.query.parameters) } : { dialect })
  }

  async migrate(upTo?: string): Promise<void> {
    const schema = this.capabilities.schemaOf(this.options.databaseUrl)
    const db = withMigrationCatalogue(this.db, new MigrationCatalogue(this.db as Kysely<unknown>, this.options.engine, schema))
    const migrator = new Migrator({ db, provider: migrationProvider(this.capabilities, this.options.seed), ...(schema ? { migrationTableSchema: schema } : {}) })
    // The migrator first looks up its tables in the catalogue; a schema being dropped at that
    // moment (other tenants, parallel test suites) could make that look-up fail when it read
    // every schema's (MigrationCatalogue reads one now). Nothing has run yet then, and each
    // migration runs in its own transaction, so a bounded retry is safe.
    const attemptsMax = 5
    for (let attempt = 1; ; attempt++) {
      const { error, results } = await (upTo === undefined ? migrator.migrateToLatest() : migrator.migrateTo(upTo))
      const failed = results?.find((result) => result.status === 'Error')
      if (!error && !failed) return
      if (attempt >= attemptsMax || failed) {
        throw new MigrationFailed(`migration failed${failed ? ` at ${failed.migrationName}` : ''}: ${String(error)}`)
      }
      this.options.observer.emit({ name: 'tx.retry', label: 'migrate', attempt, delayMs: 100 * attempt, reason: String(error).slice(0, 200) })
      await sleep(100 * attempt)
    }
  }

  async transaction<T>(options: TransactionOptions, fn: (tx: StoreTx) => Promise<T>): Promise<T> {
    let abandoned = false
    return this.bounded(() => this.runTransaction(options, fn, () => abandoned), {
      onTimeout: () => (abandoned = true),
      sinceMs: options.queuedSinceMs,
    })
  }

  private async runTransaction<T>(options: TransactionOptions, fn: (tx: StoreTx) => Promise<T>, abandoned: () => boolean): Promise<T> {
    const { txAttemptsMax, observer } = this.options
    for (let attempt = 1; ; attempt++) {
      if (abandoned()) throw new TransactionAbandoned()
      try {
        return await this.db.connection().execute(async (connection) => {
          // Given its connection only after its request was answered 503: it must not run.
          if (abandoned()) throw new TransactionAbandoned()
          await sql.raw(this.capabilities.beginSql).execute(connection)
          try {
            const tx = new KyselyTx(connection, this.capabilities, this.hotSql)
            const result = await fn(tx)
            await tx.finish()
            // Its request was answered 503 while a statement waited on a stalled server: rolled
            // back, so a 503 means nothing was written unless the commit itself was on its way.
            if (abandoned()) throw new TransactionAbandoned()
            // Sends the writes still waiting (write-behind.ts) first, with the commit where it can.
            await connection.executeQuery(commitQuery)
            return result
          } catch (error) {
            await connection.executeQuery(rollbackQuery).catch(() => undefined)
            throw error
          }
        })
      } catch (error) {
        // A unique violation (a payment event's key, an order's hold) means a duplicate committed
        // concurrently: the retried attempt sees it and answers as a replay. Idempotency keys
        // come here as StoredKeyConflict instead: their batch runs again itself (keyed-batches.ts).
        const transient = this.capabilities.isTransientConflict(error) || this.capabilities.isUniqueViolation(error)
        if (!transient) {
          if (this.capabilities.isUnavailable(error)) throw this.unavailable(error)
          throw error
        }
        if (attempt >= txAttemptsMax) {
          observer.emit({ name: 'tx.busy', label: options.label, attempts: attempt }, options.log)
          throw new DomainError('busy', { retry_after_s: 1 }, `gave up after ${attempt} attempts: ${String(error)}`)
        }
        // Full jitter on an exponential ceiling: racing retriers spread out instead of colliding again.
        const ceilingMs = Math.min(retryBackoffMsMax, retryBackoffMsMin * 2 ** attempt)
        const delayMs = Math.round(Math.random() * ceilingMs)
        observer.emit({ name: 'tx.retry', label: options.label, attempt, delayMs, reason: errorText(error) }, options.log)
        await sleep(delayMs)
      }
    }
  }

  // Reads that fail because the database is gone answer 503 busy (retry later), not 500. Every
  // statement outside a transaction goes through here (a black-box probe found the audit, the
  // dashboard and the ticket routes answering 500 while the database was down).
  // `unbounded`: not raced against DB_TIMEOUT_MS; `queuedSinceMs`: the bound counts from then.
  private async read<T>(query: () => Promise<T>, { unbounded = false, queuedSinceMs }: { unbounded?: boolean; queuedSinceMs?: number } = {}): Promise<T> {
    try {
      return await (unbounded ? query() : this.bounded(query, { sinceMs: queuedSinceMs }))
    } catch (error) {
      if (this.capabilities.isUnavailable(error)) throw this.unavailable(error)
      throw error
    }
  }

  // A database server that stops answering but keeps its connections open (frozen, paused, a
  // network dropping packets silently) held every request on a pooled connection for as long as
  // it stalled, and /ready answered 200 after it (the twelfth session's second probe): no driver
  // bounds a statement by itself here. Past `timeoutMs` the request is answered 503 busy; the
  // work goes on in the background until the server answers or its connection breaks, and a
  // transaction told so by `onTimeout` rolls back instead of committing. The bound counts from
  // `sinceMs` (performance.now()) where given: requests queued behind a batch that waited on a
  // stalled server were answered after its bound and then their own, twice DB_TIMEOUT_MS; now
  // their batch gets what is left of theirs, and none if it is spent (it does not run at all).
  private bounded<T>(work: () => Promise<T>, { onTimeout, sinceMs }: { onTimeout?: () => void; sinceMs?: number } = {}): Promise<T> {
    const { timeoutMs } = this.options
    if (timeoutMs === undefined || this.options.engine === 'sqlite') return work()
    const leftMs = sinceMs === undefined ? timeoutMs : timeoutMs - (performance.now() - sinceMs)
    const timedOut = (): DomainError => {
      const error = new Error(`no answer from the database in ${timeoutMs} ms`)
      this.noteUnavailable(error)
      return new DomainError('busy', { retry_after_s: 1 }, error.message)
    }
    if (leftMs <= 0) return Promise.reject(timedOut())
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        onTimeout?.()
        reject(timedOut())
      }, leftMs)
      work().then(
        (value) => {
          clearTimeout(timer)
          resolve(value)
        },
        (error: unknown) => {
          clearTimeout(timer)
          reject(error)
        },
      )
    })
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

  // Every coalesced read burst sends this one: compiled once (hot-sql.ts).
  async productSnapshot(productId: number, now: Date, queuedSinceMs?: number): Promise<ProductSnapshot | undefined> {
    return this.read(() => this.hotSql.productSnapshot(this.db, productId, now), { queuedSinceMs })
  }

  async allProductSnapshots(now: Date, limit: number): Promise<ProductSnapshot[]> {
    // The newest first: past `limit`, the products left out are the oldest, not the drop going
    // on now (the dashboard and the per-product gauges showed the first 100 ever created).
    const rows = await this.read(() => snapshotQuery(this.db, now).orderBy('p.id', 'desc').limit(limit).execute())
    return rows.map(toSnapshot)
  }

  async getHold(holdId: string): Promise<Hold | undefined> {
    return this.read(() => findHold(this.db, holdId))
  }

  async getOrder(orderId: string): Promise<Order | undefined> {
    return this.read(() => findOrder(this.db, orderId))
  }

  async getPaymentEvent(idempotencyKey: string): Promise<PaymentEvent | undefined> {
    return this.read(() => findPaymentEvent(this.db, idempotencyKey))
  }

  async getIdempotencyRecord(scope: IdempotencyScope, key: string): Promise<IdempotencyRecord | undefined> {
    return this.read(() => findIdempotencyRecord(this.db, scope, key))
  }

  async getHoldByKey(key: string): Promise<KeyedHold | undefined> {
    return (await this.read(() => findKeyedHolds(this.db, [key])))[0]
  }
  // Products with lapsed rows, found through the per-product (product_id, status, expires_at)
  // indexes: a hot product's holds need no second index just for the sweeper.
  async productsWithLapsedRows(now: Date, limit: number): Promise<number[]> {
    const earliest = earliestLapsed(this.db, now.getTime())
    const rows = await this.read(() =>
      this.db
        .selectFrom('products as p')
        .select('p.id')
        // The earliest lapsed expiry of each, as oldestLapsedByProduct reads it: one step into the
        // lapsed index. As EXISTS, PostgreSQL with statistics planned each as a scan of the whole
        // table once per product (8.9 ms a sweeper pass once caught up, growing with the tables).
        .where((eb) => eb.or([eb(earliest.holds, 'is not', null), eb(earliest.orders, 'is not', null)]))
        // Ascending product ids: sweepers lock products in one order.
        .orderBy('p.id')
        .limit(limit)
        .execute(),
    )
    return rows.map((row) => Number(row.id))
  }

  getTicket(ticketId: string): Promise<Ticket | undefined> {
    return this.read(() => findTicket(this.db, ticketId))
  }

  ticketsAhead(ticket: Ticket, byJoinOrder: boolean): Promise<number> {
    return this.read(() => ticketsAhead(this.db, ticket, byJoinOrder))
  }

  productsWithLineWork(now: Date, limit: number): Promise<number[]> {
    return this.read(() => productsWithLineWork(this.db, now, limit))
  }

  oldestLapsedByProduct(now: Date, limit: number): Promise<OldestLapsed[]> {
    return this.read(() => oldestLapsedByProduct(this.db, now, limit))
  }

  oldestLapsedOverall(now: Date): Promise<Date | null> {
    return this.read(() => oldestLapsedOverall(this.db, now))
  }

  // I8 from the rows: per limited product and buyer, the units SPEC §8 counts at `now`, with the
  // last instant one of them was granted (a hold's creation; a late payment's recovery).
  private async buyersOverLimit(now: Date): Promise<BuyerOverLimit[]> {
    const nowMs = now.getTime()
    const holdUnits = this.db
      .selectFrom('holds as h')
      .select(['h.product_id', 'h.buyer_id', 'h.qty', 'h.created_at as granted_at'])
      .where('h.buyer_id', 'is not', null)
      .where('h.status', '=', 'active')
      .where('h.expires_at', '>', nowMs)
    const orderUnits = this.db
      .selectFrom('orders as o')
      .innerJoin('holds as h', 'h.id', 'o.hold_id')
      .select(['o.product_id', 'o.buyer_id', 'o.qty', sql<number>`case when o.status = 'paid' and o.paid_at >= o.expires_at then o.paid_at else h.created_at end`.as('granted_at')])
      .where('o.buyer_id', 'is not', null)
      .where((eb) => eb.or([eb('o.status', '=', 'paid'), eb.and([eb('o.status', '=', 'pending'), eb('o.expires_at', '>', nowMs)])]))
    const rows = await this.db
      .selectFrom(holdUnits.unionAll(orderUnits).as('u'))
      .innerJoin('products as p', 'p.id', 'u.product_id')
      .select(['u.product_id', 'u.buyer_id', 'p.per_buyer_limit', 'p.per_buyer_limit_set_at', sql<number>`sum(u.qty)`.as('units'), sql<number>`max(u.granted_at)`.as('last_granted_at')])
      .where('p.per_buyer_limit', 'is not', null)
      .groupBy(['u.product_id', 'u.buyer_id', 'p.per_buyer_limit', 'p.per_buyer_limit_set_at'])
      .having(sql`sum(u.qty)`, '>', sql.ref('p.per_buyer_limit'))
      .orderBy('u.product_id')
      .execute()
    // Units granted before the limit last changed were judged by the limit then in force. A grant
    // in the very millisecond of the change is taken as before it: one after it was judged by
    // the new limit, so only one before it can be over it (the simulation met this: a limit set
    // in the millisecond a buyer's ticket was admitted was reported as I8).
    return rows
      .filter((row) => Number(row.last_granted_at) > Number(row.per_buyer_limit_set_at ?? 0))
      .map((row) => ({ productId: Number(row.product_id), buyerId: String(row.buyer_id), units: Number(row.units), perBuyerLimit: Number(row.per_buyer_limit) }))
  }

  deleteExpiredIdempotencyKeys(now: Date, limit: number): Promise<number> {
    return this.read(() => this.deleteExpiredKeys(now, limit))
  }

  private async deleteExpiredKeys(now: Date, limit: number): Promise<number> {
    const expired = await this.db
      .selectFrom('idempotency_keys')
      .select(['scope', 'idem_key'])
      .where('expires_at', '<=', now.getTime())
      .where('status_code', '!=', statusCodeOf('claimed'))
      .limit(limit)
      .execute()
    // One statement per scope (there are four), through the primary key on every engine: a
    // statement per key made each pass up to SWEEP_BATCH_MAX commits, a few hundred keys a second
    // on SQLite's fsync, far below the rate keyed requests store them.
    const keysByScope = new Map<string, string[]>()
    for (const row of expired) {
      const keys = keysByScope.get(row.scope) ?? []
      keys.push(row.idem_key)
      keysByScope.set(row.scope, keys)
    }
    let deleted = 0
    for (const [scope, keys] of keysByScope) deleted += await deleteExpiredKeys(this.db, scope, keys, now)
    return deleted
  }

  auditFacts(now: Date = new Date()): Promise<AuditFacts> {
    // Not bounded by DB_TIMEOUT_MS: it reads every row, and a large database takes its time.
    return this.read(() => this.readAuditFacts(now), { unbounded: true })
  }

  private async readAuditFacts(now: Date): Promise<AuditFacts> {
    const products = await this.db
      .selectFrom('products as p')
      .select(['p.id', 'p.stock', 'p.reserved', 'p.sold'])
      .select((eb) => [
        eb
          .selectFrom('holds as h')
          .select(sql<number>`coalesce(sum(h.qty), 0)`.as('q'))
          .whereRef('h.product_id', '=', 'p.id')
          .where('h.status', '=', 'active')
          .as('active_hold_qty'),
        eb
          .selectFrom('orders as o')
          .select(sql<number>`coalesce(sum(o.qty), 0)`.as('q'))
          .whereRef('o.product_id', '=', 'p.id')
          .where('o.status', '=', 'pending')
          .as('pending_order_qty'),
        eb
          .selectFrom('orders as o')
          .select(sql<number>`coalesce(sum(o.qty), 0)`.as('q'))
          .whereRef('o.product_id', '=', 'p.id')
          .where('o.status', '=', 'paid')
          .as('paid_order_qty'),
      ])
      .orderBy('p.id')
      .execute()
    const holdsWithManyOrders = await this.db
      .selectFrom('orders')
      .select('hold_id')
      .groupBy('hold_id')
      .having(sql`count(*)`, '>', 1)
      .execute()
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
    const buyersOverLimit = await this.buyersOverLimit(now)
    const { lines, ticketsBadlyAdmitted } = await lineAudit(this.db)
    return {
      buyersOverLimit,
      expiryBucketDrift: await expiryBucketDrift(this.db),
      lines,
      ticketsBadlyAdmitted,
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
    const row = await this.read(() =>
      this.db
        .selectFrom('products')
        .select(sql<number>`count(*)`.as('n'))
        .executeTakeFirstOrThrow(),
    )
    return Number(row.n)
  }

  async ping(): Promise<void> {
    // Bounded too: /ready must say 503 while the server stalls, not 200 once it is back.
    await this.bounded(() => sql`select 1`.execute(this.db))
  }

  async close(): Promise<void> {
    await this.db.destroy()
  }
}

function errorText(error: unknown): string {
  if (error instanceof Error) return `${(error as { code?: unknown }).code ?? error.name}: ${error.message}`.slice(0, 200)
  return String(error).slice(0, 200)
}
