// Proves batch sizes are checked against what one statement can carry (src/store/
// statement-limits.ts): each multi-row statement takes the parameters its declared shape says,
// on every engine's SQL; start-up refuses a batch size one over the limit, naming the variable;
// and on a database the limit is exact: the largest statement of a full batch runs, and one row
// more is refused by the engine itself.
import {
  DummyDriver,
  Kysely,
  MysqlAdapter,
  MysqlIntrospector,
  MysqlQueryCompiler,
  PostgresAdapter,
  PostgresIntrospector,
  PostgresQueryCompiler,
  SqliteAdapter,
  SqliteIntrospector,
  SqliteQueryCompiler,
  type CompiledQuery,
  type Dialect,
} from 'kysely'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { loadConfig, type EngineName } from '../src/config.js'
import type { Hold, Order, PaymentEvent, StoreTx } from '../src/domain/store.js'
import { engines } from '../src/store/engines/index.js'
import type { Engine } from '../src/store/engines/engine.js'
import { HotSql, insertHoldsShape } from '../src/store/hot-sql.js'
import { KyselyStore } from '../src/store/kysely-store.js'
import { deleteExpiredKeys, deleteExpiredKeysShape, freeKeysShape, insertKeysShape, readKeysShape } from '../src/store/idempotency-keys.js'
import {
  buyerUnitsShape,
  freeHoldKeysShape,
  holdsByIdShape,
  readHoldKeysShape,
  insertOrdersShape,
  insertPaymentEventsShape,
  KyselyTx,
  moveStatusShape,
  paymentEventsByKeyShape,
  waitingPaymentEventsShape,
} from '../src/store/kysely-tx.js'
import type { Database } from '../src/store/schema.js'
import { batchLimit, batchStatements, type BatchVariable } from '../src/store/statement-limits.js'
import type { StatementShape } from '../src/store/statement-shape.js'
import { freshDatabase, testEngines, type FreshDatabase } from './helpers/engines.js'

const engineNames: readonly EngineName[] = ['sqlite', 'postgres', 'mysql']
const variables: readonly BatchVariable[] = ['HOLD_BATCH_MAX', 'ORDER_BATCH_MAX', 'WEBHOOK_BATCH_MAX', 'SWEEP_BATCH_MAX']
const urlOf: Record<EngineName, string> = { sqlite: 'sqlite:/tmp/never-opened.db', postgres: 'postgres://u@db:5432/shop', mysql: 'mysql://u@db:3306/shop' }
const nowMs = 1_800_000_000_000

// Kysely with an engine's SQL compiler and no database: statements are compiled and recorded.
function compilingOnly(engine: EngineName, recorded: CompiledQuery[]): Kysely<Database> {
  const parts = {
    sqlite: { adapter: () => new SqliteAdapter(), compiler: () => new SqliteQueryCompiler(), introspector: (db: Kysely<unknown>) => new SqliteIntrospector(db) },
    postgres: { adapter: () => new PostgresAdapter(), compiler: () => new PostgresQueryCompiler(), introspector: (db: Kysely<unknown>) => new PostgresIntrospector(db) },
    mysql: { adapter: () => new MysqlAdapter(), compiler: () => new MysqlQueryCompiler(), introspector: (db: Kysely<unknown>) => new MysqlIntrospector(db) },
  }[engine]
  const dialect: Dialect = { createAdapter: parts.adapter, createDriver: () => new DummyDriver(), createQueryCompiler: parts.compiler, createIntrospector: parts.introspector }
  return new Kysely<Database>({ dialect, log: (event) => void recorded.push(event.query) })
}

function holds(count: number, productId = 1, prefix = 'h'): Hold[] {
  return Array.from({ length: count }, (_, index) => ({
    id: `${prefix}${index}`,
    productId,
    qty: 1,
    status: 'active',
    expiresAt: new Date(nowMs + 60_000),
    createdAt: new Date(nowMs),
    buyerId: null,
  }))
}

