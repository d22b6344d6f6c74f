import { randomBytes } from 'node:crypto'

// 96 random bits: knowing an id is what lets a buyer use it (SPEC §3), so it must not be guessable.
const idRandomBytes = 12

// One call to the random source for a whole batch: each id still gets its own 96 random bits.
export function newHoldIds(count: number): string[] {
  const bytes = randomBytes(idRandomBytes * count)
  return Array.from({ length: count }, (_, index) => `hold_${bytes.subarray(index * idRandomBytes, (index + 1) * idRandomBytes).toString('base64url')}`)
}

export function newOrderId(): string {
  return `ord_${randomBytes(idRandomBytes).toString('base64url')}`
}

// Ids that cannot name anything are refused before any query: the database would otherwise
// reject some of them as errors (a product id past its 32-bit column, a NUL byte in PostgreSQL).
export const productIdMax = 2_147_483_647
const resourceIdPattern = /^[A-Za-z0-9_-]{1,64}$/

export function isProductId(value: number): boolean {
  return Number.isSafeInteger(value) && value >= 1 && value <= productIdMax
}

// Path segments: decimal digits only, no sign, no leading zero, no fraction.
export function parseProductId(text: string): number | undefined {
  if (!/^[1-9]\d{0,15}$/.test(text)) return undefined
  const value = Number(text)
  return isProductId(value) ? value : undefined
}

export function isResourceId(value: string): boolean {
  return resourceIdPattern.test(value)
}
