// Group commit per product: requests for one product that arrive while a transaction for it is
// in flight wait and are served together by the next one. Every writer locks the product row
// first anyway, so they would queue on that lock one transaction each; here they share one lock
// wait, one round trip per statement and one commit. Each request still gets its own answer.
import { assert } from './assert.js'

interface ProductQueue<W> {
  waiters: W[]
  running: boolean
}

export class ProductBatches<W> {
  private readonly queues = new Map<number, ProductQueue<W>>()
  private readonly idle = new Set<() => void>()

  constructor(
    private readonly batchMax: number,
    // Must settle every waiter of the batch exactly once, and not throw.
    private readonly serve: (productId: number, batch: W[]) => Promise<void>,
  ) {
    assert(batchMax >= 1, 'batchMax >= 1')
  }

  add(productId: number, waiter: W): void {
    let queue = this.queues.get(productId)
    if (!queue) {
      queue = { waiters: [], running: false }
      this.queues.set(productId, queue)
    }
    queue.waiters.push(waiter)
    if (queue.running) return
    queue.running = true
    // Start on the next turn of the event loop, so every request that arrived in this I/O
    // phase joins the first batch. With a synchronous driver (SQLite) a transaction would
    // otherwise finish before the next request is even parsed, and each pay its own commit.
    const target = queue
    setImmediate(() => void this.pump(productId, target))
  }

  // Resolves when every queued request has been served (graceful shutdown).
  async drain(): Promise<void> {
    while (this.queues.size > 0) await new Promise<void>((resolve) => this.idle.add(resolve))
  }

  private async pump(productId: number, queue: ProductQueue<W>): Promise<void> {
    try {
      while (queue.waiters.length > 0) {
        const batch = queue.waiters.splice(0, this.batchMax)
        await this.serve(productId, batch)
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
