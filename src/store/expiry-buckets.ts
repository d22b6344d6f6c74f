// Per-product expiry buckets (SPEC §4): how many units of active holds and pending orders expire
// in each 50 ms slice of time. A read then finds the units of lapsed rows not yet swept from the
// buckets wholly before `now` plus the rows of the one bucket that straddles it, so its cost
// follows the number of buckets, not the number of lapsed rows (100,000 lapsed holds of one burst
// sit in a handful of buckets).
//
// Bookkeeping lives here, in the store, not in the domain: every statement that inserts a live
// row (active hold, pending order) or moves one out of that status notes the change in the
// transaction's ExpiryBook, and the transaction runner writes the book once, before commit, in
// one upsert (holds of one batch share their expiry, so a hold batch adds one bucket row). The
// audit recomputes the buckets from the rows (expiryBucketDrift).
import { sql, type Kysely } from 'kysely'
import { runWrite } from './write-behind.js'
import type { Engine } from './engines/engine.js'
import type { Database } from './schema.js'

type Db = Kysely<Database>

export const bucketWidthMs = 50

// Bucket b holds the rows whose expires_at is in ((b - 1) * width, b * width]: the bucket is
// wholly lapsed once b * width <= now, the instant its last row lapses.
export function bucketOf(expiresAtMs: number): number {
  return Math.ceil(expiresAtMs / bucketWidthMs)
}

// The same as bucketOf, in SQL that divides exactly on every engine (MySQL's `/` is decimal).
export function bucketOfSql(expiresAtColumn: string) {
  const column = sql.ref(expiresAtColumn)
  const width = sql.lit(bucketWidthMs)
  return sql<number>`((${column} + ${width} - 1) - (${column} + ${width} - 1) % ${width}) / ${width}`
}

// What a read at `now` needs: buckets up to `wholeBucket` have lapsed entirely; rows expiring
// in (straddleFromMs, nowMs] belong to the next bucket, which lapses partly.
export function lapseBounds(now: Date): { nowMs: number; wholeBucket: number; straddleFromMs: number } {
  const nowMs = now.getTime()
  const wholeBucket = Math.floor(nowMs / bucketWidthMs)
  return { nowMs, wholeBucket, straddleFromMs: wholeBucket * bucketWidthMs }
}

// Rows a statement may carry: three parameters each, far below every engine's limit.
const entriesPerStatementMax = 1_000

// One transaction's changes to the buckets, summed per (product, bucket) as they are noted.
export class ExpiryBook {
  private readonly deltas = new Map<string, { productId: number; bucket: number; qty: number }>()

  // A live row appeared (qty > 0) or stopped being live (qty < 0).
  note(productId: number, expiresAtMs: number, qty: number): void {
    const bucket = bucketOf(expiresAtMs)
    const key = `${productId}:${bucket}`
    const entry = this.deltas.get(key)
    if (entry) entry.qty += qty
    else this.deltas.set(key, { productId, bucket, qty })
  }

