// The reference model of the simulation: the rules of SPEC §2-§4 over plain maps, sequential and
// in memory. It predicts each answer (status, code, body fields) and tracks the rows as stored
// (a lapsed hold stays `active` in its row until something expires it), because I2 and the
// product's `reserved` are about stored rows. Every function here runs "under the product lock":
// the driver never asks the model about two requests at once.
import { formatAmount } from '../../src/domain/money.js'

export interface ModelSettings {
  holdTtlMs: number
  orderTtlMs: number
  idempotencyTtlMs: number
  maxQtyPerHold: number
}

export type HoldStatus = 'active' | 'released' | 'expired' | 'converted'
export type OrderStatus = 'pending' | 'paid' | 'cancelled' | 'expired'
export type PaymentOutcome = 'paid' | 'cancelled' | 'duplicate' | 'ignored' | 'recovered' | 'refund_required'

export interface MProduct {
  id: number
  stock: number
  priceMinor: number
  currency: string
  reserved: number
  sold: number
  // SPEC §8: units one buyer may have of this product at once; null: no limit.
  perBuyerLimit: number | null
  // SPEC §8 sale window, each end optional.
  saleStartsAtMs: number | null
  saleEndsAtMs: number | null
  // When per_buyer_limit last changed (the service's per_buyer_limit_set_at): tickets taken up
  // to then are judged again when the line reaches them.
  limitSetAtMs: number | null
  // The line's counts as the product row keeps them.
  waitingQty: number
  waitingTickets: number
}

export type TicketStatus = 'waiting' | 'admitted' | 'closed' | 'left'

// A waitlist ticket. The driver joins only products without a sale window, so the line is first
// come, first served (a pre-sale draw is random) and every change to it happens in a
// transaction the model mirrors (no window edge passes unserved).
export interface MTicket {
  id: string
  productId: number
  qty: number
  buyer: string | null
  status: TicketStatus
  // Join order over the run: line order within a product.
  seq: number
  createdAtMs: number
  // Once admitted: its hold (whose id the driver learns from GET /api/waitlist/:id).
  hold: MHold | null
}

export interface SaleWindow {
  saleStartsAtMs: number | null
  saleEndsAtMs: number | null
}

function isoOrNull(instantMs: number | null): string | null {
  return instantMs === null ? null : new Date(instantMs).toISOString()
}

export interface MHold {
  id: string
  productId: number
  qty: number
  status: HoldStatus
  expiresAtMs: number
  // The buyer token's subject; null when anonymous.
  buyer: string | null
}

export interface MOrder {
  // Unknown until an answer names it: orders made by a late payment inside another request
  // (a sweep, a release, a reclaim) are not in that request's answer.
  id: string | null
  holdId: string
  productId: number
  qty: number
  amountMinor: number
  status: OrderStatus
  expiresAtMs: number
  refundRequired: boolean
  // Its hold's buyer, whoever made the order.
  buyer: string | null
}

export interface PaymentBody {
  status: 'accepted' | 'processed'
  hold_id: string | null
  order_id: string | null
  order_status: OrderStatus | null
  outcome: PaymentOutcome | null
}

export interface MPayment {
  key: string
  fingerprint: string
  holdId: string
  status: 'success' | 'failed'
  state: 'waiting' | 'processed'
  body: PaymentBody | null
}

interface KeyRecord {
  fingerprint: string
  answerId: string
  expiresAtMs: number
}

// What the model expects of one answer. `body` fields are compared exactly; a field the model
// cannot know (an id minted by the server) is absent and learned with `learn`.
export interface Expected {
  status: number
  code?: string
  body?: Record<string, unknown>
  // true: must carry Idempotent-Replayed; false: must not; undefined: either (a retry after a restart).
  replayed?: boolean
  learn?: (body: any) => void
}

