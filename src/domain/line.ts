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
  const phase = linePhase(ledger.drop, now)
  if (phase === 'before_start') return []
  if (phase === 'ended' || soldOutForGood(ledger)) {
    await closeLine(ctx, phase === 'ended' ? 'sale_ended' : 'sold_out')
    return []
  }
  const admitted: Ticket[] = []
  const overLimit: Ticket[] = []
  const limitJudge = new LimitJudge(ctx)
  let afterRank = -1
  while (ledger.waitingTickets > 0 && ledger.available() > 0 && admitted.length + overLimit.length < admissionsPerTransactionMax) {
    const free = ledger.available()
    // Each admission takes at least one unit, so more than `free` fitting tickets cannot be used.
    const limit = Math.min(free, lineReadMax, admissionsPerTransactionMax - admitted.length - overLimit.length)
    const candidates = await tx.waitingTicketsThatFit(ledger.productId, free, afterRank, limit)
    const withinLimit = await limitJudge.judge(candidates)
    for (const ticket of candidates) {
      if (ticket.qty > ledger.available()) continue
      ledger.leaveLine(ticket.qty)
      if (!withinLimit(ticket)) {
        overLimit.push(ticket)
        continue
      }
      ledger.reserve(ticket.qty)
      admitted.push(ticket)
    }
    if (candidates.length < limit) break
    afterRank = candidates[candidates.length - 1]!.lineRank
  }
  await closeOverLimit(ctx, overLimit)
  if (admitted.length === 0) return []
  await moveWaiting(ctx, admitted, 'admitted')
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

// Moves waiting tickets read under the product lock, a statement per admissionRowsMax of them;
// admitted ones become their holds.
async function moveWaiting(ctx: LineContext, tickets: readonly Ticket[], to: 'admitted' | 'closed'): Promise<void> {
  const { tx, now } = ctx
  for (let start = 0; start < tickets.length; start += admissionRowsMax) {
    const chunk = tickets.slice(start, start + admissionRowsMax)
    const moved = await tx.setTicketsStatus(
      chunk.map((ticket) => ticket.id),
      'waiting',
      to,
      now,
    )
    assert(moved === chunk.length, 'waiting tickets read under the product lock are still waiting')
    if (to === 'admitted') await tx.insertHolds(chunk.map((ticket) => holdOfTicket(ticket, now)))
  }
}

// Whether tickets may still become holds under the product's per_buyer_limit. A ticket was
// judged against the limit in force when it was taken, and every later grant counted it, so
// only tickets taken before the limit last changed (lowered, or set where there was none) are
// judged again, as a hold would be now: a buyer at all, and the buyer's units (holds, orders and
// waiting tickets, this one included) within the limit. Admitted past a lowered limit, a ticket
// granted units the shop no longer sells to one buyer (I8; found by a black-box probe). Such a
// ticket is closed, not passed over: waiting, it would keep its units from everyone else.
class LimitJudge {
  // Each buyer's units as read, less the tickets judged over the limit since (their closing is
  // written after the line is read, so a later read would still count them).
  private readonly unitsOf = new Map<string, number>()

  constructor(private readonly ctx: LineContext) {}

  async judge(candidates: readonly Ticket[]): Promise<(ticket: Ticket) => boolean> {
    const { perBuyerLimit, perBuyerLimitSetAt } = this.ctx.ledger.drop
    if (perBuyerLimit === null) return () => true
    const judgedBefore = (ticket: Ticket): boolean => perBuyerLimitSetAt === null || ticket.createdAt.getTime() <= perBuyerLimitSetAt.getTime()
    const unread = [...new Set(candidates.filter(judgedBefore).flatMap((ticket) => (ticket.buyerId === null || this.unitsOf.has(ticket.buyerId) ? [] : [ticket.buyerId])))]
    if (unread.length > 0) {
      const read = await this.ctx.tx.buyerUnits(this.ctx.ledger.productId, unread, this.ctx.now)
      for (const buyerId of unread) this.unitsOf.set(buyerId, read.get(buyerId) ?? 0)
    }
    return (ticket) => {
      if (!judgedBefore(ticket)) return true
      if (ticket.buyerId === null) return false
      const units = this.unitsOf.get(ticket.buyerId)!
      if (units <= perBuyerLimit) return true
      this.unitsOf.set(ticket.buyerId, units - ticket.qty)
      return false
    }
  }
}

// Tickets a change of per_buyer_limit closes in its transaction at most; any beyond are closed
// when the line reaches them (LimitJudge), as before this pass existed.
export const limitClosesPerChangeMax = admissionsPerTransactionMax

// When per_buyer_limit is set or changed: closes the waiting tickets no hold could be granted for
// under it (no buyer, or more units than the limit), in line order. Left waiting until the line
// reached them, those too big for the free units were passed over and kept their units from
// every direct hold meanwhile (the fourth probe). A ticket within the limit by its own qty is
// still judged when reached: its buyer's other units may have lapsed by then.
export async function closeTicketsOverLimit(ctx: LineContext, perBuyerLimit: number): Promise<void> {
  const { tx, ledger } = ctx
  if (ledger.waitingTickets === 0) return
  const closing: Ticket[] = []
  let afterRank = -1
  while (closing.length < limitClosesPerChangeMax) {
    const limit = Math.min(lineReadMax, limitClosesPerChangeMax - closing.length)
    const page = await tx.waitingTicketsOverLimit(ledger.productId, perBuyerLimit, afterRank, limit)
    closing.push(...page)
    if (page.length < limit) break
    afterRank = page[page.length - 1]!.lineRank
  }
  for (const ticket of closing) ledger.leaveLine(ticket.qty)
  await closeOverLimit(ctx, closing)
}

// Closes waiting tickets the per_buyer_limit refuses (the ledger already counts them out of the
// line), with one waitlist.closed event for them all.
async function closeOverLimit(ctx: LineContext, tickets: readonly Ticket[]): Promise<void> {
  if (tickets.length === 0) return
  await moveWaiting(ctx, tickets, 'closed')
  const qty = tickets.reduce((sum, ticket) => sum + ticket.qty, 0)
  ctx.events.push({ name: 'waitlist.closed', productId: ctx.ledger.productId, qty, tickets: tickets.length, reason: 'buyer_limit_reached' })
}

// Closes the line of a sale that has ended, if its tickets still wait (no transaction on the
// product since the end). Called before a change of the settings: a ticket already shown
// `closed` at the end must not wait again when the end is moved later.
export async function closeEndedLine(ctx: LineContext): Promise<void> {
  if (ctx.ledger.waitingTickets > 0 && linePhase(ctx.ledger.drop, ctx.now) === 'ended') await closeLine(ctx, 'sale_ended')
}

async function closeLine(ctx: LineContext, reason: 'sale_ended' | 'sold_out'): Promise<void> {
  const { tx, ledger, now, events } = ctx
  const closed = await tx.closeWaitingTickets(ledger.productId, now)
  assert(closed === ledger.waitingTickets, 'the product row counts every waiting ticket')
  events.push({ name: 'waitlist.closed', productId: ledger.productId, qty: ledger.waitingQty, tickets: closed, reason })
  ledger.closeLine()
}
