// Product reads and stock administration.
import { assert } from './assert.js'
import { ProductQueues, type QueueLimits } from './batcher.js'
import type { Clock } from './clock.js'
import { DomainError } from './errors.js'
import { isProductId } from './ids.js'
import type { EventLog, Observer } from './events.js'
import { closeEndedLine, closeTicketsOverLimit } from './line.js'
import { withLockedProduct } from './locked-product.js'
import { reclaimWhileShort, type SettleContext } from './settle.js'
import { noDropSettings, type DropSettings, type Product, type ProductSnapshot, type Store } from './store.js'

export type SaleStatus = 'upcoming' | 'open' | 'ended' | 'sold_out'

export interface ProductView extends Product {
  availableStock: number
  saleStatus: SaleStatus
}

// `now` is the instant the snapshot was read at. The window alone says upcoming or ended; an
// open sale is sold out when nothing is available and nothing held or pending could come back.
export function viewOf(snapshot: ProductSnapshot, now: Date): ProductView {
  const { lapsedQty, ...product } = snapshot
  const freeStock = product.stock - product.reserved - product.sold + lapsedQty
  // Units waiting tickets will take are not offered to anyone else (SPEC §8).
  const availableStock = Math.max(0, freeStock - product.line.waitingQty)
  const { saleStartsAt, saleEndsAt } = product.drop
  const nowMs = now.getTime()
  let saleStatus: SaleStatus = 'open'
  if (saleEndsAt !== null && nowMs >= saleEndsAt.getTime()) saleStatus = 'ended'
  else if (saleStartsAt !== null && nowMs < saleStartsAt.getTime()) saleStatus = 'upcoming'
  else if (freeStock <= 0 && product.reserved - lapsedQty <= 0) saleStatus = 'sold_out'
  return { ...product, availableStock, saleStatus }
}

// What an admin request changes of the drop settings; an absent field is kept, null clears it.
export interface DropChanges {
  perBuyerLimit?: number | null
  saleStartsAt?: Date | null
  saleEndsAt?: Date | null
}

// The settings after `changes`, or 422 naming the field the request set when the window would
// end at or before its start (sale_ends_at when the request sets both).
export function applyDropChanges(current: DropSettings, changes: DropChanges, now: Date): DropSettings {
  const next: DropSettings = { ...current }
  if (changes.perBuyerLimit !== undefined && changes.perBuyerLimit !== current.perBuyerLimit) {
    next.perBuyerLimit = changes.perBuyerLimit
    next.perBuyerLimitSetAt = changes.perBuyerLimit === null ? null : now
  }
  if (changes.saleStartsAt !== undefined) next.saleStartsAt = changes.saleStartsAt
  if (changes.saleEndsAt !== undefined) next.saleEndsAt = changes.saleEndsAt
  if (next.saleStartsAt !== null && next.saleEndsAt !== null && next.saleEndsAt.getTime() <= next.saleStartsAt.getTime()) {
    const field = changes.saleEndsAt !== undefined ? 'sale_ends_at' : 'sale_starts_at'
    throw new DomainError('validation_failed', { errors: [{ field, message: 'sale_ends_at must be after sale_starts_at' }], invalid_fields: [field] })
  }
  return next
}

interface ReadSlot {
  waiters: Array<{ resolve: (view: ProductView | undefined) => void; reject: (error: unknown) => void }>
  // When the first of `waiters` was queued (performance.now(), ms): the read's database bound
  // counts from it, so reads queued behind a read stuck on a stalled server are not given a whole
  // DB_TIMEOUT_MS more (the thirteenth session's second probe: up to twice the bound).
  oldestQueuedAtMs: number
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
    this.slots = new ProductQueues(limits, 'product reads', () => ({ waiters: [], oldestQueuedAtMs: 0, running: false }))
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
      if (target.waiters.length === 0) target.oldestQueuedAtMs = performance.now()
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
      const queuedSinceMs = slot.oldestQueuedAtMs
      slot.waiters = []
      try {
        const now = this.clock.now()
        const snapshot = await this.store.productSnapshot(productId, now, queuedSinceMs)
        const view = snapshot ? viewOf(snapshot, now) : undefined
        for (const waiter of waiters) waiter.resolve(view)
      } catch (error) {
        for (const waiter of waiters) waiter.reject(error)
      }
    }
    slot.running = false
    this.slots.delete(productId)
  }
}

// The most units a product may have on sale: what creating one allows, and what adding stock
// may reach (the stock column is a 32-bit integer on PostgreSQL and MySQL).
export const stockMax = 1_000_000_000

// MAX_QTY_PER_HOLD's ceiling, and the highest price whose total for that many units is still an
// exact integer in JavaScript (an order's amount is price × qty): 9,007,199,254 minor units.
export const qtyPerHoldMax = 1_000_000
export const priceMinorMax = Math.floor(Number.MAX_SAFE_INTEGER / qtyPerHoldMax)