export class Model {
  nowMs: number
  readonly products = new Map<number, MProduct>()
  readonly holds = new Map<string, MHold>()
  // By hold id: a hold has at most one order (I4).
  readonly orders = new Map<string, MOrder>()
  // Payment events in arrival order (the store's seq).
  readonly payments: MPayment[] = []
  readonly paymentsByKey = new Map<string, MPayment>()
  readonly holdKeys = new Map<string, KeyRecord>()
  readonly orderKeys = new Map<string, KeyRecord>()
  // Indexes that keep a step's cost flat over a million steps: rows that were active, pending or
  // waiting (pruned as they are read) and orders by id.
  private activeSet = new Set<MHold>()
  private pendingSet = new Set<MOrder>()
  private waitingList: MPayment[] = []
  private readonly ordersById = new Map<string, MOrder>()
  // Paid units by product and buyer (paid is final), for the per-buyer limit.
  private readonly paidUnits = new Map<string, number>()
  // Hold ids in creation order (the generator draws from the recent end).
  readonly holdIds: string[] = []
  readonly namedOrders: MOrder[] = []
  readonly tickets = new Map<string, MTicket>()
  readonly ticketIds: string[] = []
  // Waiting tickets by product, in line order (pruned as they are read).
  private readonly lines = new Map<number, MTicket[]>()
  private ticketSeq = 0
  // Admitted tickets whose hold id the driver has not read yet.
  readonly unlearnedAdmissions: MTicket[] = []
  admissions = 0
  closedByLimit = 0
  // Answers the model had to accept from the service because no rule decides them
  // (counted, reported; see anomaly in the driver).
  anomalies: string[] = []
  // Late payments the per-buyer limit turned into refund_required (the run shows it met the case).
  recoveriesRefusedByLimit = 0

  constructor(
    readonly settings: ModelSettings,
    startMs: number,
  ) {
    this.nowMs = startMs
  }

  // ---- reads ----

  lapsed(row: { expiresAtMs: number }): boolean {
    return row.expiresAtMs <= this.nowMs
  }

  effectiveHoldStatus(hold: MHold): HoldStatus {
    return hold.status === 'active' && this.lapsed(hold) ? 'expired' : hold.status
  }

  effectiveOrderStatus(order: MOrder): OrderStatus {
    return order.status === 'pending' && this.lapsed(order) ? 'expired' : order.status
  }

  activeHolds(): MHold[] {
    const holds = [...this.activeSet].filter((hold) => hold.status === 'active')
    if (holds.length < this.activeSet.size) this.activeSet = new Set(holds)
    return holds
  }

  pendingOrders(): MOrder[] {
    const orders = [...this.pendingSet].filter((order) => order.status === 'pending')
    if (orders.length < this.pendingSet.size) this.pendingSet = new Set(orders)
    return orders
  }

  private waiting(): MPayment[] {
    this.waitingList = this.waitingList.filter((payment) => payment.state === 'waiting')
    return this.waitingList
  }

  // An order's id, once an answer names it.
  nameOrder(order: MOrder, orderId: string): void {
    if (order.id !== null) return
    order.id = orderId
    this.ordersById.set(orderId, order)
    this.namedOrders.push(order)
  }

  storedAvailable(product: MProduct): number {
    return product.stock - product.reserved - product.sold
  }

  // What a direct hold may take: waiting tickets come first (SPEC §8).
  availableToHolds(product: MProduct): number {
    return Math.max(0, this.storedAvailable(product) - product.waitingQty)
  }

  // GET's available_stock: what readers see free, less the waiting tickets' units.
  shownToHolds(product: MProduct): number {
    return Math.max(0, this.shownAvailable(product) - product.waitingQty)
  }

  // What GET /api/products shows: lapsed rows no longer count, swept or not (SPEC §4), except a
  // lapsed hold with a success waiting on it, whose units that late payment will buy.
  shownAvailable(product: MProduct): number {
    let lapsedQty = 0
    const paidFor = new Set(this.waiting().flatMap((payment) => (payment.status === 'success' ? [payment.holdId] : [])))
    for (const hold of this.activeHolds()) if (hold.productId === product.id && this.lapsed(hold) && !paidFor.has(hold.id)) lapsedQty += hold.qty
    for (const order of this.pendingOrders()) if (order.productId === product.id && this.lapsed(order)) lapsedQty += order.qty
    return this.storedAvailable(product) + lapsedQty
  }

  orderById(orderId: string): MOrder | undefined {
    return this.ordersById.get(orderId)
  }

  private liveKey(keys: Map<string, KeyRecord>, key: string | null): KeyRecord | undefined {
    if (key === null) return undefined
    const record = keys.get(key)
    if (record && record.expiresAtMs > this.nowMs) return record
    return undefined
  }

