import { assert } from './assert.js'
import type { DropSettings, Product, StoreTx } from './store.js'

// The locked product row's counts during one transaction. Every change is checked against
// I1 as it is made, and written once at the end with one UPDATE (flush), so a batch of many
// holds costs one row write. The table's CHECK constraint is the second guard.
export class ProductLedger {
  private reservedDelta = 0
  private soldDelta = 0
  private stockDelta = 0
  private waitingQtyDelta = 0
  private waitingTicketsDelta = 0
  private joinedDelta = 0

  // Drop settings changed in this transaction (an admin's change): the line it serves is judged
  // by them, not by the row as it was locked.
  private changedDrop: DropSettings | undefined

  constructor(readonly product: Product) {}

  get drop(): DropSettings {
    return this.changedDrop ?? this.product.drop
  }

  // The caller writes them (setDropSettings); the ledger only answers them from now on.
  changeDrop(drop: DropSettings): void {
    this.changedDrop = drop
  }

  get productId(): number {
    return this.product.id
  }
  get stock(): number {
    return this.product.stock + this.stockDelta
  }
  get reserved(): number {
    return this.product.reserved + this.reservedDelta
  }
  get sold(): number {
    return this.product.sold + this.soldDelta
  }
  available(): number {
    return this.stock - this.reserved - this.sold
  }
  get waitingQty(): number {
    return this.product.line.waitingQty + this.waitingQtyDelta
  }
  get waitingTickets(): number {
    return this.product.line.waitingTickets + this.waitingTicketsDelta
  }

  // What a direct hold may take (SPEC §8): the free units after every waiting ticket's qty.
  availableToHolds(): number {
    return Math.max(0, this.available() - this.waitingQty)
  }

  // A ticket takes its place in line; returns its join order in the product (0, 1, ...).
  joinLine(qty: number): number {
    assert(qty > 0, 'a ticket wants a positive qty')
    const joinSeq = this.product.line.joined + this.joinedDelta
    this.joinedDelta += 1
    this.waitingQtyDelta += qty
    this.waitingTicketsDelta += 1
    return joinSeq
  }

  // A waiting ticket stops waiting (admitted, left or closed).
  leaveLine(qty: number): void {
    this.waitingQtyDelta -= qty
    this.waitingTicketsDelta -= 1
    assert(this.waitingQty >= 0 && this.waitingTickets >= 0, 'the line never counts below zero')
  }

  // Every waiting ticket closed at once.
  closeLine(): void {
    this.waitingQtyDelta = -this.product.line.waitingQty
    this.waitingTicketsDelta = -this.product.line.waitingTickets
  }

  reserve(qty: number): void {
    assert(qty > 0, 'reserved qty is positive')
    assert(qty <= this.available(), 'I1: reserve only available units')
    this.reservedDelta += qty
  }

  release(qty: number): void {
    assert(qty > 0, 'released qty is positive')
    this.reservedDelta -= qty
    assert(this.reserved >= 0, 'I1: reserved >= 0')
  }

  // A pending order is paid: its units move from reserved to sold.
  sellReserved(qty: number): void {
    this.release(qty)
    this.soldDelta += qty
  }

  // A late payment recovers a sale from units that are available again.
  sellAvailable(qty: number): void {
    assert(qty > 0, 'sold qty is positive')
    assert(qty <= this.available(), 'I1: sell only available units')
    this.soldDelta += qty
  }

  addStock(delta: number): void {
    this.stockDelta += delta
    assert(this.available() >= 0, 'I1: stock covers reserved + sold')
  }

  async flush(tx: StoreTx): Promise<void> {
    const delta = {
      reserved: this.reservedDelta,
      sold: this.soldDelta,
      stock: this.stockDelta,
      waitingQty: this.waitingQtyDelta,
      waitingTickets: this.waitingTicketsDelta,
      joined: this.joinedDelta,
    }
    if (Object.values(delta).every((value) => value === 0)) return
    assert(this.reserved >= 0, 'I1: reserved >= 0')
    assert(this.sold >= 0, 'I1: sold >= 0')
    assert(this.reserved + this.sold <= this.stock, 'I1: reserved + sold <= stock')
    await tx.applyProductDelta(this.product.id, delta)
    this.product.stock = this.stock
    this.product.reserved = this.reserved
    this.product.sold = this.sold
    this.product.line = { waitingQty: this.waitingQty, waitingTickets: this.waitingTickets, joined: this.product.line.joined + this.joinedDelta }
    this.reservedDelta = 0
    this.soldDelta = 0
    this.stockDelta = 0
    this.waitingQtyDelta = 0
    this.waitingTicketsDelta = 0
    this.joinedDelta = 0
  }
}
