// Sweeper lag per product (SPEC §6): the expiry of the oldest hold or order that has lapsed but
// is still waiting to be swept. Two MIN sub-queries per product, each answered by the first
// entry of the (product_id, status, expires_at) index, so the cost does not grow with the
// number of lapsed rows.
import { sql, type Kysely } from 'kysely'
import type { Database } from './schema.js'

export interface OldestLapsed {
  productId: number
  // null when nothing of this product waits to be swept.
  oldestLapsedAt: Date | null
}

// The earliest expiry among a product's lapsed holds, and among its lapsed orders (null when
// none), for a query over `products as p`: each one step into a lapsed index. The sweeper's
// search for products with work asks the same (kysely-store.ts productsWithLapsedRows).
export function earliestLapsed(db: Kysely<Database>, nowMs: number) {
  const product = sql.ref<number>('p.id')
  return {
    holds: db
      .selectFrom('holds as h')
      .select(sql<number | string | null>`min(h.expires_at)`.as('m'))
      .where('h.product_id', '=', product)
      .where('h.status', '=', 'active')
      .where('h.expires_at', '<=', nowMs),
    orders: db
      .selectFrom('orders as o')
      .select(sql<number | string | null>`min(o.expires_at)`.as('m'))
      .where('o.product_id', '=', product)
      .where('o.status', '=', 'pending')
      .where('o.expires_at', '<=', nowMs),
  }
}

export async function oldestLapsedByProduct(db: Kysely<Database>, now: Date, limit: number): Promise<OldestLapsed[]> {
  const earliest = earliestLapsed(db, now.getTime())
  const rows = await db
    .selectFrom('products as p')
    .select(['p.id', earliest.holds.as('hold_min'), earliest.orders.as('order_min')])
    // The newest first, as allProductSnapshots: the same products within the same limit.
    .orderBy('p.id', 'desc')
    .limit(limit)
    .execute()
  return rows.map((row) => {
    // BIGINT arrives as a string from pg and mysql2.
    const candidates = [row.hold_min, row.order_min].filter((value) => value !== null && value !== undefined).map(Number)
    return { productId: Number(row.id), oldestLapsedAt: candidates.length > 0 ? new Date(Math.min(...candidates)) : null }
  })
}

// The service-wide figure: the oldest lapsed row of any product, however many products there are
// (the max over a limited list of products missed the others: the dashboard's tile read 0 s
// while product 105 waited; the eighth probe). Two index steps per product, as above.
export async function oldestLapsedOverall(db: Kysely<Database>, now: Date): Promise<Date | null> {
  const earliest = earliestLapsed(db, now.getTime())
  const perProduct = db
    .selectFrom('products as p')
    .select([earliest.holds.as('hold_min'), earliest.orders.as('order_min')])
    .as('l')
  const row = await db
    .selectFrom(perProduct)
    .select([sql<number | string | null>`min(l.hold_min)`.as('hold_min'), sql<number | string | null>`min(l.order_min)`.as('order_min')])
    .executeTakeFirst()
  const candidates = [row?.hold_min, row?.order_min].filter((value) => value !== null && value !== undefined).map(Number)
  return candidates.length > 0 ? new Date(Math.min(...candidates)) : null
}