  // SPEC §8: a buyer's units of a product: active holds and pending orders not yet lapsed (swept
  // or not), and paid orders.
  buyerUnits(productId: number, buyer: string): number {
    let units = this.paidUnits.get(`${productId}\u0000${buyer}`) ?? 0
    for (const ticket of this.waitingTickets(productId)) if (ticket.buyer === buyer) units += ticket.qty
    for (const hold of this.activeHolds()) if (hold.productId === productId && hold.buyer === buyer && !this.lapsed(hold)) units += hold.qty
    for (const order of this.pendingOrders()) if (order.productId === productId && order.buyer === buyer && !this.lapsed(order)) units += order.qty
    return units
  }

  // For a late payment's recovery, judged after ensureAvailable (whose reclaim may recover units
  // for the same buyer first); a refusal is counted.
  private recoveryFitsLimit(product: MProduct, buyer: string | null, qty: number): boolean {
    if (product.perBuyerLimit === null || buyer === null) return true
    if (this.buyerUnits(product.id, buyer) + qty <= product.perBuyerLimit) return true
    this.recoveriesRefusedByLimit += 1
    return false
  }

  private markPaid(order: MOrder): void {
    order.status = 'paid'
    if (order.buyer === null) return
    const slot = `${order.productId}\u0000${order.buyer}`
    this.paidUnits.set(slot, (this.paidUnits.get(slot) ?? 0) + order.qty)
  }

  // ---- the model's own invariants (its rows against its counts) ----

  // `full` also recounts sold over every order (linear in the run's length: at the end only).
  selfCheck(full: boolean): string[] {
    const problems: string[] = []
    for (const product of this.products.values()) {
      let reserved = 0
      let sold = product.sold
      for (const hold of this.activeHolds()) if (hold.productId === product.id) reserved += hold.qty
      for (const order of this.pendingOrders()) if (order.productId === product.id) reserved += order.qty
      if (full) {
        sold = 0
        for (const order of this.orders.values()) if (order.productId === product.id && order.status === 'paid') sold += order.qty
      }
      const line = this.waitingTickets(product.id)
      const waitingQty = line.reduce((sum, ticket) => sum + ticket.qty, 0)
      if (waitingQty !== product.waitingQty || line.length !== product.waitingTickets) {
        problems.push(`model product ${product.id}: waiting ${product.waitingQty} units in ${product.waitingTickets} tickets (rows ${waitingQty} in ${line.length})`)
      }
      if (reserved !== product.reserved || sold !== product.sold || this.storedAvailable(product) < 0) {
        problems.push(`model product ${product.id}: reserved ${product.reserved} (rows ${reserved}), sold ${product.sold} (rows ${sold}), stock ${product.stock}`)
      }
    }
    return problems
  }

  // ---- products ----

  addProduct(id: number, stock: number, priceMinor: number, perBuyerLimit: number | null, window: SaleWindow): void {
    this.products.set(id, {
      id,
      stock,
      priceMinor,
      currency: 'USD',
      reserved: 0,
      sold: 0,
      perBuyerLimit,
      ...window,
      limitSetAtMs: perBuyerLimit === null ? null : this.nowMs,
      waitingQty: 0,
      waitingTickets: 0,
    })
  }

  setLimit(productId: number, perBuyerLimit: number | null): Expected {
    const product = this.products.get(productId)
    if (!product) return { status: 404, code: 'product_not_found' }
    if (perBuyerLimit !== product.perBuyerLimit) {
      product.perBuyerLimit = perBuyerLimit
      product.limitSetAtMs = perBuyerLimit === null ? null : this.nowMs
      // The change closes the waiting tickets no hold could be granted for under it: no buyer,
      // or more units than the limit (line.ts closeTicketsOverLimit).
      if (perBuyerLimit !== null) {
        for (const ticket of this.waitingTickets(productId)) {
          if (ticket.buyer !== null && ticket.qty <= perBuyerLimit) continue
          ticket.status = 'closed'
          product.waitingQty -= ticket.qty
          product.waitingTickets -= 1
          this.closedByLimit += 1
        }
      }
    }
    this.serveLine(product)
    return { status: 200, body: { per_buyer_limit: perBuyerLimit } }
  }

  setWindow(productId: number, window: SaleWindow): Expected {
    const product = this.products.get(productId)
    if (!product) return { status: 404, code: 'product_not_found' }
    // A line still waiting at an end already passed is closed before the window moves.
    if (this.linePhase(product) === 'ended') this.serveLine(product)
    Object.assign(product, window)
    this.serveLine(product)
    return { status: 200, body: { sale_starts_at: isoOrNull(window.saleStartsAtMs), sale_ends_at: isoOrNull(window.saleEndsAtMs) } }
  }