function orders(of: readonly Hold[]): Order[] {
  return of.map((hold) => ({
    id: `o-${hold.id}`,
    holdId: hold.id,
    productId: hold.productId,
    qty: hold.qty,
    amountMinor: 100,
    currency: 'USD',
    status: 'pending',
    createdAt: new Date(nowMs),
    expiresAt: new Date(nowMs + 60_000),
    paidAt: null,
    paymentId: null,
    refundRequired: false,
    buyerId: hold.buyerId,
  }))
}

function keys(count: number): Array<{ key: string; fingerprint: string }> {
  return Array.from({ length: count }, (_, index) => ({ key: `k${index}`, fingerprint: 'f' }))
}

function paymentEvents(of: readonly Hold[]): PaymentEvent[] {
  return of.map((hold) => ({
    idempotencyKey: `e-${hold.id}`,
    fingerprint: 'f',
    orderId: null,
    holdId: hold.id,
    status: 'success',
    paymentId: null,
    amountMinor: null,
    state: 'waiting',
    outcome: null,
    responseJson: null,
    createdAt: new Date(nowMs),
    processedAt: null,
  }))
}

const keyNames = (rows: number) => keys(rows).map(({ key }) => key)
const keyAnswers = (rows: number) => keys(rows).map((claim) => ({ ...claim, responseJson: '{}' }))

// Each declared shape, a call that runs its statement with `rows` rows, and which of the call's
// statements it is (of how many).
type Position = { at: number; of: number }
const runs: ReadonlyArray<[StatementShape, (tx: StoreTx, rows: number) => Promise<unknown>, (Position | ((engine: Engine) => Position))?]> = [
  [readKeysShape, (tx, rows) => tx.readIdempotencyKeys('holds', keyNames(rows))],
  [freeKeysShape, (tx, rows) => tx.freeExpiredIdempotencyKeys('holds', keyNames(rows), new Date(nowMs))],
  [insertKeysShape, (tx, rows) => tx.insertIdempotencyKeys('holds', keyAnswers(rows), new Date(nowMs), new Date(nowMs + 60_000))],
  [readHoldKeysShape, (tx, rows) => tx.readHoldKeys(keyNames(rows))],
  [freeHoldKeysShape, (tx, rows) => tx.freeHoldKeys(keyNames(rows), new Date(nowMs))],
  // Keyed holds: the widest insert of holds (a batch without keys leaves out the key columns).
  [insertHoldsShape, (tx, rows) => tx.insertHolds(holds(rows), keys(rows))],
  [holdsByIdShape, (tx, rows) => tx.getHolds(holds(rows).map((hold) => hold.id))],
  // Where there is no RETURNING the rows that leave the live status are read first (a smaller
  // statement: the ids and the status), so the UPDATE is the second of two.
  [
    moveStatusShape,
    (tx, rows) =>
      tx.setHoldsStatus(
        holds(rows).map((hold) => hold.id),
        'active',
        'expired',
        new Date(nowMs),
      ),
    (engine) => (engine.supportsReturning ? { at: 0, of: 1 } : { at: 1, of: 2 }),
  ],
  [
    moveStatusShape,
    (tx, rows) =>
      tx.setOrdersStatus(
        holds(rows).map((hold) => hold.id),
        'pending',
        'expired',
        new Date(nowMs),
      ),
    (engine) => (engine.supportsReturning ? { at: 0, of: 1 } : { at: 1, of: 2 }),
  ],
  [insertOrdersShape, (tx, rows) => tx.insertOrders(orders(holds(rows)))],
  [waitingPaymentEventsShape, (tx, rows) => tx.waitingPaymentEvents(holds(rows).map((hold) => hold.id))],
  [
    buyerUnitsShape,
    (tx, rows) =>
      tx.buyerUnits(
        1,
        holds(rows).map((hold) => `buyer-${hold.id}`),
        new Date(nowMs),
      ),
  ],
  [paymentEventsByKeyShape, (tx, rows) => tx.getPaymentEvents(paymentEvents(holds(rows)).map((event) => event.idempotencyKey))],
  [insertPaymentEventsShape, (tx, rows) => tx.insertPaymentEvents(paymentEvents(holds(rows)))],
]

