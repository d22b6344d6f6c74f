// The waitlist (SPEC §8): a buyer who cannot get units now takes a place in line instead of
// retrying. Joins are group-committed per product like holds (keyed-batches.ts); the line itself
// is served by line.ts in every transaction that frees units.
import { randomInt } from 'node:crypto'
import { assert } from './assert.js'
import type { Clock } from './clock.js'
import { DomainError } from './errors.js'
import type { EventLog, Observer } from './events.js'
import { fingerprintOf } from './idempotency.js'
import { isProductId, isResourceId, newHoldIds, newTicketIds } from './ids.js'
import { KeyedBatches, type KeyedBatchLimits, type KeyedUseCase, type Verdict } from './keyed-batches.js'
import type { ProductLedger } from './ledger.js'
import { holdOfTicket, linePhase, serveLine, type LinePhase } from './line.js'
import { withLockedProduct } from './locked-product.js'
import type { ProductReader } from './products.js'
import type { SettleContext } from './settle.js'
import type { DropSettings, Hold, Store, Ticket, TicketStatus } from './store.js'

export interface WaitlistSettings extends KeyedBatchLimits {
  holdTtlMs: number
  idempotencyTtlMs: number
  // Joins served in one transaction (the same bound as holds: a join is one row like a hold).
  holdBatchMax: number
}

export interface JoinRequest {
  productId: number
  qty: number
  idempotencyKey: string | null
  buyerId?: string | null
}

// A ticket as a buyer sees it now: its place while waiting, its hold once admitted.
export interface TicketView {
  ticket: Ticket
  status: TicketStatus
  // 1 = next; null unless waiting.
  position: number | null
  // Admitted: the hold it became (its expiry may have passed; the hold says so).
  hold: Hold | null
  // Before the sale starts, every pre-sale ticket waits for the draw: position is join order.
  phase: LinePhase
}

export interface JoinAnswer {
  view: TicketView
  replayed: boolean
}

// Pre-sale ranks are drawn from [0, 2^48 - 1) (crypto.randomInt's widest range); every later
// ticket ranks after all of them, in join order. 2^48 + a join count stays below 2^53 (exact in
// a double and in a bigint column).
const presaleRankCeiling = 2 ** 48

interface JoinJudging {
  now: Date
  drop: DropSettings
  buyerUnits: ReadonlyMap<string, number>
}

// Judges joins in arrival order (pure but for the random pre-sale rank). Refusals, in order:
// the sale has ended, a limited product needs a buyer token, the buyer's units plus waiting
// tickets would pass the limit. No stock check: waiting is what a ticket is for.
export function judgeJoins(ledger: ProductLedger, requests: readonly JoinRequest[], candidates: readonly Ticket[], judging: JoinJudging): Array<Verdict<Ticket>> {
  const phase = linePhase(judging.drop, judging.now)
  const perBuyerLimit = judging.drop.perBuyerLimit
  const unitsOf = new Map(judging.buyerUnits)
  return requests.map((request, index) => {
    const buyerId = request.buyerId ?? null
    const refuse = (error: DomainError): Verdict<Ticket> => ({
      ok: false,
      error,
      events: [{ name: 'waitlist.rejected', productId: request.productId, qty: request.qty, reason: error.code }],
    })
    if (phase === 'ended') return refuse(new DomainError('sale_ended', { sale_ends_at: judging.drop.saleEndsAt?.toISOString() ?? null }))
    let buyerUnits = 0
    if (perBuyerLimit !== null) {
      if (buyerId === null) return refuse(new DomainError('buyer_token_required'))
      buyerUnits = unitsOf.get(buyerId) ?? 0
      if (buyerUnits + request.qty > perBuyerLimit) return refuse(new DomainError('buyer_limit_reached', { per_buyer_limit: perBuyerLimit, buyer_units: buyerUnits }))
      unitsOf.set(buyerId, buyerUnits + request.qty)
    }
    const candidate = candidates[index]
    assert(candidate !== undefined, 'one candidate ticket per request')
    const joinSeq = ledger.joinLine(request.qty)
    const presale = phase === 'before_start'
    // A cryptographic source: the draw must not be predictable from earlier tickets.
    const lineRank = presale ? randomInt(0, presaleRankCeiling - 1) : presaleRankCeiling + joinSeq
    const ticket: Ticket = { ...candidate, joinSeq, lineRank, presale }
    return { ok: true, answer: ticket, events: [{ name: 'waitlist.joined', ticketId: ticket.id, productId: ticket.productId, qty: ticket.qty, presale }] }
  })
}

