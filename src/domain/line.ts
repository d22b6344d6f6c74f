// Serving a product's waitlist (SPEC §8): free units go to waiting tickets in line order, in
// the transaction that freed them. withLockedProduct calls serveLine after every use case's
// work, so no path that frees units (release, expiry, cancel, restock, a reclaim inside a hold
// batch) can forget the line, and a ticket that fits is admitted the moment it is taken.
import { assert } from './assert.js'
import { addMs } from './clock.js'
import type { DomainEvent } from './events.js'
import type { ProductLedger } from './ledger.js'
import type { DropSettings, Hold, StoreTx, Ticket } from './store.js'

// Admissions one transaction makes at most; a restock freeing more units admits the rest on the
// sweeper's next pass (direct holds cannot take them meanwhile: they see available - waiting).
export const admissionsPerTransactionMax = 2_048
// Tickets one read of the line fetches at most.
const lineReadMax = 512
// Rows per admission statement: the hold insert is compiled once per row count (hot-sql.ts), so
// its sizes stay within those hold batches use.
const admissionRowsMax = 256

export interface LineContext {
  tx: StoreTx
  ledger: ProductLedger
  now: Date
  events: DomainEvent[]
}

export type LinePhase = 'before_start' | 'open' | 'ended'

export function linePhase(drop: DropSettings, now: Date): LinePhase {
  const nowMs = now.getTime()
  if (drop.saleEndsAt !== null && nowMs >= drop.saleEndsAt.getTime()) return 'ended'
  if (drop.saleStartsAt !== null && nowMs < drop.saleStartsAt.getTime()) return 'before_start'
  return 'open'
}

// The state each ledger's line was last served in: serving it again unchanged would only repeat
// a read that found nothing (a join batch serves its line before the skeleton does).
const servedState = new WeakMap<ProductLedger, string>()

function lineState(ledger: ProductLedger): string {
  return `${ledger.available()}/${ledger.reserved}/${ledger.waitingTickets}/${ledger.waitingQty}`
}

// Nothing free now and nothing held or pending that could come back: no waiting ticket will ever
// be served (unless stock is added, which opens a new line).
function soldOutForGood(ledger: ProductLedger): boolean {
  return ledger.available() <= 0 && ledger.reserved <= 0
}

// Tickets admitted in this transaction become these holds (inserted by serveLine).
export function holdOfTicket(ticket: Ticket, now: Date): Hold {
  return { id: ticket.holdId, productId: ticket.productId, qty: ticket.qty, status: 'active', expiresAt: addMs(now, ticket.holdTtlMs), createdAt: now, buyerId: ticket.buyerId }
}

// Admits every waiting ticket that fits in the free units, in line order, passing over only those
// too big for what is left; closes the line once the sale has ended or sold out for good. Costs
// nothing (no statement) when nobody waits. Returns the tickets admitted.
export async function serveLine(ctx: LineContext): Promise<Ticket[]> {
  const { ledger } = ctx
  if (ledger.waitingTickets === 0 || servedState.get(ledger) === lineState(ledger)) return []
  const admitted = await admitOrClose(ctx)
  servedState.set(ledger, lineState(ledger))
  return admitted
}

async function admitOrClose(ctx: LineContext): Promise<Ticket[]> {
  const { tx, ledger, now, events } = ctx
  const phase = linePhase(ledger.product.drop, now)
  if (phase === 'before_start') return []
  if (phase === 'ended' || soldOutForGood(ledger)) {
    await closeLine(ctx, phase === 'ended' ? 'sale_ended' : 'sold_out')
    return []
  }
  const admitted: Ticket[] = []
  let afterRank = -1
  while (ledger.waitingTickets > 0 && ledger.available() > 0 && admitted.length < admissionsPerTransactionMax) {
    const free = ledger.available()
    // Each admission takes at least one unit, so more than `free` fitting tickets cannot be used.
    const limit = Math.min(free, lineReadMax, admissionsPerTransactionMax - admitted.length)
    const candidates = await tx.waitingTicketsThatFit(ledger.productId, free, afterRank, limit)
    for (const ticket of candidates) {
      if (ticket.qty > ledger.available()) continue
      ledger.leaveLine(ticket.qty)
      ledger.reserve(ticket.qty)
      admitted.push(ticket)
    }
    if (candidates.length < limit) break
    afterRank = candidates[candidates.length - 1]!.lineRank
  }
  if (admitted.length === 0) return []
  for (let start = 0; start < admitted.length; start += admissionRowsMax) {
    const chunk = admitted.slice(start, start + admissionRowsMax)
    const moved = await tx.setTicketsStatus(
      chunk.map((ticket) => ticket.id),
      'waiting',
      'admitted',
      now,
    )
    assert(moved === chunk.length, 'waiting tickets read under the product lock are still waiting')
    await tx.insertHolds(chunk.map((ticket) => holdOfTicket(ticket, now)))
  }
  for (const ticket of admitted) {
    events.push({
      name: 'waitlist.admitted',
      ticketId: ticket.id,
      holdId: ticket.holdId,
      productId: ticket.productId,
      qty: ticket.qty,
      waitedMs: now.getTime() - ticket.createdAt.getTime(),
    })
    events.push({ name: 'hold.created', holdId: ticket.holdId, productId: ticket.productId, qty: ticket.qty, source: 'waitlist' })
  }
  return admitted
}

async function closeLine(ctx: LineContext, reason: 'sale_ended' | 'sold_out'): Promise<void> {
  const { tx, ledger, now, events } = ctx
  const closed = await tx.closeWaitingTickets(ledger.productId, now)
  assert(closed === ledger.waitingTickets, 'the product row counts every waiting ticket')
  events.push({ name: 'waitlist.closed', productId: ledger.productId, qty: ledger.waitingQty, tickets: closed, reason })
  ledger.closeLine()
}