// Statements the store runs outside a transaction, called with the engine's Kysely.
const storeRuns: ReadonlyArray<[StatementShape, (db: Kysely<Database>, rows: number) => Promise<unknown>]> = [
  [deleteExpiredKeysShape, (db, rows) => deleteExpiredKeys(db, 'holds', keyNames(rows), new Date(nowMs))],
]

describe('statement shapes', () => {
  it('every statement a batch variable names is one whose shape is checked here', () => {
    const checked = new Set([...runs.map(([shape]) => shape), ...storeRuns.map(([shape]) => shape)])
    for (const variable of variables) for (const shape of batchStatements[variable]) expect(checked.has(shape), shape.statement).toBe(true)
  })

  for (const engine of engineNames) {
    it(`${engine}: each multi-row statement takes the parameters its shape declares, for 1, 2 and 9 rows`, async () => {
      for (const [shape, run, placed = { at: 0, of: 1 }] of runs) {
        const position = typeof placed === 'function' ? placed(engines[engine]) : placed
        const { fixed, perRow } = shape.parameters(engines[engine])
        for (const rows of [1, 2, 9]) {
          const recorded: CompiledQuery[] = []
          const db = compilingOnly(engine, recorded)
          await run(new KyselyTx(db, engines[engine], new HotSql(engines[engine])), rows)
          expect(recorded, shape.statement).toHaveLength(position.of)
          expect(recorded[position.at]!.parameters.length, `${shape.statement}, ${rows} rows`).toBe(fixed + perRow * rows)
        }
      }
      for (const [shape, run] of storeRuns) {
        const { fixed, perRow } = shape.parameters(engines[engine])
        for (const rows of [1, 2, 9]) {
          const recorded: CompiledQuery[] = []
          await run(compilingOnly(engine, recorded), rows)
          expect(recorded, shape.statement).toHaveLength(1)
          expect(recorded[0]!.parameters.length, `${shape.statement}, ${rows} rows`).toBe(fixed + perRow * rows)
        }
      }
    })
  }
})

// A ConfigError whose message is this one (or matches it).
function configError(message: string | RegExp) {
  return expect.objectContaining({ name: 'ConfigError', message: typeof message === 'string' ? message : expect.stringMatching(message) })
}

describe('batch sizes at start-up', () => {
  it('SQLite (32,766 parameters a statement) takes 3,276 holds and 2,340 orders a batch, and no more', () => {
    const env = { DATABASE_URL: urlOf.sqlite }
    expect(loadConfig({ ...env, HOLD_BATCH_MAX: '3276', ORDER_BATCH_MAX: '2340' })).toMatchObject({ holdBatchMax: 3276, orderBatchMax: 2340 })
    expect(() => loadConfig({ ...env, HOLD_BATCH_MAX: '3277' })).toThrow(
      configError('HOLD_BATCH_MAX must be at most 3276 on sqlite: the multi-row insert of holds takes 10 parameters a row and sqlite takes at most 32766 in one statement, got "3277"'),
    )
    expect(() => loadConfig({ ...env, ORDER_BATCH_MAX: '2341' })).toThrow(configError(/^ORDER_BATCH_MAX must be at most 2340 on sqlite: .* got "2341"$/))
    expect(() => loadConfig({ ...env, SWEEP_BATCH_MAX: '32764' })).toThrow(configError(/^SWEEP_BATCH_MAX must be at most 32763 on sqlite/))
  })

  it('PostgreSQL sends holds and idempotency keys as column arrays, so the whole range of holds fits (10,000) and 4,681 orders a batch', () => {
    const env = { DATABASE_URL: urlOf.postgres }
    expect(loadConfig({ ...env, HOLD_BATCH_MAX: '10000', ORDER_BATCH_MAX: '4681' })).toMatchObject({ holdBatchMax: 10000, orderBatchMax: 4681 })
    expect(batchLimit('postgres', 'HOLD_BATCH_MAX')?.rowsMax).toBeGreaterThan(10_000)
    expect(() => loadConfig({ ...env, ORDER_BATCH_MAX: '4682' })).toThrow(configError(/^ORDER_BATCH_MAX must be at most 4681 on postgres/))
    // The range every engine has still applies.
    expect(() => loadConfig({ ...env, HOLD_BATCH_MAX: '10001' })).toThrow(configError(/^HOLD_BATCH_MAX must be between 1 and 10000/))
  })

  for (const engine of engineNames) {
    it(`${engine}: each batch variable is accepted at its limit and refused one above it, naming the variable`, () => {
      const env = { DATABASE_URL: urlOf[engine] }
      for (const variable of variables) {
        const limit = batchLimit(engine, variable)
        if (limit === undefined) {
          // No statement grows with this batch (webhooks: each is applied with its own rows).
          expect(batchStatements[variable].every((shape) => shape.parameters(engines[engine]).perRow === 0)).toBe(true)
          continue
        }
        // Past the variable's own range (10,000 a batch, 100,000 a sweep) the range refuses first.
        if (limit.rowsMax > (variable === 'SWEEP_BATCH_MAX' ? 100_000 : 10_000)) continue
        expect(() => loadConfig({ ...env, [variable]: String(limit.rowsMax) }), variable).not.toThrow()
        expect(() => loadConfig({ ...env, [variable]: String(limit.rowsMax + 1) }), variable).toThrow(
          configError(new RegExp(`^${variable} must be at most ${limit.rowsMax} on ${engine}: .* got "${limit.rowsMax + 1}"$`)),
        )
      }
      // The defaults fit everywhere.
      expect(() => loadConfig(env)).not.toThrow()
    })
  }
})

