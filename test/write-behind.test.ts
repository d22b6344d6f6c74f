// Proves the write-behind of a transaction (src/store/write-behind.ts) on the real engines: a
// batch's last writes reach the server as one statement (with the commit on MySQL), counted at
// the driver, not by time; they store exactly what separate statements store; any other
// statement sends them first, so it sees them; a rollback drops them; a failing write fails the
// commit with the caller's error and leaves nothing of its transaction; and past
// deferredWritesMax the earlier writes are sent first. SQLite, which has no round trip to save,
// keeps sending each write as it comes.
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { Kysely, sql, type DatabaseConnection, type Dialect, type Driver } from 'kysely'
import { StoredKeyConflict, type Hold, type IdempotencyAnswer } from '../src/domain/store.js'
import { engines } from '../src/store/engines/index.js'
import { HotSql } from '../src/store/hot-sql.js'
import { KyselyStore } from '../src/store/kysely-store.js'
import { KyselyTx } from '../src/store/kysely-tx.js'
import type { Database } from '../src/store/schema.js'
import { commitQuery, deferredWritesMax, rollbackQuery, writeBehindDialect } from '../src/store/write-behind.js'
import { testEngines } from './helpers/engines.js'
import { storeBeside, type StoreBeside } from './helpers/store-beside.js'

const nowMs = 1_800_000_000_000
const minuteMs = 60_000

function hold(id: string, productId: number, qty: number): Hold {
  return { id, productId, qty, status: 'active', expiresAt: new Date(nowMs + 10 * minuteMs), createdAt: new Date(nowMs), buyerId: null }
}

function answer(key: string): IdempotencyAnswer {
  return { key, fingerprint: `fp-${key}`, responseJson: JSON.stringify({ id: `hold-${key}` }) }
}

// The dialect with every statement the server receives written down, in order.
function countingDialect(dialect: Dialect, sent: string[]): Dialect {
  const bound = <T extends object>(target: T, property: string | symbol): unknown => {
    const value = Reflect.get(target, property) as unknown
    return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value
  }
  const countingConnection = (connection: DatabaseConnection): DatabaseConnection =>
    new Proxy(connection, {
      get(target, property) {
        if (property !== 'executeQuery') return bound(target, property)
        return (query: { sql: string }) => {
          sent.push(query.sql)
          return target.executeQuery(query as never)
        }
      },
    })
  const countingDriver = (driver: Driver): Driver =>
    new Proxy(driver, {
      get(target, property) {
        if (property !== 'acquireConnection') return bound(target, property)
        return async () => countingConnection(await target.acquireConnection())
      },
    })
  return new Proxy(dialect, {
    get(target, property) {
      if (property !== 'createDriver') return bound(target, property)
      return () => countingDriver(target.createDriver())
    },
  })
}

