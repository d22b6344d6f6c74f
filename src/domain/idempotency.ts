import { createHash } from 'node:crypto'
import { addMs } from './clock.js'
import { DomainError } from './errors.js'
import type { IdempotencyScope, StoreTx } from './store.js'

// A request's fingerprint: the meaning of its body, not its bytes, so `qty` and its alias
// `quantity`, or a key sent in the header versus the body, fingerprint alike.
export function fingerprintOf(parts: readonly unknown[]): string {
  return createHash('sha256').update(JSON.stringify(parts)).digest('base64url')
}

export function assertSameFingerprint(stored: string, given: string): void {
  if (stored !== given) throw new DomainError('idempotency_key_reused')
}

// Claims the key for a request being served in this transaction (claimed until its answer is
// stored); false when a live claim or answer already holds it.
export function claimKey(tx: StoreTx, scope: IdempotencyScope, key: string, fingerprint: string, now: Date, ttlMs: number): Promise<boolean> {
  return tx.claimIdempotencyKey({ scope, key, fingerprint, state: 'claimed', responseJson: '', expiresAt: addMs(now, ttlMs) }, now)
}

// Requests in this process that carry a key still being served. A duplicate waits for the
// first and is then answered from what the first stored; across processes the database's
// unique key and the product row lock give the same result.
export class InFlightKeys {
  private readonly running = new Map<string, Promise<unknown>>()

  async run<T>(scopedKey: string, fn: () => Promise<T>): Promise<{ waited: boolean; value?: T }> {
    const earlier = this.running.get(scopedKey)
    if (earlier) {
      await earlier.catch(() => undefined)
      return { waited: true }
    }
    const promise = fn()
    this.running.set(scopedKey, promise)
    try {
      return { waited: false, value: await promise }
    } finally {
      this.running.delete(scopedKey)
    }
  }
}