for (const engine of testEngines()) {
  // How the engine refuses a statement one row over the limit (PostgreSQL: the 16-bit count of
  // parameters wraps, and the server sees a mismatch). MySQL: Kysely's driver sends text
  // queries, so the declared (prepared-statement) limit is conservative there and nothing fails.
  const overLimitError = { sqlite: /too many SQL variables/, postgres: /bind message/, mysql: undefined }[engine.name]
  const engineRefusesOverLimit = overLimitError !== undefined

  describe.skipIf(!engine.available)(`${engine.name}: batch limits on the database`, () => {
    let database: FreshDatabase
    let store: KyselyStore
    let productId: number

    beforeEach(async () => {
      database = await freshDatabase(engine.name)
      store = new KyselyStore({ databaseUrl: database.url, engine: engine.name, observer: { emit: () => undefined }, txAttemptsMax: 1, poolSizeMax: 2 })
      await store.migrate()
      productId = await store.transaction({ label: 'test' }, (tx) => tx.insertProduct({ name: 'P', priceMinor: 100, currency: 'USD', stock: 100_000, createdAt: new Date(nowMs) }))
    })

    afterEach(async () => {
      await store.close()
      await database.drop()
    })

    for (const variable of ['HOLD_BATCH_MAX', 'ORDER_BATCH_MAX'] as const) {
      const limit = batchLimit(engine.name, variable)
      // PostgreSQL's hold insert takes column arrays: no row count is too many.
      it.skipIf(limit === undefined)(`a full ${variable} batch's largest statement runs${engineRefusesOverLimit ? ', and one row more is refused by the engine' : ''}`, async () => {
        if (limit === undefined) return
        // The statement that sets the limit is the one run at it and one row over it.
        const [shape, run] = runs.find(([candidate]) => candidate.statement === limit.statement)!
        const runWith = (rows: number) => store.transaction({ label: 'test' }, (tx) => run(tx, rows))
        if (shape === insertOrdersShape) await store.transaction({ label: 'test' }, (tx) => tx.insertHolds(holds(limit.rowsMax + 1, productId)))
        if (overLimitError) await expect(runWith(limit.rowsMax + 1)).rejects.toThrow(overLimitError)
        await runWith(limit.rowsMax)
        const [facts] = (await store.auditFacts()).products
        if (shape === insertHoldsShape) expect(facts?.activeHoldQty).toBe(limit.rowsMax)
        if (shape === insertOrdersShape) expect(facts?.pendingOrderQty).toBe(limit.rowsMax)
      })
    }
  })
}