  // Writes the summed changes. Units that arrive go in with one upsert; units that leave come out
  // of buckets that must exist, with one UPDATE per product whose row count is checked (a bucket
  // missing is bookkeeping gone wrong: the transaction fails rather than commit it), then the
  // buckets that emptied are deleted, so the table only ever holds buckets with live units and
  // what a read sums stays small. (One upsert cannot do both: the table's CHECK judges the row an
  // upsert proposes, a negative quantity, before it finds the conflict.)
  // `defer`: the arriving upserts wait to be merged with the transaction's other writes
  // (write-behind.ts); the leaving part checks what it changed and runs at once.
  async flush(db: Db, engine: Engine, defer = false): Promise<void> {
    const entries = [...this.deltas.values()].filter((entry) => entry.qty !== 0)
    this.deltas.clear()
    const arriving = entries.filter((entry) => entry.qty > 0)
    for (let start = 0; start < arriving.length; start += entriesPerStatementMax) {
      const chunk = arriving.slice(start, start + entriesPerStatementMax)
      const insert = db.insertInto('expiry_buckets').values(chunk.map((entry) => ({ product_id: entry.productId, bucket: entry.bucket, qty: entry.qty })))
      const upsert =
        engine.upsertStyle === 'on_conflict'
          ? insert.onConflict((conflict) => conflict.columns(['product_id', 'bucket']).doUpdateSet({ qty: sql<number>`expiry_buckets.qty + excluded.qty` }))
          : insert.onDuplicateKeyUpdate({ qty: sql<number>`qty + values(qty)` })
      const { sql: text, parameters } = upsert.compile()
      await runWrite(db, { sql: text, parameters, what: 'the expiry buckets', table: 'expiry_buckets', insertsOnly: false }, defer)
    }
    const leavingByProduct = new Map<number, Array<{ bucket: number; qty: number }>>()
    for (const entry of entries) {
      if (entry.qty < 0) leavingByProduct.set(entry.productId, [...(leavingByProduct.get(entry.productId) ?? []), { bucket: entry.bucket, qty: -entry.qty }])
    }
    for (const [productId, leaving] of leavingByProduct) {
      for (let start = 0; start < leaving.length; start += entriesPerStatementMax) {
        const chunk = leaving.slice(start, start + entriesPerStatementMax)
        const buckets = chunk.map((entry) => entry.bucket)
        const cases = sql.join(
          chunk.map((entry) => sql`when ${entry.bucket} then ${entry.qty}`),
          sql` `,
        )
        const result = await db
          .updateTable('expiry_buckets')
          .set({ qty: sql<number>`qty - case bucket ${cases} else 0 end` })
          .where('product_id', '=', productId)
          .where('bucket', 'in', buckets)
          .executeTakeFirst()
        if (Number(result.numUpdatedRows) !== chunk.length) {
          throw new Error(`expiry buckets of product ${productId} missing: ${chunk.length} to take units from, ${result.numUpdatedRows} found`)
        }
        await db.deleteFrom('expiry_buckets').where('product_id', '=', productId).where('bucket', 'in', buckets).where('qty', '=', 0).execute()
      }
    }
  }
}

export interface BucketDrift {
  productId: number
  bucket: number
  // What the bucket says, and what the live rows expiring in it sum to.
  bookQty: number
  rowsQty: number
}

// Buckets that disagree with the rows, read in one statement (one snapshot) for the audit.
export async function expiryBucketDrift(db: Db): Promise<BucketDrift[]> {
  const holds = db
    .selectFrom('holds')
    .select(['product_id', bucketOfSql('expires_at').as('bucket'), 'qty as rows_qty', sql<number>`0`.as('book_qty')])
    .where('status', '=', 'active')
  const orders = db
    .selectFrom('orders')
    .select(['product_id', bucketOfSql('expires_at').as('bucket'), 'qty as rows_qty', sql<number>`0`.as('book_qty')])
    .where('status', '=', 'pending')
  const book = db.selectFrom('expiry_buckets').select(['product_id', 'bucket', sql<number>`0`.as('rows_qty'), 'qty as book_qty'])
  const rows = await db
    .selectFrom(holds.unionAll(orders).unionAll(book).as('u'))
    .select(['u.product_id', 'u.bucket', sql<number>`sum(u.book_qty)`.as('book_qty'), sql<number>`sum(u.rows_qty)`.as('rows_qty')])
    .groupBy(['u.product_id', 'u.bucket'])
    .having(sql`sum(u.book_qty)`, '<>', sql`sum(u.rows_qty)`)
    .orderBy('u.product_id')
    .orderBy('u.bucket')
    .execute()
  return rows.map((row) => ({ productId: Number(row.product_id), bucket: Number(row.bucket), bookQty: Number(row.book_qty), rowsQty: Number(row.rows_qty) }))
}
