import { createHash } from 'node:crypto'
import { DomainError } from './errors.js'

// A request's fingerprint: the meaning of its body, not its bytes, so `qty` and its alias
// `quantity`, or a key sent in the header versus the body, fingerprint alike.
export function fingerprintOf(parts: readonly unknown[]): string {
  return createHash('sha256').update(JSON.stringify(parts)).digest('base64url')
}

export function assertSameFingerprint(stored: string, given: string): void {
  if (stored !== given) throw new DomainError('idempotency_key_reused')
}

// Requests in this process that carry a key still being served. A duplicate waits for the
// first; if the first succeeded, the duplicate is answered from the first's answer (no round
// trip: twenty duplicates are answered together, not one more batch each); if the first changed
// nothing, the duplicate runs afresh. Across processes the database's unique key and the
// product row lock give the same result.
export class InFlightKeys<T> {
  private readonly running = new Map<string, { fingerprint: string; promise: Promise<T> }>()

  async run(scopedKey: string, fingerprint: string, fn: () => Promise<T>): Promise<{ waited: false; value: T } | { waited: true; earlier: { fingerprint: string; value: T } | undefined }> {
    const earlier = this.running.get(scopedKey)
    if (earlier) {
      const value = await earlier.promise.then(
        (resolved) => resolved,
        () => undefined,
      )
      return { waited: true, earlier: value === undefined ? undefined : { fingerprint: earlier.fingerprint, value } }
    }
    const promise = fn()
    this.running.set(scopedKey, { fingerprint, promise })
    try {
      return { waited: false, value: await promise }
    } finally {
      this.running.delete(scopedKey)
    }
  }
}