for (const engine of testEngines()) {
  const capabilities = engines[engine.name]
  const merges = capabilities.writeMerging !== undefined

  describe.skipIf(!engine.available)(`${engine.name}: write-behind`, () => {
    let beside: StoreBeside
    let store: KyselyStore
    let db: Kysely<Database>
    let sent: string[]

    beforeEach(async () => {
      sent = []
      // One connection: a rollback's leftovers would show in the next transaction.
      beside = await storeBeside(engine.name, { poolSizeMax: 1, createdAt: new Date(nowMs), wrapDialect: (dialect) => writeBehindDialect(countingDialect(dialect, sent), capabilities) })
      ;({ store, db } = beside)
    })

    afterEach(() => beside.close())

    const newProduct = (stock: number): Promise<number> => beside.newProduct(stock)

    // A transaction as the store's runner makes one, on the counting connection; `sent` is
    // cleared once it has begun, so it lists what the work and the end sent.
    async function transaction<T>(work: (tx: KyselyTx) => Promise<T>, end: 'commit' | 'rollback' = 'commit'): Promise<T> {
      return db.connection().execute(async (connection) => {
        await sql.raw(capabilities.beginSql).execute(connection)
        sent.length = 0
        try {
          const tx = new KyselyTx(connection, capabilities, new HotSql(capabilities))
          const result = await work(tx)
          await tx.finish()
          await connection.executeQuery(end === 'commit' ? commitQuery : rollbackQuery)
          return result
        } catch (error) {
          await connection.executeQuery(rollbackQuery).catch(() => undefined)
          throw error
        }
      })
    }

    async function stored(productId: number): Promise<{ holds: number; keys: number; reserved: number; bucketQty: number }> {
      const holds = await db.selectFrom('holds').select('id').where('product_id', '=', productId).execute()
      const keys = await db.selectFrom('idempotency_keys').select('idem_key').execute()
      const product = await db.selectFrom('products').select('reserved').where('id', '=', productId).executeTakeFirstOrThrow()
      const buckets = await db.selectFrom('expiry_buckets').select('qty').where('product_id', '=', productId).execute()
      return { holds: holds.length, keys: keys.length, reserved: Number(product.reserved), bucketQty: buckets.reduce((sum, row) => sum + Number(row.qty), 0) }
    }

    // A hold batch's writes: its holds, its keys, the product's counts (and, at finish, its expiry bucket).
    async function batchWrites(tx: KyselyTx, productId: number, prefix: string): Promise<void> {
      await tx.insertHolds([hold(`${prefix}-1`, productId, 1), hold(`${prefix}-2`, productId, 2)])
      await tx.insertIdempotencyKeys('holds', [answer(`${prefix}-k1`), answer(`${prefix}-k2`)], new Date(nowMs), new Date(nowMs + minuteMs))
      await tx.applyProductDelta(productId, { reserved: 3, sold: 0, stock: 0 })
    }

    it.runIf(merges)("sends a batch's writes as one statement, with the commit where the engine can, and stores what separate statements store", async () => {
      const productId = await newProduct(100)
      await transaction(async (tx) => {
        await tx.lockProduct(productId)
        await batchWrites(tx, productId, 'a')
      })
      // The lock, then the holds, keys, counts and expiry bucket in one statement, then the commit.
      expect(sent).toHaveLength(capabilities.writeMerging!.commitJoins ? 2 : 3)
      expect(sent[0]).toMatch(/for update/i)
      expect(sent[1]).toMatch(/holds[\s\S]*idempotency_keys[\s\S]*products[\s\S]*expiry_buckets/i)
      if (capabilities.writeMerging!.commitJoins) expect(sent[1]).toMatch(/commit$/i)
      else expect(sent[2]).toBe('commit')
      expect(await stored(productId)).toEqual({ holds: 2, keys: 2, reserved: 3, bucketQty: 3 })
      // The same writes sent one by one (the runner's path on SQLite) store the same.
      const separately = await newProduct(100)
      await store.transaction({ label: 'test' }, async (tx) => {
        await tx.insertHolds([hold('b-1', separately, 1), hold('b-2', separately, 2)])
        await tx.applyProductDelta(separately, { reserved: 3, sold: 0, stock: 0 })
      })
      const rows = await db.selectFrom('holds').selectAll().orderBy('id').execute()
      const shape = (id: string) => {
        const { id: _id, product_id: _product, ...rest } = rows.find((row) => row.id === id)!
        return rest
      }
      expect(shape('a-1')).toEqual(shape('b-1'))
      expect(shape('a-2')).toEqual(shape('b-2'))
      expect((await stored(separately)).bucketQty).toBe(3)
    })

    it.runIf(merges)('sends the waiting writes before any other statement, which sees them', async () => {
      const productId = await newProduct(100)
      const found = await transaction(async (tx) => {
        await tx.insertHolds([hold('seen-1', productId, 4)])
        expect(sent).toEqual([])
        return tx.getHold('seen-1')
      })
      expect(found?.qty).toBe(4)
      expect(sent[0]).toMatch(/^insert into .?holds/i)
      expect(sent[1]).toMatch(/^select/i)
    })

    it.runIf(merges)("drops the waiting writes on rollback: nothing is stored, and the connection's next transaction does not send them", async () => {
      const productId = await newProduct(100)
      await expect(
        transaction(async (tx) => {
          await batchWrites(tx, productId, 'dropped')
          throw new Error('the work failed')
        }),
      ).rejects.toThrow('the work failed')
      expect(sent.filter((text) => /insert/i.test(text))).toEqual([])
      await transaction(async (tx) => {
        await tx.lockProduct(productId)
      })
      expect(sent.filter((text) => /insert/i.test(text))).toEqual([])
      expect(await stored(productId)).toEqual({ holds: 0, keys: 0, reserved: 0, bucketQty: 0 })
    })

    it.runIf(merges)('fails the commit with StoredKeyConflict when a key is stored already, and keeps nothing of that transaction', async () => {
      const productId = await newProduct(100)
      await transaction(async (tx) => {
        await tx.insertIdempotencyKeys('holds', [answer('taken-k1')], new Date(nowMs), new Date(nowMs + minuteMs))
      })
      const failure = await transaction(async (tx) => {
        await tx.lockProduct(productId)
        await batchWrites(tx, productId, 'taken')
      }).catch((error: unknown) => error)
      expect(failure).toBeInstanceOf(StoredKeyConflict)
      expect(await stored(productId)).toEqual({ holds: 0, keys: 1, reserved: 0, bucketQty: 0 })
    })

    it.runIf(merges)('fails the commit when a write that must change one row changes none, and keeps nothing of that transaction', async () => {
      const productId = await newProduct(100)
      await expect(
        transaction(async (tx) => {
          await tx.insertHolds([hold('orphan-1', productId, 1)])
          await tx.applyProductDelta(999_999, { reserved: 1, sold: 0, stock: 0 })
        }),
      ).rejects.toThrow(/counts of product 999999: 1 row expected to change(, 0 did|; another number did \(refused before the commit\))/)
      expect(await stored(productId)).toEqual({ holds: 0, keys: 0, reserved: 0, bucketQty: 0 })
    })

    it('fails the commit when a merged write must change 1 row and changes none, and keeps nothing of that transaction', async () => {
      const productId = await newProduct(100)
      await transaction(async (tx) => {
        await tx.insertIdempotencyKeys('holds', [answer('kept-a'), answer('kept-b')], new Date(nowMs), new Date(nowMs + minuteMs))
      })
      await expect(
        transaction(async (tx) => {
          await tx.insertHolds([hold('with-missing-1', productId, 1)])
          await tx.insertIdempotencyKeys('holds', [answer('kept-c')], new Date(nowMs), new Date(nowMs + minuteMs))
          await tx.applyProductDelta(999_999, { reserved: 1, sold: 0, stock: 0 })
        }),
      ).rejects.toThrow(/the counts of product 999999: 1 row expected to change/)
      expect(await stored(productId)).toEqual({ holds: 0, keys: 2, reserved: 0, bucketQty: 0 })
    })

    it.runIf(merges)('never merges an update with another write of its table: two updates of one row both count', async () => {
      const productId = await newProduct(100)
      await transaction(async (tx) => {
        await tx.applyProductDelta(productId, { reserved: 2, sold: 0, stock: 0 })
        await tx.applyProductDelta(productId, { reserved: 5, sold: 0, stock: 0 })
        await tx.insertHolds([hold('two-1', productId, 7)])
      })
      // The first update alone; the second with the insert and the expiry bucket.
      expect(sent[0]).toMatch(/^update\W+products/i)
      expect(sent[0]).not.toMatch(/holds/i)
      expect(sent[1]).toMatch(/update\W+products[\s\S]*holds/i)
      expect(await stored(productId)).toEqual({ holds: 1, keys: 0, reserved: 7, bucketQty: 7 })
    })

    it.runIf(merges)(`sends the earlier writes first past deferredWritesMax (${deferredWritesMax}) waiting, and stores every row`, async () => {
      const productId = await newProduct(100)
      const writesCount = 2 * deferredWritesMax + 3
      await transaction(async (tx) => {
        for (let index = 0; index < writesCount; index++) await tx.insertHolds([hold(`many-${index}`, productId, 1)])
      })
      // Two full merges sent when the next write found no room, then the rest (and the expiry bucket) at the end.
      const inserts = sent.filter((text) => /insert/i.test(text))
      expect(inserts).toHaveLength(3)
      expect((await stored(productId)).holds).toBe(writesCount)
      expect((await stored(productId)).bucketQty).toBe(writesCount)
    })

    it.runIf(!merges)('sends each write as it comes (no round trip to save in the process)', async () => {
      const productId = await newProduct(100)
      await transaction(async (tx) => {
        await tx.insertHolds([hold('now-1', productId, 1)])
        expect(sent).toHaveLength(1)
        await tx.applyProductDelta(productId, { reserved: 1, sold: 0, stock: 0 })
        expect(sent).toHaveLength(2)
      })
      expect(await stored(productId)).toEqual({ holds: 1, keys: 0, reserved: 1, bucketQty: 1 })
    })
  })
}