  // Why the window refuses every hold now (holds.ts saleWindowRefusal).
  private windowRefusal(product: MProduct): Expected | undefined {
    if (product.saleStartsAtMs !== null && this.nowMs < product.saleStartsAtMs) {
      return { status: 409, code: 'sale_not_started', body: { sale_starts_at: isoOrNull(product.saleStartsAtMs) } }
    }
    if (product.saleEndsAtMs !== null && this.nowMs >= product.saleEndsAtMs) return { status: 410, code: 'sale_ended' }
    return undefined
  }

  addStock(productId: number, delta: number): Expected {
    const product = this.products.get(productId)
    if (!product) return { status: 404, code: 'product_not_found' }
    // Lapsed rows are expired before a withdrawal is refused (products.ts changeStock).
    if (product.stock + delta < product.reserved + product.sold) this.expireLapsed(product)
    if (product.stock + delta < product.reserved + product.sold) {
      this.serveLine(product)
      return { status: 409, code: 'stock_below_committed' }
    }
    product.stock += delta
    this.serveLine(product)
    return { status: 200, body: { stock: product.stock } }
  }

  // ---- holds ----

  hold(productId: number, qty: number, key: string | null, buyer: string | null): Expected {
    if (!Number.isInteger(qty) || qty < 1 || qty > this.settings.maxQtyPerHold) return { status: 422, code: 'validation_failed' }
    // The buyer is part of what a key stands for: another buyer's same request is a reuse.
    const fingerprint = `${productId}:${qty}:${buyer ?? ''}`
    const record = this.liveKey(this.holdKeys, key)
    if (record) {
      if (record.fingerprint !== fingerprint) return { status: 422, code: 'idempotency_key_reused' }
      const hold = this.holds.get(record.answerId)!
      // A replay answers the stored hold; its status is the stored answer's, not compared.
      return { status: 201, replayed: true, body: { hold_id: hold.id, product_id: productId, qty, expires_at: new Date(hold.expiresAtMs).toISOString(), buyer_id: hold.buyer } }
    }
    const product = this.products.get(productId)
    if (!product) return { status: 404, code: 'product_not_found' }
    // Outside the window nothing is reclaimed: the window refuses first (holds.ts).
    const closed = this.windowRefusal(product)
    if (closed) return closed
    const shownBefore = this.shownToHolds(product)
    // Lapsed rows are reclaimed before anyone is refused (holds.ts), only when short, and the
    // line is served with what they free before the hold is judged.
    if (qty > this.availableToHolds(product)) {
      this.expireLapsed(product)
      this.serveLine(product)
    }
    // Refusals in the service's order: buyer token, per-buyer limit, stock (holds.ts).
    if (product.perBuyerLimit !== null) {
      if (buyer === null) return { status: 401, code: 'buyer_token_required' }
      const units = this.buyerUnits(productId, buyer)
      if (units + qty > product.perBuyerLimit) return { status: 409, code: 'buyer_limit_reached', body: { per_buyer_limit: product.perBuyerLimit, buyer_units: units } }
    }
    const available = this.availableToHolds(product)
    if (qty > available) {
      if (qty <= shownBefore) this.anomalies.push(`hold of ${qty} refused (available_stock ${available}) on product ${productId} whose GET showed ${shownBefore}`)
      return { status: 409, code: 'insufficient_stock', body: { available_stock: available } }
    }
    product.reserved += qty
    const expiresAtMs = this.nowMs + this.settings.holdTtlMs
    // Counted at once (the line served in this transaction judges its buyer's units with it);
    // named by the answer.
    const hold: MHold = { id: '', productId, qty, status: 'active', expiresAtMs, buyer }
    this.activeSet.add(hold)
    return {
      status: 201,
      replayed: false,
      body: { product_id: productId, qty, status: 'active', expires_at: new Date(expiresAtMs).toISOString(), buyer_id: buyer },
      learn: (answer: { hold_id: string }) => {
        hold.id = answer.hold_id
        this.holds.set(hold.id, hold)
        this.holdIds.push(hold.id)
        if (key !== null) this.holdKeys.set(key, { fingerprint, answerId: answer.hold_id, expiresAtMs: this.nowMs + this.settings.idempotencyTtlMs })
      },
    }
  }

