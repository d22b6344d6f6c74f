// Product reads and stock administration.
import { assert } from './assert.js'
import { ProductQueues, type QueueLimits } from './batcher.js'
import type { Clock } from './clock.js'
import { DomainError } from './errors.js'
import { isProductId } from './ids.js'
import type { Observer } from './events.js'
import { withLockedProduct } from './locked-product.js'
import type { Product, ProductSnapshot, Store } from './store.js'

export interface ProductView extends Product {
  availableStock: number
}

export function viewOf(snapshot: ProductSnapshot): ProductView {
  const { lapsedQty, ...product } = snapshot
  return { ...product, availableStock: product.stock - product.reserved - product.sold + lapsedQty }
}

interface ReadSlot {
  waiters: Array<{ resolve: (view: ProductView | undefined) => void; reject: (error: unknown) => void }>
  running: boolean
}

// Reads of one product share one query, yet every read is answered by a query that started
// after the read arrived: a read never joins a query already sent, so it reflects every hold,
// order or payment answered before it began (SPEC §3), while a burst of N concurrent reads
// costs about one round trip per query time instead of N. Waiting reads are bounded like every
// queue (QueueLimits): past them a read is refused `busy`.
export class ProductReader {
  private readonly slots: ProductQueues<ReadSlot>

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    limits: QueueLimits,
  ) {
    this.slots = new ProductQueues(limits, 'product reads', () => ({ waiters: [], running: false }))
  }

  read(productId: number): Promise<ProductView | undefined> {
    if (!isProductId(productId)) return Promise.resolve(undefined)
    let target: ReadSlot
    try {
      target = this.slots.admit(productId)
    } catch (error) {
      return Promise.reject(error)
    }
    return new Promise((resolve, reject) => {
      target.waiters.push({ resolve, reject })
      if (!target.running) {
        target.running = true
        // Sent on the next turn of the event loop, so reads that arrived together share it
        // (with a synchronous driver the query would otherwise finish before the next arrives).
        setImmediate(() => void this.pump(productId, target))
      }
    })
  }

  private async pump(productId: number, slot: ReadSlot): Promise<void> {
    while (slot.waiters.length > 0) {
      const waiters = slot.waiters
      slot.waiters = []
      try {
        const snapshot = await this.store.productSnapshot(productId, this.clock.now())
        const view = snapshot ? viewOf(snapshot) : undefined
        for (const waiter of waiters) waiter.resolve(view)
      } catch (error) {
        for (const waiter of waiters) waiter.reject(error)
      }
    }
    slot.running = false
    this.slots.delete(productId)
  }
}

export interface NewProductInput {
  name: string
  priceMinor: number
  currency: string
  stock: number
}

export class Catalog {
  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    // Stock changes emit no named event yet; the skeleton still wants somewhere to send them.
    private readonly observer: Observer = { emit: () => undefined },
  ) {}

  async create(input: NewProductInput): Promise<ProductView> {
    assert(input.stock >= 0, 'stock >= 0')
    const now = this.clock.now()
    const productId = await this.store.transaction({ label: 'products.create' }, (tx) => tx.insertProduct({ ...input, createdAt: now }))
    const snapshot = await this.store.productSnapshot(productId, now)
    assert(snapshot !== undefined, 'a created product can be read')
    return viewOf(snapshot)
  }

  // Adds (or, negative, withdraws) units; never below what holds, orders and sales commit.
  async addStock(productId: number, addStock: number): Promise<ProductView> {
    if (!isProductId(productId)) throw new DomainError('product_not_found')
    const now = this.clock.now()
    await withLockedProduct(this.store, this.observer, { label: 'products.add_stock', productId, now }, async ({ ledger }) => {
      const committed = ledger.reserved + ledger.sold
      if (ledger.stock + addStock < committed) {
        throw new DomainError('stock_below_committed', { stock: ledger.stock, committed, available_stock: ledger.stock - committed })
      }
      ledger.addStock(addStock)
    })
    const snapshot = await this.store.productSnapshot(productId, now)
    assert(snapshot !== undefined, 'an updated product can be read')
    return viewOf(snapshot)
  }
}
