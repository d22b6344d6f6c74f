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

export async function oldestLapsedByProduct(db: Kysely<Database>, now: Date, limit: number): Promise<OldestLapsed[]> {
  const nowMs = now.getTime()
  const rows = await db
    .selectFrom('products as p')
    .select((eb) => [
      'p.id',
      eb
        .selectFrom('holds as h')
        .select(sql<number | string | null>`min(h.expires_at)`.as('m'))
        .whereRef('h.product_id', '=', 'p.id')
        .where('h.status', '=', 'active')
        .where('h.expires_at', '<=', nowMs)
        .as('hold_min'),
      eb
        .selectFrom('orders as o')
        .select(sql<number | string | null>`min(o.expires_at)`.as('m'))
        .whereRef('o.product_id', '=', 'p.id')
        .where('o.status', '=', 'pending')
        .where('o.expires_at', '<=', nowMs)
        .as('order_min'),
    ])
    .orderBy('p.id')
    .limit(limit)
    .execute()
  return rows.map((row) => {
    // BIGINT arrives as a string from pg and mysql2.
    const candidates = [row.hold_min, row.order_min].filter((value) => value !== null && value !== undefined).map(Number)
    return { productId: Number(row.id), oldestLapsedAt: candidates.length > 0 ? new Date(Math.min(...candidates)) : null }
  })
}