  getHold(holdId: string): Expected {
    const hold = this.holds.get(holdId)
    if (!hold) return { status: 404, code: 'hold_not_found' }
    return { status: 200, body: { hold_id: hold.id, qty: hold.qty, status: this.effectiveHoldStatus(hold), expires_at: new Date(hold.expiresAtMs).toISOString(), buyer_id: hold.buyer } }
  }

  release(holdId: string): Expected {
    const hold = this.holds.get(holdId)
    if (!hold) return { status: 404, code: 'hold_not_found' }
    const product = this.products.get(hold.productId)!
    if (hold.status === 'released') return { status: 200, body: { hold_id: holdId, status: 'released' } }
    if (hold.status === 'converted') return { status: 409, code: 'hold_already_used', body: { order_id: this.orders.get(holdId)?.id ?? null } }
    if (this.effectiveHoldStatus(hold) === 'expired') return { status: 410, code: 'hold_expired' }
    hold.status = 'released'
    product.reserved -= hold.qty
    this.settleWaiting(product, [hold])
    return { status: 200, body: { hold_id: holdId, status: 'released' } }
  }

  // ---- the waitlist (SPEC §8) ----

  waitingTickets(productId: number): MTicket[] {
    const line = (this.lines.get(productId) ?? []).filter((ticket) => ticket.status === 'waiting')
    this.lines.set(productId, line)
    return line
  }

  private linePhase(product: MProduct): 'before_start' | 'open' | 'ended' {
    if (product.saleEndsAtMs !== null && this.nowMs >= product.saleEndsAtMs) return 'ended'
    if (product.saleStartsAtMs !== null && this.nowMs < product.saleStartsAtMs) return 'before_start'
    return 'open'
  }

  // Whether the per_buyer_limit lets this ticket become a hold now: tickets taken up to the
  // limit's last change are judged again, as a hold would be (line.ts LimitJudge).
  private ticketWithinLimit(product: MProduct, ticket: MTicket): boolean {
    if (product.perBuyerLimit === null) return true
    if (product.limitSetAtMs !== null && ticket.createdAtMs > product.limitSetAtMs) return true
    if (ticket.buyer === null) return false
    return this.buyerUnits(product.id, ticket.buyer) <= product.perBuyerLimit
  }

  // Run at the end of every transaction on the product (locked-product.ts): admits every
  // waiting ticket that fits, in line order; closes the line once the sale ended or sold out
  // for good.
  serveLine(product: MProduct): void {
    const line = this.waitingTickets(product.id)
    if (line.length === 0) return
    const phase = this.linePhase(product)
    if (phase === 'before_start') return
    if (phase === 'ended' || (this.storedAvailable(product) <= 0 && product.reserved <= 0)) {
      for (const ticket of line) ticket.status = 'closed'
      product.waitingQty = 0
      product.waitingTickets = 0
      return
    }
    for (const ticket of line) {
      const free = this.storedAvailable(product)
      if (free <= 0) break
      if (ticket.qty > free) continue
      const within = this.ticketWithinLimit(product, ticket)
      product.waitingQty -= ticket.qty
      product.waitingTickets -= 1
      if (!within) {
        ticket.status = 'closed'
        this.closedByLimit += 1
        continue
      }
      ticket.status = 'admitted'
      product.reserved += ticket.qty
      const hold: MHold = { id: '', productId: product.id, qty: ticket.qty, status: 'active', expiresAtMs: this.nowMs + this.settings.holdTtlMs, buyer: ticket.buyer }
      ticket.hold = hold
      this.activeSet.add(hold)
      this.unlearnedAdmissions.push(ticket)
      this.admissions += 1
    }
  }

  // Serves the line of the product a request worked on (its transaction's last step).
  serveLineOf(productId: number | undefined): void {
    const product = productId === undefined ? undefined : this.products.get(productId)
    if (product) this.serveLine(product)
  }

  // The driver read the admitted ticket's hold id.
  learnAdmission(ticket: MTicket, holdId: string): void {
    const hold = ticket.hold!
    hold.id = holdId
    this.holds.set(holdId, hold)
    this.holdIds.push(holdId)
  }

  private ticketBody(ticket: MTicket): Record<string, unknown> {
    const phase = this.linePhase(this.products.get(ticket.productId)!)
    const status = ticket.status === 'waiting' && phase === 'ended' ? 'closed' : ticket.status
    const position = status === 'waiting' ? this.waitingTickets(ticket.productId).indexOf(ticket) + 1 : null
    return {
      product_id: ticket.productId,
      qty: ticket.qty,
      status,
      position,
      buyer_id: ticket.buyer,
      ...(ticket.hold === null ? { hold_id: null, expires_at: null } : { hold_id: ticket.hold.id || undefined, expires_at: new Date(ticket.hold.expiresAtMs).toISOString() }),
    }
  }

