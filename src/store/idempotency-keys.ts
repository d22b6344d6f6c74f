// Idempotency keys in SQL. The status_code column predates the key states: 0 is a claim and 201
// (the only answer a key keeps) a completed key, so rows written by older versions read the same.
import type { IdempotencyKeyState } from '../domain/store.js'

export function statusCodeOf(state: IdempotencyKeyState): number {
  return state === 'claimed' ? 0 : 201
}

export function keyStateOf(statusCode: number): IdempotencyKeyState {
  return statusCode === 0 ? 'claimed' : 'completed'
}
