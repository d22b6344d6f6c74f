// Idempotency keys in SQL, read and written a whole batch at a time: a constant number of
// statements per batch however many of its requests carry a key.
import { type Kysely, type Selectable } from 'kysely'
import type { IdempotencyAnswer, IdempotencyKeyState, IdempotencyRecord, IdempotencyScope } from '../domain/store.js'
import type { ArrayColumn, Engine } from './engines/engine.js'
import type { Database, IdempotencyKeysTable } from './schema.js'
import { inListShape, type StatementShape } from './statement-shape.js'

// Every column of idempotency_keys with its type in migration 0001, in the order keyValues gives them.
export const keyColumns = [
  { name: 'scope', type: 'varchar' },
  { name: 'idem_key', type: 'varchar' },
  { name: 'fingerprint', type: 'varchar' },
  { name: 'status_code', type: 'integer' },
  { name: 'response_json', type: 'varchar' },
  { name: 'created_at', type: 'bigint' },
  { name: 'expires_at', type: 'bigint' },
] as const satisfies readonly (ArrayColumn & { name: keyof IdempotencyKeysTable })[]

// The statements below carry every key of a batch: start-up checks that a batch fits (statement-limits.ts).
// Seven parameters a row in a VALUES list; seven in all where the engine sends column arrays.
export const insertKeysShape: StatementShape = {
  statement: 'the multi-row insert of idempotency keys',
  parameters: (engine: Engine) => (engine.columnArraysInsertSql ? { fixed: keyColumns.length, perRow: 0 } : { fixed: 0, perRow: keyColumns.length }),
}
// One parameter a key in an IN list; the scope and one array where the engine looks keys up by array.
export const readKeysShape: StatementShape = {
  statement: 'reading idempotency keys',
  parameters: (engine: Engine) => (engine.rowsByKeyArraySql ? { fixed: 2, perRow: 0 } : { fixed: 1, perRow: 1 }),
}
export const freeKeysShape = inListShape('freeing expired idempotency keys', 2)
// The sweeper deletes up to SWEEP_BATCH_MAX expired keys of a scope in one statement (kysely-store.ts).
export const deleteExpiredKeysShape = inListShape('deleting expired idempotency keys', 3)

// The status_code column predates the key states: 0 is a claim and 201 (the only answer a key
// keeps) a completed key, so rows written by older versions read the same.
export function statusCodeOf(state: IdempotencyKeyState): number {
  return state === 'claimed' ? 0 : 201
}

export function keyStateOf(statusCode: number): IdempotencyKeyState {
  return statusCode === 0 ? 'claimed' : 'completed'
}

export function toIdempotencyRecord(row: Selectable<IdempotencyKeysTable>): IdempotencyRecord {
  return {
    scope: row.scope as IdempotencyScope,
    key: row.idem_key,
    fingerprint: row.fingerprint,
    state: keyStateOf(Number(row.status_code)),
    responseJson: row.response_json,
    expiresAt: new Date(Number(row.expires_at)),
  }
}

export function keyValues(scope: IdempotencyScope, answer: IdempotencyAnswer, now: Date, expiresAt: Date): Selectable<IdempotencyKeysTable> {
  return {
    scope,
    idem_key: answer.key,
    fingerprint: answer.fingerprint,
    status_code: statusCodeOf('completed'),
    response_json: answer.responseJson,
    created_at: now.getTime(),
    expires_at: expiresAt.getTime(),
  }
}

// Every row of these keys, live or expired (compiled once per list length by HotSql).
export function keysQuery(db: Kysely<Database>, scope: IdempotencyScope, keys: readonly string[]) {
  return db.selectFrom('idempotency_keys').selectAll().where('scope', '=', scope).where('idem_key', 'in', keys)
}

// Rare (a key reused after its TTL, before the sweeper deleted it), so built per call.
export async function freeExpiredKeys(db: Kysely<Database>, scope: IdempotencyScope, keys: readonly string[], now: Date): Promise<void> {
  if (keys.length === 0) return
  await db.deleteFrom('idempotency_keys').where('scope', '=', scope).where('idem_key', 'in', keys).where('expires_at', '<=', now.getTime()).execute()
}

// The sweeper's delete of expired keys of one scope, at most SWEEP_BATCH_MAX of them, through the
// primary key (a claim in flight is never deleted). Returns the rows deleted.
export async function deleteExpiredKeys(db: Kysely<Database>, scope: string, keys: readonly string[], now: Date): Promise<number> {
  if (keys.length === 0) return 0
  const result = await db
    .deleteFrom('idempotency_keys')
    .where('scope', '=', scope)
    .where('idem_key', 'in', keys)
    .where('expires_at', '<=', now.getTime())
    .where('status_code', '!=', statusCodeOf('claimed'))
    .executeTakeFirst()
  return Number(result.numDeletedRows)
}
