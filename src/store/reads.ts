// Reads both the store (outside a transaction) and a transaction make: one implementation each,
// run on whichever connection the caller holds.
import type { Kysely } from 'kysely'
import type { Hold, IdempotencyRecord, IdempotencyScope, KeyedHold, Order, PaymentEvent } from '../domain/store.js'
import { toIdempotencyRecord } from './idempotency-keys.js'
import { toHold, toKeyedHold, toOrder, toPaymentEvent } from './rows.js'
import type { Database } from './schema.js'

type Db = Kysely<Database>

export async function findHold(db: Db, holdId: string): Promise<Hold | undefined> {
  const row = await db.selectFrom('holds').selectAll().where('id', '=', holdId).executeTakeFirst()
  return row ? toHold(row) : undefined
}

export async function findOrder(db: Db, orderId: string): Promise<Order | undefined> {
  const row = await db.selectFrom('orders').selectAll().where('id', '=', orderId).executeTakeFirst()
  return row ? toOrder(row) : undefined
}

export async function findPaymentEvent(db: Db, idempotencyKey: string): Promise<PaymentEvent | undefined> {
  const row = await db.selectFrom('payment_events').selectAll().where('idem_key', '=', idempotencyKey).executeTakeFirst()
  return row ? toPaymentEvent(row) : undefined
}

export async function findIdempotencyRecord(db: Db, scope: IdempotencyScope, key: string): Promise<IdempotencyRecord | undefined> {
  const row = await db.selectFrom('idempotency_keys').selectAll().where('scope', '=', scope).where('idem_key', '=', key).executeTakeFirst()
  return row ? toIdempotencyRecord(row) : undefined
}

// The hold rows keeping these keys (migration 0010), found through holds_idem_key_idx.
export async function findKeyedHolds(db: Db, keys: readonly string[]): Promise<KeyedHold[]> {
  if (keys.length === 0) return []
  const rows = await db.selectFrom('holds').selectAll().where('idem_key', 'in', keys).execute()
  return rows.map(toKeyedHold)
}