  join(productId: number, qty: number, buyer: string | null): Expected {
    if (!Number.isInteger(qty) || qty < 1 || qty > this.settings.maxQtyPerHold) return { status: 422, code: 'validation_failed' }
    const product = this.products.get(productId)
    if (!product) return { status: 404, code: 'product_not_found' }
    const expected = this.joinLocked(product, qty, buyer)
    this.serveLine(product)
    if (expected.status !== 201) return expected
    const ticket = (expected as Expected & { ticket: MTicket }).ticket
    return { status: 201, body: { ...this.ticketBody(ticket), hold_id: undefined }, learn: expected.learn }
  }

  private joinLocked(product: MProduct, qty: number, buyer: string | null): Expected & { ticket?: MTicket } {
    if (this.linePhase(product) === 'ended') return { status: 410, code: 'sale_ended' }
    if (product.perBuyerLimit !== null) {
      if (buyer === null) return { status: 401, code: 'buyer_token_required' }
      const units = this.buyerUnits(product.id, buyer)
      if (units + qty > product.perBuyerLimit) return { status: 409, code: 'buyer_limit_reached', body: { per_buyer_limit: product.perBuyerLimit, buyer_units: units } }
    }
    this.ticketSeq += 1
    const ticket: MTicket = { id: '', productId: product.id, qty, buyer, status: 'waiting', seq: this.ticketSeq, createdAtMs: this.nowMs, hold: null }
    const line = this.waitingTickets(product.id)
    line.push(ticket)
    product.waitingQty += qty
    product.waitingTickets += 1
    return {
      status: 201,
      ticket,
      learn: (answer: { ticket_id: string }) => {
        ticket.id = answer.ticket_id
        this.tickets.set(ticket.id, ticket)
        this.ticketIds.push(ticket.id)
      },
    }
  }

  getTicket(ticketId: string): Expected {
    const ticket = this.tickets.get(ticketId)
    if (!ticket) return { status: 404, code: 'ticket_not_found' }
    return { status: 200, body: this.ticketBody(ticket) }
  }

  leave(ticketId: string): Expected {
    const ticket = this.tickets.get(ticketId)
    if (!ticket) return { status: 404, code: 'ticket_not_found' }
    const product = this.products.get(ticket.productId)!
    // Refused inside the transaction: it rolls back.
    if (ticket.status === 'admitted') return { status: 409, code: 'ticket_admitted' }
    if (ticket.status === 'waiting') {
      ticket.status = 'left'
      product.waitingQty -= ticket.qty
      product.waitingTickets -= 1
    }
    this.serveLine(product)
    return { status: 200, body: { status: ticket.status, position: null } }
  }

  // ---- orders ----

  order(holdId: string, key: string | null): Expected {
    const record = this.liveKey(this.orderKeys, key)
    if (record) {
      if (record.fingerprint !== holdId) return { status: 422, code: 'idempotency_key_reused' }
      const order = this.orderById(record.answerId)!
      return { status: 201, replayed: true, body: { order_id: order.id, hold_id: holdId, qty: order.qty, amount: this.amountOf(order), buyer_id: order.buyer } }
    }
    const hold = this.holds.get(holdId)
    if (!hold) return { status: 404, code: 'hold_not_found' }
    const product = this.products.get(hold.productId)!
    const existing = this.orders.get(holdId)
    if (existing || hold.status === 'converted') return { status: 409, code: 'hold_already_used', ...this.orderIdBody(existing) }
    if (hold.status === 'released') return { status: 409, code: 'hold_released' }
    if (this.effectiveHoldStatus(hold) === 'expired') return { status: 410, code: 'hold_expired' }
    hold.status = 'converted'
    const order: MOrder = {
      id: null,
      holdId,
      productId: product.id,
      qty: hold.qty,
      amountMinor: product.priceMinor * hold.qty,
      status: 'pending',
      expiresAtMs: this.nowMs + this.settings.orderTtlMs,
      refundRequired: false,
      buyer: hold.buyer,
    }
    this.orders.set(holdId, order)
    this.pendingSet.add(order)
    // Payments that came before the order are applied in arrival order, in its transaction.
    for (const payment of this.waitingOn([holdId])) this.finish(payment, this.applyToOrder(product, order, payment.status, true), order)
    return {
      status: 201,
      replayed: false,
      body: { hold_id: holdId, qty: order.qty, amount: this.amountOf(order), status: order.status, buyer_id: order.buyer },
      learn: (answer: { order_id: string }) => {
        this.nameOrder(order, answer.order_id)
        if (key !== null) this.orderKeys.set(key, { fingerprint: holdId, answerId: answer.order_id, expiresAtMs: this.nowMs + this.settings.idempotencyTtlMs })
      },
    }
  }

