// Brings lapsed holds and orders up to date in bounded batches. Safe with many instances at
// once: each product is swept under its row lock and every status change is compare-and-set,
// so a hold is released, and counted in metrics, exactly once.
import { assert } from '../domain/assert.js'
import type { Clock } from '../domain/clock.js'
import type { Observer } from '../domain/events.js'
import { withLockedProduct } from '../domain/locked-product.js'
import { expireLapsed } from '../domain/settle.js'
import type { Store } from '../domain/store.js'

export interface SweepResult {
  expiredCount: number
  idempotencyKeysDeleted: number
  // Products whose waitlist this pass served or closed with no other work to do.
  linesServed: number
}

export async function sweepOnce(store: Store, observer: Observer, now: Date, batchMax: number): Promise<SweepResult> {
  let expiredCount = 0
  const productIds = await store.productsWithLapsedRows(now, batchMax)
  for (const productId of productIds) {
    const remaining = batchMax - expiredCount
    if (remaining <= 0) break
    expiredCount += await withLockedProduct(store, observer, { label: 'sweep', productId, now, reclaimMax: remaining }, (ctx) => expireLapsed(ctx, remaining))
  }
  assert(expiredCount <= batchMax, 'a sweep pass stays within its batch')
  // Lines no request touches: the pre-sale draw at the start, units freed while tickets did not
  // fit, a sale that ended. Locking the product is enough: withLockedProduct serves the line.
  const lineProductIds = await store.productsWithLineWork(now, batchMax)
  for (const productId of lineProductIds) await withLockedProduct(store, observer, { label: 'sweep.line', productId, now }, async () => undefined)
  const idempotencyKeysDeleted = await store.deleteExpiredIdempotencyKeys(now, batchMax)
  return { expiredCount, idempotencyKeysDeleted, linesServed: lineProductIds.length }
}

export interface SweeperHandle {
  stop(): Promise<void>
}

// Re-arms setTimeout after each pass, so passes never overlap; records lag (how late a pass
// started against its schedule) and stops on close.
export function startSweeper(options: {
  store: Store
  observer: Observer
  clock: Clock
  intervalMs: number
  batchMax: number
  onPass?: (result: SweepResult, lagMs: number) => void
  onError?: (error: unknown) => void
}): SweeperHandle {
  let stopped = false
  let timer: NodeJS.Timeout | undefined
  let current: Promise<void> = Promise.resolve()
  const schedule = (): void => {
    const dueAtMs = Date.now() + options.intervalMs
    timer = setTimeout(() => {
      current = (async () => {
        const lagMs = Math.max(0, Date.now() - dueAtMs)
        try {
          const result = await sweepOnce(options.store, options.observer, options.clock.now(), options.batchMax)
          options.onPass?.(result, lagMs)
        } catch (error) {
          options.onError?.(error)
        }
        if (!stopped) schedule()
      })()
    }, options.intervalMs)
    timer.unref()
  }
  schedule()
  return {
    async stop() {
      stopped = true
      if (timer) clearTimeout(timer)
      await current
    },
  }
}
