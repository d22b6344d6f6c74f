// Brings lapsed holds and orders up to date in bounded batches. Safe with many instances at
// once: each product is swept under its row lock and every status change is compare-and-set,
// so a hold is released, and counted in metrics, exactly once.
import { setImmediate } from 'node:timers/promises'
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

// One pass: at most batchMax rows, shared among the products with lapsed rows so that a product
// with a huge backlog does not starve the others. In rounds: each product still owing rows gets
// an equal share of what the pass has left (one transaction each, so every transaction is bounded
// by batchMax rows); a product that used less than its share is done, the rest come round again.
//
// Every transaction reads the clock when it starts, not once for the pass: a pass over hundreds
// of products takes seconds, and a line served at the pass's start instant stamped its admissions
// seconds in the past (a hold lapsing before its buyer could see it) and could admit a ticket
// after the sale's end (a black-box probe, on PostgreSQL with 450 products to visit).
export async function sweepOnce(store: Store, observer: Observer, clock: Clock, batchMax: number): Promise<SweepResult> {
  let expiredCount = 0
  let owing = await store.productsWithLapsedRows(clock.now(), batchMax)
  while (owing.length > 0 && expiredCount < batchMax) {
    const again: number[] = []
    for (const [index, productId] of owing.entries()) {
      const shareMax = Math.ceil((batchMax - expiredCount) / (owing.length - index))
      if (shareMax <= 0) break
      const expired = await withLockedProduct(store, observer, { label: 'sweep', productId, now: clock.now(), reclaimMax: shareMax }, (ctx) => expireLapsed(ctx, shareMax))
      expiredCount += expired
      if (expired >= shareMax) again.push(productId)
      // better-sqlite3 answers synchronously: without a turn of the event loop between
      // transactions a long pass would hold every request back until it ends.
      await setImmediate()
    }
    owing = again
  }
  assert(expiredCount <= batchMax, 'a sweep pass stays within its batch')
  // Lines no request touches: the pre-sale draw at the start, units freed while tickets did not
  // fit, a sale that ended. Locking the product is enough: withLockedProduct serves the line.
  const lineProductIds = await store.productsWithLineWork(clock.now(), batchMax)
  for (const productId of lineProductIds) {
    await withLockedProduct(store, observer, { label: 'sweep.line', productId, now: clock.now() }, async () => undefined)
    await setImmediate()
  }
  const idempotencyKeysDeleted = await store.deleteExpiredIdempotencyKeys(clock.now(), batchMax)
  return { expiredCount, idempotencyKeysDeleted, linesServed: lineProductIds.length }
}

// Passes until one finds less than a full batch: the sweeper keeps up with any rate of lapsing
// holds (SPEC §4), in transactions no bigger than one pass, and stops between passes on close.
export async function sweepUntilCaughtUp(
  options: { store: Store; observer: Observer; clock: Clock; batchMax: number; stopped?: () => boolean },
  onPass?: (result: SweepResult) => void,
): Promise<number> {
  let passCount = 0
  for (;;) {
    const result = await sweepOnce(options.store, options.observer, options.clock, options.batchMax)
    passCount += 1
    onPass?.(result)
    const full = result.expiredCount >= options.batchMax || result.idempotencyKeysDeleted >= options.batchMax
    if (!full || options.stopped?.()) return passCount
  }
}

export interface SweeperHandle {
  stop(): Promise<void>
}

// Re-arms setTimeout after each run of passes, so passes never overlap; stops on close.
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
          await sweepUntilCaughtUp({ ...options, stopped: () => stopped }, (result) => options.onPass?.(result, lagMs))
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