  getOrder(order: MOrder): Expected {
    return {
      status: 200,
      body: {
        hold_id: order.holdId,
        qty: order.qty,
        amount: this.amountOf(order),
        status: this.effectiveOrderStatus(order),
        refund_required: order.refundRequired,
        buyer_id: order.buyer,
      },
    }
  }

  // ---- payments ----

  webhook(request: { key: string; orderId: string | null; holdId: string | null; status: 'success' | 'failed'; paymentId: string; amount: string | null }): Expected {
    const fingerprint = JSON.stringify([request.orderId, request.orderId === null ? request.holdId : null, request.status, request.paymentId, request.amount])
    const stored = this.paymentsByKey.get(request.key)
    if (stored) {
      if (stored.fingerprint !== fingerprint) return { status: 422, code: 'idempotency_key_reused' }
      // A replay answers what is true now: a waiting payment whose hold lapsed is settled first.
      const hold = this.holds.get(stored.holdId)!
      if (stored.state === 'waiting' && hold.status === 'active' && this.lapsed(hold)) this.expireHolds(this.products.get(hold.productId)!, [hold])
      return this.paymentAnswer(stored, true)
    }
    let order = request.orderId !== null ? this.orderById(request.orderId) : undefined
    if (request.orderId !== null && !order) return { status: 404, code: 'order_not_found' }
    const hold = order ? this.holds.get(order.holdId) : this.holds.get(request.holdId ?? '')
    if (!hold) return { status: 404, code: 'hold_not_found' }
    order ??= this.orders.get(hold.id)
    const product = this.products.get(hold.productId)!
    if (request.amount !== null) {
      const expectedMinor = order?.amountMinor ?? product.priceMinor * hold.qty
      if (request.amount !== formatAmount(expectedMinor, product.currency)) return { status: 422, code: 'amount_mismatch' }
    }
    const payment: MPayment = { key: request.key, fingerprint, holdId: hold.id, status: request.status, state: 'waiting', body: null }
    if (!order && hold.status === 'active' && !this.lapsed(hold)) {
      this.payments.push(payment)
      this.waitingList.push(payment)
      this.paymentsByKey.set(payment.key, payment)
      return this.paymentAnswer(payment, false)
    }
    if (!order && hold.status === 'active') {
      this.expireHolds(product, [hold])
      order = this.orders.get(hold.id)
    }
    const outcome = order ? this.applyToOrder(product, order, request.status, true) : this.applyToEndedHold(product, hold, request.status, true)
    this.payments.push(payment)
    this.paymentsByKey.set(payment.key, payment)
    this.finish(payment, outcome, order ?? this.orders.get(hold.id) ?? null)
    return this.paymentAnswer(payment, false)
  }

  private paymentAnswer(payment: MPayment, replayed: boolean): Expected {
    if (payment.state === 'waiting') {
      return { status: 202, replayed, body: { status: 'accepted', hold_id: payment.holdId, order_id: null, order_status: null, outcome: null } }
    }
    const body = payment.body!
    const order = this.orders.get(payment.holdId)
    return {
      status: 200,
      replayed,
      // The order's id may not be known yet (a late order made inside another request).
      body: body.order_id === null && order ? { ...body, order_id: undefined } : { ...body },
      learn: (answer: PaymentBody) => {
        if (order && answer.order_id) this.nameOrder(order, answer.order_id)
        if (body.order_id === null && answer.order_id) body.order_id = answer.order_id
      },
    }
  }

  // ---- clock and sweeps ----

  advance(durationMs: number): void {
    this.nowMs += durationMs
  }

  // A sweep pass: every product's lapsed rows (the driver keeps them under SWEEP_BATCH_MAX).
  sweep(): number {
    let expired = 0
    for (const product of this.products.values()) {
      expired += this.expireLapsed(product)
      this.serveLine(product)
    }
    return expired
  }

