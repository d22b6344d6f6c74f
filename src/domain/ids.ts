import { randomBytes } from 'node:crypto'

// 96 random bits: knowing an id is what lets a buyer use it (SPEC §3), so it must not be guessable.
const idRandomBytes = 12

export function newHoldId(): string {
  return `hold_${randomBytes(idRandomBytes).toString('base64url')}`
}

export function newOrderId(): string {
  return `ord_${randomBytes(idRandomBytes).toString('base64url')}`
}
