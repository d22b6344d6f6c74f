// Group commit per product: requests for one product that arrive while a transaction for it is
// in flight wait and are served together by the next one. Every writer locks the product row
// first anyway, so they would queue on that lock one transaction each; here they share one lock
// wait, one round trip per statement and one commit. Each request still gets its own answer.
import { assert } from './assert.js'
import { DomainError } from './errors.js'

// The limits of every per-product queue a request can grow (the batchers here, the coalesced
// product reads): past them a request is refused `busy` at once instead of holding memory that
// a flood could grow without end. Set by QUEUE_DEPTH_MAX and QUEUED_PRODUCTS_MAX (config.ts).
export interface QueueLimits {
  // Requests one product's queue may hold waiting for their turn (a batch being served is not counted).
  queueDepthMax: number
  // Products with a queue at once: product ids come from requests, and each queue is a map entry.
  queuedProductsMax: number
}

// What a refused request is told to wait: a queue drains in a few transactions' time.
export const busyRetryAfterS = 1

export function busyError(limit: string): DomainError {
  return new DomainError('busy', { retry_after_s: busyRetryAfterS }, `${limit} reached`)
}

export function assertQueueLimits(limits: QueueLimits): void {
  assert(limits.queueDepthMax >= 1 && limits.queuedProductsMax >= 1, 'queue limits >= 1')
}

// One queue per product, created on demand and dropped when it empties; `add` refuses past the limits.
export class ProductQueues<Q extends { waiters: unknown[] }> {
  private readonly queues = new Map<number, Q>()

  constructor(
    private readonly limits: QueueLimits,
    private readonly what: string,
    private readonly create: () => Q,
  ) {
    assertQueueLimits(limits)
  }

  get size(): number {
    return this.queues.size
  }

  // The product's queue with room for one more waiter, or a `busy` refusal.
  admit(productId: number): Q {
    let queue = this.queues.get(productId)
    if (!queue) {
      if (this.queues.size >= this.limits.queuedProductsMax) throw busyError(`${this.what}: QUEUED_PRODUCTS_MAX`)
      queue = this.create()
      this.queues.set(productId, queue)
    }
    if (queue.waiters.length >= this.limits.queueDepthMax) throw busyError(`${this.what}: QUEUE_DEPTH_MAX`)
    return queue
  }

  delete(productId: number): void {
    this.queues.delete(productId)
  }
}

interface ProductQueue<W> {
  waiters: W[]
  // When each waiter was queued (performance.now(), ms), in the same order.
  queuedAtMs: number[]
  running: boolean
}

export class ProductBatches<W> {
  private readonly queues: ProductQueues<ProductQueue<W>>
  private readonly idle = new Set<() => void>()

  constructor(
    private readonly batchMax: number,
    limits: QueueLimits,
    // Names the queue in the refusal's log line.
    what: string,
    // Must settle every waiter of the batch exactly once, and not throw. `queuedSinceMs` is when
    // the batch's oldest waiter was queued (performance.now()): the database bound counts from
    // it, so waiting behind a batch stuck on a stalled server is part of a request's bound.
    private readonly serve: (productId: number, batch: W[], queuedSinceMs: number) => Promise<void>,
  ) {
    assert(batchMax >= 1, 'batchMax >= 1')
    this.queues = new ProductQueues(limits, what, () => ({ waiters: [], queuedAtMs: [], running: false }))
  }

  // Throws DomainError 'busy' (and queues nothing) when the product's queue or the number of
  // queues is at its limit.
  add(productId: number, waiter: W): void {
    const queue = this.queues.admit(productId)
    queue.waiters.push(waiter)
    queue.queuedAtMs.push(performance.now())
    if (queue.running) return
    queue.running = true
    // Start on the next turn of the event loop, so every request that arrived in this I/O
    // phase joins the first batch. With a synchronous driver (SQLite) a transaction would
    // otherwise finish before the next request is even parsed, and each pay its own commit.
    setImmediate(() => void this.pump(productId, queue))
  }

  // Resolves when every queued request has been served (graceful shutdown).
  async drain(): Promise<void> {
    while (this.queues.size > 0) await new Promise<void>((resolve) => this.idle.add(resolve))
  }

  private async pump(productId: number, queue: ProductQueue<W>): Promise<void> {
    try {
      while (queue.waiters.length > 0) {
        const batch = queue.waiters.splice(0, this.batchMax)
        const queuedSinceMs = queue.queuedAtMs.splice(0, batch.length)[0]!
        await this.serve(productId, batch, queuedSinceMs)
      }
    } finally {
      queue.running = false
      this.queues.delete(productId)
      if (this.queues.size === 0) {
        for (const resolve of this.idle) resolve()
        this.idle.clear()
      }
    }
  }
}