  lapsedCount(): number {
    let count = 0
    for (const hold of this.activeHolds()) if (this.lapsed(hold)) count += 1
    for (const order of this.pendingOrders()) if (this.lapsed(order)) count += 1
    return count
  }

  // ---- the rules under one product lock (settle.ts) ----

  private expireLapsed(product: MProduct): number {
    const holds = this.activeHolds().filter((hold) => hold.productId === product.id && this.lapsed(hold))
    this.expireHolds(product, holds)
    const orders = this.pendingOrders().filter((order) => order.productId === product.id && this.lapsed(order))
    for (const order of orders) {
      order.status = 'expired'
      product.reserved -= order.qty
    }
    return holds.length + orders.length
  }

  private expireHolds(product: MProduct, holds: MHold[]): void {
    for (const hold of holds) {
      hold.status = 'expired'
      product.reserved -= hold.qty
    }
    this.settleWaiting(product, holds)
  }

  private waitingOn(holdIds: string[]): MPayment[] {
    return this.waiting().filter((payment) => holdIds.includes(payment.holdId))
  }

  private settleWaiting(product: MProduct, holds: MHold[]): void {
    for (const payment of this.waitingOn(holds.map((hold) => hold.id))) {
      const hold = this.holds.get(payment.holdId)!
      const order = this.orders.get(hold.id)
      const outcome = order ? this.applyToOrder(product, order, payment.status, false) : this.applyToEndedHold(product, hold, payment.status, false)
      this.finish(payment, outcome, this.orders.get(hold.id) ?? null)
    }
  }

  private ensureAvailable(product: MProduct, qty: number, reclaim: boolean): boolean {
    if (this.storedAvailable(product) >= qty) return true
    if (!reclaim) return false
    this.expireLapsed(product)
    return this.storedAvailable(product) >= qty
  }

  // A payment for a hold that ended (expired or released) without an order: a success is a
  // late payment that makes the order, paid if the units can still be had.
  private applyToEndedHold(product: MProduct, hold: MHold, status: 'success' | 'failed', reclaim: boolean): PaymentOutcome {
    if (status === 'failed') return 'ignored'
    const order: MOrder = {
      id: null,
      holdId: hold.id,
      productId: product.id,
      qty: hold.qty,
      amountMinor: product.priceMinor * hold.qty,
      status: hold.status === 'released' ? 'cancelled' : 'expired',
      expiresAtMs: this.nowMs,
      refundRequired: false,
      buyer: hold.buyer,
    }
    this.orders.set(hold.id, order)
    if (this.ensureAvailable(product, hold.qty, reclaim) && this.recoveryFitsLimit(product, hold.buyer, hold.qty)) {
      product.sold += hold.qty
      this.markPaid(order)
      return 'recovered'
    }
    order.refundRequired = true
    return 'refund_required'
  }

  private applyToOrder(product: MProduct, order: MOrder, status: 'success' | 'failed', reclaim: boolean): PaymentOutcome {
    if (order.status === 'pending' && this.lapsed(order)) {
      product.reserved -= order.qty
      order.status = 'expired'
    }
    if (status === 'failed') {
      if (order.status !== 'pending') return 'ignored'
      product.reserved -= order.qty
      order.status = 'cancelled'
      return 'cancelled'
    }
    if (order.status === 'pending') {
      product.reserved -= order.qty
      product.sold += order.qty
      this.markPaid(order)
      return 'paid'
    }
    if (order.status === 'paid') return 'duplicate'
    if (this.ensureAvailable(product, order.qty, reclaim) && this.recoveryFitsLimit(product, order.buyer, order.qty)) {
      product.sold += order.qty
      this.markPaid(order)
      order.refundRequired = false
      return 'recovered'
    }
    order.refundRequired = true
    return 'refund_required'
  }

  private finish(payment: MPayment, outcome: PaymentOutcome, order: MOrder | null): void {
    payment.state = 'processed'
    payment.body = { status: 'processed', hold_id: payment.holdId, order_id: order?.id ?? null, order_status: order?.status ?? null, outcome }
  }

  private orderIdBody(order: MOrder | undefined): Partial<Expected> {
    if (order?.id) return { body: { order_id: order.id } }
    if (!order) return {}
    return { learn: (answer: { order_id?: string }) => void (answer.order_id && this.nameOrder(order, answer.order_id)) }
  }

  amountOf(order: MOrder): string {
    return formatAmount(order.amountMinor, 'USD')
  }
}
