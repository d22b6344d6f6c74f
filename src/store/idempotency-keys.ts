// Idempotency keys in SQL, claimed, completed and released a whole batch at a time: a constant
// number of statements per batch however many of its requests carry a key.
import { sql, type Kysely, type Selectable } from 'kysely'
import type { IdempotencyAnswer, IdempotencyClaim, IdempotencyKeyState, IdempotencyRecord, IdempotencyScope } from '../domain/store.js'
import type { Engine } from './engines/engine.js'
import type { Database, IdempotencyKeysTable } from './schema.js'
import { inListShape, type StatementShape } from './statement-shape.js'

const keyColumnsCount = 7
// The statements below carry every key of a batch: start-up checks that a batch fits (statement-limits.ts).
export const claimKeysShape: StatementShape = { statement: 'the multi-row claim of idempotency keys', parameters: () => ({ fixed: 0, perRow: keyColumnsCount }) }
export const completeKeysShape: StatementShape = { statement: 'storing the answers of idempotency keys', parameters: () => ({ fixed: 2, perRow: 3 }) }
export const keysByNameShape = inListShape('reading, freeing or releasing idempotency keys', 2)

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

// Three statements: expired keys are freed, every key is inserted as a claim unless a row holds
// it (one multi-row insert-or-ignore), and the rows that kept their key are read back. A claim
// is never committed (its transaction completes or releases it first), so every row for these
// keys that is not a claim of ours is a live answer that won the key before this batch.
export async function claimKeys(
  db: Kysely<Database>,
  engine: Engine,
  scope: IdempotencyScope,
  claims: readonly IdempotencyClaim[],
  now: Date,
  expiresAt: Date,
): Promise<IdempotencyRecord[]> {
  if (claims.length === 0) return []
  const keys = claims.map((claim) => claim.key)
  await db.deleteFrom('idempotency_keys').where('scope', '=', scope).where('idem_key', 'in', keys).where('expires_at', '<=', now.getTime()).execute()
  const rows = claims.map((claim) => ({
    scope,
    idem_key: claim.key,
    fingerprint: claim.fingerprint,
    status_code: statusCodeOf('claimed'),
    response_json: '',
    created_at: now.getTime(),
    expires_at: expiresAt.getTime(),
  }))
  const insert = db.insertInto('idempotency_keys').values(rows)
  if (engine.insertIgnoreStyle === 'on_conflict') await insert.onConflict((conflict) => conflict.columns(['scope', 'idem_key']).doNothing()).execute()
  // One row's duplicate cannot be caught out of a multi-row insert: a no-op update leaves the
  // row that holds the key as it is instead.
  else await insert.onDuplicateKeyUpdate({ scope: sql`scope` }).execute()
  const losers = await db
    .selectFrom('idempotency_keys')
    .selectAll()
    .where('scope', '=', scope)
    .where('idem_key', 'in', keys)
    .where('status_code', '!=', statusCodeOf('claimed'))
    .execute()
  return losers.map(toIdempotencyRecord)
}

// One UPDATE stores every answer (a CASE on the key picks each one's JSON).
export async function completeKeys(db: Kysely<Database>, scope: IdempotencyScope, answers: readonly IdempotencyAnswer[]): Promise<void> {
  if (answers.length === 0) return
  const responseJson = sql<string>`case idem_key ${sql.join(
    answers.map((answer) => sql`when ${answer.key} then ${answer.responseJson}`),
    sql` `,
  )} else response_json end`
  await db
    .updateTable('idempotency_keys')
    .set({ status_code: statusCodeOf('completed'), response_json: responseJson })
    .where('scope', '=', scope)
    .where(
      'idem_key',
      'in',
      answers.map((answer) => answer.key),
    )
    .execute()
}

// Keys of answers that changed nothing are free again (SPEC §3): one DELETE of their claims.
export async function releaseKeys(db: Kysely<Database>, scope: IdempotencyScope, keys: readonly string[]): Promise<void> {
  if (keys.length === 0) return
  await db.deleteFrom('idempotency_keys').where('scope', '=', scope).where('idem_key', 'in', keys).where('status_code', '=', statusCodeOf('claimed')).execute()
}
