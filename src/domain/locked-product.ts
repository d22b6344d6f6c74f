// The one shape of every change to a product: lock its row, open a ledger on its counts, do the
// work, serve the waitlist with what the work freed, flush the ledger (one UPDATE), commit, and only then emit the events the work collected
// (a retried transaction runs the work again, so nothing may leave it before the commit).
import { DomainError } from './errors.js'
import { emitAll, type DomainEvent, type EventLog, type Observer } from './events.js'
import { ProductLedger } from './ledger.js'
import { serveLine } from './line.js'
import { reclaimBatchMax, type SettleContext } from './settle.js'
import type { Store, StoreTx } from './store.js'

export interface LockedProductOptions {
  // Names the use case in tx.retry logs and metrics.
  label: string
  productId: number
  now: Date
  // How many lapsed rows the work may expire on the way (the sweeper passes what is left of its pass).
  reclaimMax?: number
  // The log of the request the work serves (its events and retries are logged there).
  log?: EventLog
  // When the oldest request served was queued (TransactionOptions).
  queuedSinceMs?: number
}

// Runs `work` under the product's row lock (StoreTx lock order: the product first). An unknown
// product is refused with product_not_found before any work. `beforeLock` runs in the same
// transaction before the lock is taken: a hold batch stores its idempotency keys there
// (keyed-batches.ts), so the only locks taken before the product's are on new key rows.
export async function withLockedProduct<T>(
  store: Store,
  observer: Observer,
  options: LockedProductOptions,
  work: (ctx: SettleContext) => Promise<T>,
  beforeLock?: (tx: StoreTx) => Promise<void>,
): Promise<T> {
  const { result, events } = await store.transaction({ label: options.label, log: options.log, queuedSinceMs: options.queuedSinceMs }, async (tx) => {
    if (beforeLock) await beforeLock(tx)
    const product = await tx.lockProduct(options.productId)
    if (!product) throw new DomainError('product_not_found')
    const events: DomainEvent[] = []
    const ledger = new ProductLedger(product)
    const ctx = { tx, ledger, now: options.now, events, reclaimBatchMax: options.reclaimMax ?? reclaimBatchMax }
    const result = await work(ctx)
    // Whatever the work freed goes to the waitlist first, in this same transaction (SPEC §8).
    await serveLine(ctx)
    await ledger.flush(tx)
    return { result, events }
  })
  emitAll(observer, events, options.log)
  return result
}