export class Waitlist {
  private readonly batches: KeyedBatches<JoinRequest, TicketView>

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly observer: Observer,
    private readonly settings: WaitlistSettings,
    // Ticket reads need the product's sale window; polls of one product's tickets then share
    // one product query (coalesced reads) however many tickets poll at once.
    private readonly reader: ProductReader,
  ) {
    const useCase: KeyedUseCase<JoinRequest, TicketView> = {
      scope: 'waitlist',
      label: 'waitlist.join',
      batchMax: settings.holdBatchMax,
      idempotencyTtlMs: settings.idempotencyTtlMs,
      batchEvent: 'waitlist.batch',
      refusedBeforeBatch: ['product_not_found'],
      fingerprint: (request) => fingerprintOf(['waitlist', request.productId, request.qty, request.buyerId ?? null]),
      serve: (ctx, requests) => this.serve(ctx, requests),
      encode: (view) => JSON.stringify(view),
      decode: reviveView,
    }
    this.batches = new KeyedBatches(store, clock, observer, useCase, settings)
  }

  async join(request: JoinRequest, log?: EventLog): Promise<JoinAnswer> {
    if (!isProductId(request.productId)) throw new DomainError('product_not_found')
    const { answer, replayed } = await this.batches.submit(request.productId, request, log).catch((error: unknown) => {
      if (error instanceof DomainError) return this.batches.refuse(request, error)
      throw error
    })
    return { view: answer, replayed }
  }

  async get(ticketId: string): Promise<TicketView> {
    const ticket = isResourceId(ticketId) ? await this.store.getTicket(ticketId) : undefined
    if (!ticket) throw new DomainError('ticket_not_found')
    return this.viewOf(ticket)
  }

  // Leaves the line. Leaving again, or a closed ticket, changes nothing (200); an admitted
  // ticket is a hold now (release that instead).
  async leave(ticketId: string, log?: EventLog): Promise<TicketView> {
    const known = isResourceId(ticketId) ? await this.store.getTicket(ticketId) : undefined
    if (!known) throw new DomainError('ticket_not_found')
    const now = this.clock.now()
    const ticket = await withLockedProduct(this.store, this.observer, { label: 'waitlist.leave', productId: known.productId, now, log }, async ({ tx, ledger, events }) => {
      const stored = await tx.getTicket(ticketId)
      assert(stored !== undefined, 'tickets are never deleted')
      if (stored.status === 'admitted') throw new DomainError('ticket_admitted', { hold_id: stored.holdId })
      if (stored.status !== 'waiting') return stored
      // Shown closed from the end on (viewOf); this transaction's serveLine writes it so.
      if (linePhase(ledger.drop, now) === 'ended') return { ...stored, status: 'closed' as const, endedAt: now }
      const moved = await tx.setTicketsStatus([ticketId], 'waiting', 'left', now)
      assert(moved === 1, 'a waiting ticket read under the product lock can leave')
      ledger.leaveLine(stored.qty)
      events.push({ name: 'waitlist.left', ticketId, productId: stored.productId, qty: stored.qty })
      return { ...stored, status: 'left' as const, endedAt: now }
    })
    return this.viewOf(ticket)
  }

  // Resolves when every queued join has been answered (graceful shutdown).
  async drain(): Promise<void> {
    await this.batches.drain()
  }

  private async viewOf(ticket: Ticket): Promise<TicketView> {
    const now = this.clock.now()
    const product = await this.reader.read(ticket.productId)
    assert(product !== undefined, 'a ticket names a product')
    const phase = linePhase(product.drop, now)
    // A waiting ticket of an ended sale is closed from the end on, before the sweeper says so.
    const status: TicketStatus = ticket.status === 'waiting' && phase === 'ended' ? 'closed' : ticket.status
    const position = status === 'waiting' ? 1 + (await this.store.ticketsAhead(ticket, phase === 'before_start')) : null
    const hold = status === 'admitted' ? ((await this.store.getHold(ticket.holdId)) ?? null) : null
    return { ticket, status, position, hold, phase }
  }

  private async serve(ctx: SettleContext, requests: readonly JoinRequest[]): Promise<Array<Verdict<TicketView>>> {
    const { tx, ledger, now } = ctx
    const { drop } = ledger
    const ticketIds = newTicketIds(requests.length, now)
    const holdIds = newHoldIds(requests.length, now)
    const candidates: Ticket[] = requests.map((request, index) => ({
      id: ticketIds[index]!,
      productId: ledger.productId,
      qty: request.qty,
      status: 'waiting',
      lineRank: 0,
      joinSeq: 0,
      presale: false,
      holdId: holdIds[index]!,
      holdTtlMs: this.settings.holdTtlMs,
      buyerId: request.buyerId ?? null,
      createdAt: now,
      endedAt: null,
    }))
    const buyerIds = drop.perBuyerLimit === null ? [] : [...new Set(requests.flatMap((request) => (request.buyerId ? [request.buyerId] : [])))]
    const buyerUnits = buyerIds.length > 0 ? await tx.buyerUnits(ledger.productId, buyerIds, now) : new Map<string, number>()
    const verdicts = judgeJoins(ledger, requests, candidates, { now, drop, buyerUnits })
    const joined = verdicts.flatMap((verdict) => (verdict.ok ? [verdict.answer] : []))
    if (joined.length > 0) await tx.insertTickets(joined)
    // Served here rather than only by the skeleton so each answer says whether it was admitted.
    const admitted = new Set(joined.length > 0 ? (await serveLine(ctx)).map((ticket) => ticket.id) : [])
    const closed = ledger.waitingTickets === 0 && joined.some((ticket) => !admitted.has(ticket.id))
    const stillWaiting = joined.filter((ticket) => !admitted.has(ticket.id))
    const phase = linePhase(drop, now)
    // New tickets are last in line (and in join order), so the ones still waiting are the last
    // of the waiting tickets, in the order they came.
    const positionOf = new Map(stillWaiting.map((ticket, index) => [ticket.id, ledger.waitingTickets - stillWaiting.length + index + 1]))
    return verdicts.map((verdict): Verdict<TicketView> => {
      if (!verdict.ok) return verdict
      const ticket = verdict.answer
      const isAdmitted = admitted.has(ticket.id)
      const status: TicketStatus = isAdmitted ? 'admitted' : closed ? 'closed' : 'waiting'
      const hold = isAdmitted ? holdOfTicket(ticket, now) : null
      const view: TicketView = {
        ticket: { ...ticket, status, endedAt: status === 'waiting' ? null : now },
        status,
        position: status === 'waiting' ? positionOf.get(ticket.id)! : null,
        hold,
        phase,
      }
      return { ok: true, answer: view, events: verdict.events }
    })
  }
}

function reviveView(json: string): TicketView {
  const raw = JSON.parse(json) as TicketView & { ticket: Ticket & { createdAt: string; endedAt: string | null }; hold: (Hold & { expiresAt: string; createdAt: string }) | null }
  const ticket: Ticket = { ...raw.ticket, createdAt: new Date(raw.ticket.createdAt), endedAt: raw.ticket.endedAt === null ? null : new Date(raw.ticket.endedAt) }
  const hold: Hold | null = raw.hold === null ? null : { ...raw.hold, expiresAt: new Date(raw.hold.expiresAt), createdAt: new Date(raw.hold.createdAt) }
  return { ...raw, ticket, hold }
}
