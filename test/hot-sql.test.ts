// Proves the compiled-once hot statements (src/store/hot-sql.ts) answer and write exactly what
// the ordinary Kysely queries they are compiled from do, on every engine: the sentinel swap puts
// each parameter where it belongs, and PostgreSQL's column-array insert stores the same rows as
// a VALUES list.
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { Kysely } from 'kysely'
import type { Hold } from '../src/domain/store.js'
import { engines } from '../src/store/engines/index.js'
import { HotSql, insertHoldsQuery, lockProductQuery, productDeltaQuery, snapshotQuery } from '../src/store/hot-sql.js'
import { KyselyStore } from '../src/store/kysely-store.js'
import { toHold, toProduct, toSnapshot } from '../src/store/rows.js'
import type { Database } from '../src/store/schema.js'
import { testEngines } from './helpers/engines.js'
import { storeBeside, type StoreBeside } from './helpers/store-beside.js'

const nowMs = 1_800_000_000_000
const minuteMs = 60_000

function hold(id: string, productId: number, qty: number, expiresAtMs: number, status: Hold['status'] = 'active'): Hold {
  return { id, productId, qty, status, expiresAt: new Date(expiresAtMs), createdAt: new Date(expiresAtMs - 2 * minuteMs), buyerId: null }
}

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: hot statements`, () => {
    let beside: StoreBeside
    let store: KyselyStore
    let db: Kysely<Database>
    let hot: HotSql

    beforeEach(async () => {
      beside = await storeBeside(engine.name, { poolSizeMax: 2, createdAt: new Date(nowMs) })
      ;({ store, db } = beside)
      hot = new HotSql(engines[engine.name])
    })

    afterEach(() => beside.close())

    const newProduct = (stock: number): Promise<number> => beside.newProduct(stock)

    it('productSnapshot counts the same lapsed units as the ordinary snapshot query, for each product and for none', async () => {
      const first = await newProduct(100)
      const second = await newProduct(50)
      await store.transaction({ label: 'test' }, async (tx) => {
        await tx.applyProductDelta(first, { reserved: 2 + 3 + 4 + 5, sold: 0, stock: 0 })
        await tx.applyProductDelta(second, { reserved: 6, sold: 0, stock: 0 })
        await tx.insertHolds([
          hold('h-lapsed', first, 2, nowMs - minuteMs),
          hold('h-live', first, 3, nowMs + minuteMs),
          // Lapsed, but a success waits on it: not free.
          hold('h-paid-late', first, 4, nowMs - minuteMs),
          hold('h-ordered', first, 5, nowMs - 2 * minuteMs, 'converted'),
          hold('h-other', second, 6, nowMs - minuteMs),
        ])
        await tx.insertOrders([
          {
            id: 'o-lapsed',
            holdId: 'h-ordered',
            productId: first,
            qty: 5,
            amountMinor: 6250,
            currency: 'USD',
            status: 'pending',
            createdAt: new Date(nowMs - 2 * minuteMs),
            expiresAt: new Date(nowMs - 1),
            paidAt: null,
            paymentId: null,
            refundRequired: false,
            buyerId: null,
          },
        ])
        const paidLate = {
          idempotencyKey: 'evt-1',
          fingerprint: 'f',
          orderId: null,
          holdId: 'h-paid-late',
          status: 'success' as const,
          paymentId: 'pay-1',
          amountMinor: null,
          state: 'waiting' as const,
          outcome: null,
          responseJson: null,
          createdAt: new Date(nowMs - minuteMs),
          processedAt: null,
        }
        // A second success (the provider's retry under a new key) holds the same units, not twice as many.
        await tx.insertPaymentEvents([paidLate, { ...paidLate, idempotencyKey: 'evt-2' }])
      })
      const now = new Date(nowMs)
      for (const [productId, lapsedQty] of [
        [first, 2 + 5],
        [second, 6],
      ] as const) {
        const ordinary = toSnapshot(await snapshotQuery(db, now).where('p.id', '=', productId).executeTakeFirstOrThrow())
        expect(ordinary.lapsedQty).toBe(lapsedQty)
        expect(await hot.productSnapshot(db, productId, now)).toEqual(ordinary)
        // The store's read is the hot one.
        expect(await store.productSnapshot(productId, now)).toEqual(ordinary)
      }
      // A later clock with the same compiled text: the live hold has lapsed by then.
      const later = new Date(nowMs + 2 * minuteMs)
      expect((await hot.productSnapshot(db, first, later))?.lapsedQty).toBe(2 + 3 + 5)
      expect(await hot.productSnapshot(db, 999_999, now)).toBeUndefined()
    })

    it('lockProduct reads the same row as the ordinary locking select, and nothing for an unknown id', async () => {
      const first = await newProduct(7)
      const second = await newProduct(9)
      for (const productId of [first, second, 999_999]) {
        const ordinaryRow = await db.transaction().execute((trx) => lockProductQuery(trx, engines[engine.name], productId).executeTakeFirst())
        const hotProduct = await db.transaction().execute((trx) => hot.lockProduct(trx, productId))
        expect(hotProduct).toEqual(ordinaryRow ? toProduct(ordinaryRow) : undefined)
      }
      expect((await db.transaction().execute((trx) => hot.lockProduct(trx, second)))?.stock).toBe(9)
    })

    it('applyProductDelta moves the same counts as the ordinary update, each into its own column', async () => {
      const viaHot = await newProduct(100)
      const viaOrdinary = await newProduct(100)
      const updatedAt = new Date(nowMs + 5)
      // Distinct values per column: a swapped parameter would show.
      for (const delta of [
        { reserved: 7, sold: 3, stock: 11 },
        { reserved: -2, sold: 1, stock: 0 },
      ]) {
        await hot.applyProductDelta(db, viaHot, delta, updatedAt, false)
        await productDeltaQuery(db, viaOrdinary, delta, updatedAt).execute()
      }
      const rows = await db.selectFrom('products').selectAll().where('id', 'in', [viaHot, viaOrdinary]).orderBy('id').execute()
      expect({ ...rows[0]!, id: 0 }).toEqual({ ...rows[1]!, id: 0 })
      expect(toProduct(rows[0]!)).toMatchObject({ id: viaHot, reserved: 5, sold: 4, stock: 111 })
      expect(Number(rows[0]!.updated_at)).toBe(updatedAt.getTime())
      await expect(hot.applyProductDelta(db, 999_999, { reserved: 1, sold: 0, stock: 0 }, updatedAt, false)).rejects.toThrow(/1 row expected to change, 0 did/)
    })

    it('insertHolds stores the same rows as the ordinary VALUES insert, for batches of one and of several, with and without keys', async () => {
      const productId = await newProduct(100)
      for (const [round, size] of [1, 3, 1, 2].entries()) {
        const batch = Array.from({ length: size }, (_, index) => hold(`b${round}-${index}`, productId, index + 1, nowMs + index * minuteMs))
        // The last round keeps a key in its first row and none in its second.
        const keysOf = (prefix: string) => (round === 3 ? [{ key: `${prefix}-key-${round}`, fingerprint: 'fp' }, null] : undefined)
        await hot.insertHolds(
          db,
          batch.map((each) => ({ ...each, id: `hot-${each.id}` })),
          { defer: false, keys: keysOf('hot') },
        )
        await insertHoldsQuery(
          db,
          batch.map((each) => ({ ...each, id: `plain-${each.id}` })),
          keysOf('plain'),
        ).execute()
      }
      const rows = await db.selectFrom('holds').selectAll().orderBy('id').execute()
      const unprefixed = (prefix: string) =>
        rows.filter((row) => row.id.startsWith(prefix)).map((row) => ({ ...row, id: row.id.slice(prefix.length), idem_key: row.idem_key?.slice(prefix.length) ?? null }))
      const hotRows = unprefixed('hot-')
      expect(hotRows).toHaveLength(7)
      expect(hotRows).toEqual(unprefixed('plain-'))
      expect(
        hotRows
          .map(toHold)
          .map((each) => each.qty)
          .sort(),
      ).toEqual([1, 1, 1, 1, 2, 2, 3])
      expect(hotRows.filter((row) => row.idem_key !== null).map((row) => [row.id, row.idem_key, row.idem_fingerprint])).toEqual([['b3-0', 'key-3', 'fp']])
    })

    it('keeps its per-count texts under a bound on their bytes, the oldest half going past it, and still inserts every count right', async () => {
      const productId = await newProduct(100_000)
      const cacheBytesMax = 20_000
      const bounded = new HotSql(engines[engine.name], cacheBytesMax)
      let inserted = 0
      let peakBytes = 0
      // Every count from 1 to 120 once, then again: far more text than the bound, if kept.
      for (const round of [0, 1]) {
        for (let size = 1; size <= 120; size++) {
          const batch = Array.from({ length: size }, (_, index) => hold(`r${round}-${size}-${index}`, productId, 1, nowMs + minuteMs))
          await bounded.insertHolds(db, batch, { defer: false })
          inserted += size
          peakBytes = Math.max(peakBytes, bounded.keptBytes())
        }
      }
      expect(peakBytes).toBeLessThanOrEqual(cacheBytesMax)
      // Not vacuous: the texts of engines that list rows did fill a generation.
      if (!engines[engine.name].columnArraysInsertSql) expect(peakBytes).toBeGreaterThan(cacheBytesMax / 2)
      const counted = await db
        .selectFrom('holds')
        .select((eb) => eb.fn.countAll<number>().as('n'))
        .executeTakeFirstOrThrow()
      expect(Number(counted.n)).toBe(inserted)
    })
  })
}