export interface NewProductInput {
  name: string
  priceMinor: number
  currency: string
  stock: number
  drop?: DropChanges
}

export interface ProductChanges {
  addStock?: number
  drop?: DropChanges
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
    const { drop: changes, ...product } = input
    const drop = applyDropChanges(noDropSettings, changes ?? {}, now)
    const productId = await this.store.transaction({ label: 'products.create' }, (tx) => tx.insertProduct({ ...product, drop, createdAt: now }))
    return this.viewAfterCommit(productId, now)
  }

  // Stock and drop settings in one transaction: all of it applies, or (a refusal) none of it but
  // the expiry of lapsed rows a withdrawal needed (changeStock).
  // Lowering per_buyer_limit below what a buyer already has is allowed: their units stay, and
  // more is refused until they are below the new limit.
  async update(productId: number, changes: ProductChanges, log?: EventLog): Promise<ProductView> {
    if (!isProductId(productId)) throw new DomainError('product_not_found')
    const now = this.clock.now()
    const refusal = await withLockedProduct(this.store, this.observer, { label: 'products.update', productId, now, log }, async (ctx) => {
      const { tx, ledger } = ctx
      const current = ledger.drop
      // A new per_buyer_limit takes effect at an instant read under the product lock: every hold
      // and ticket granted before it read its instant before it took the lock, so before this one.
      // Read before the lock, a join or hold another process granted under the old limit while
      // this change waited could carry a later instant: the line then never judged that ticket
      // again (admitted over the new limit) and the audit took such a hold for an I8 breach (the
      // seventh probe, two processes on PostgreSQL, MariaDB and SQLite).
      const changedAt = new Date(Math.max(now.getTime(), this.clock.now().getTime()))
      const next = applyDropChanges(current, changes.drop ?? {}, changedAt)
      if (changes.addStock !== undefined) {
        const refused = await this.changeStock(ctx, changes.addStock)
        if (refused) return refused
      }
      if (JSON.stringify(next) !== JSON.stringify(current)) {
        await closeEndedLine(ctx)
        await tx.setDropSettings(productId, next, now)
        ledger.changeDrop(next)
        if (next.perBuyerLimit !== null && next.perBuyerLimit !== current.perBuyerLimit) await closeTicketsOverLimit(ctx, next.perBuyerLimit)
      }
      return undefined
    })
    if (refusal) throw refusal
    return this.viewAfterCommit(productId, now)
  }

  // Adds (or, negative, withdraws) units; never below what holds, orders and sales commit.
  async addStock(productId: number, addStock: number, log?: EventLog): Promise<ProductView> {
    if (!isProductId(productId)) throw new DomainError('product_not_found')
    const now = this.clock.now()
    const refusal = await withLockedProduct(this.store, this.observer, { label: 'products.add_stock', productId, now, log }, (ctx) => this.changeStock(ctx, addStock))
    if (refusal) throw refusal
    return this.viewAfterCommit(productId, now)
  }

  // The view a writer answers with, read after its commit; the product was just written, so a
  // missing one is a bug, not a 404.
  private async viewAfterCommit(productId: number, now: Date): Promise<ProductView> {
    const snapshot = await this.store.productSnapshot(productId, now)
    assert(snapshot !== undefined, 'a product just written can be read')
    return viewOf(snapshot, now)
  }

  // A withdrawal below what is committed is refused by the error returned, not thrown: the
  // transaction still commits what the reclaim expired (it changes nothing readers see), so
  // which rows are expired does not depend on whether the change was refused.
  private async changeStock(ctx: SettleContext, addStock: number): Promise<DomainError | undefined> {
    const { ledger } = ctx
    // Each step is within the schema's bounds, but several add up: past stockMax the servers'
    // integer column refused the update with a 500 (SQLite took it).
    if (ledger.stock + addStock > stockMax) {
      throw new DomainError('validation_failed', {
        errors: [{ field: 'add_stock', message: `stock would be ${ledger.stock + addStock}, above ${stockMax}` }],
        invalid_fields: ['add_stock'],
      })
    }
    // Holds and orders past their expiry commit nothing (readers already show their units free):
    // they are expired before a withdrawal is refused, as before a hold is.
    await reclaimWhileShort(ctx, () => ledger.stock + addStock < ledger.reserved + ledger.sold)
    const committed = ledger.reserved + ledger.sold
    if (ledger.stock + addStock < committed) {
      return new DomainError('stock_below_committed', { stock: ledger.stock, committed, available_stock: ledger.stock - committed })
    }
    ledger.addStock(addStock)
    return undefined
  }
}
