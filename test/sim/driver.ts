// Drives the real service (the app the server builds, through Fastify's inject, on a real
// database and a manual clock) with a seeded random sequence of commands, asks the reference
// model what each answer must be, and after every step checks the products' counts against the
// model and runs the audit (I1-I4, and I8 for the buyers: holds carry a buyer token from a small
// window of buyers, so products with a per-buyer limit meet it often). A restart closes the store
// under requests still in flight and opens a new runtime on the same database; the abandoned
// requests are retried with their idempotency keys, as a client that got no answer would.
import pino from 'pino'
import { loadConfig, type Config, type EngineName } from '../../src/config.js'
import { audit } from '../../src/domain/audit.js'
import { ManualClock } from '../../src/domain/clock.js'
import { DomainError } from '../../src/domain/errors.js'
import { formatAmount } from '../../src/domain/money.js'
import { Catalog } from '../../src/domain/products.js'
import { buildApp, type App } from '../../src/http/app.js'
import { statusByCode } from '../../src/http/problem.js'
import { sweepOnce } from '../../src/jobs/sweeper.js'
import { openRuntime, type Runtime } from '../../src/runtime.js'
import { bearer, buyerEnv, buyerToken } from '../helpers/buyer-tokens.js'
import { Model, type Expected, type ModelSettings, type SaleWindow } from './model.js'
import { SimRandom } from './random.js'

export type Command =
  | { kind: 'product'; stock: number; priceMinor: number; perBuyerLimit: number | null; window: SaleWindow }
  | { kind: 'window'; productId: number; window: SaleWindow }
  | { kind: 'addStock'; productId: number; delta: number }
  | { kind: 'hold'; productId: number; qty: number; key: string | null; buyer: string | null; copies: number }
  | { kind: 'getHold'; holdId: string }
  | { kind: 'release'; holdId: string }
  | { kind: 'order'; holdId: string; key: string | null }
  | { kind: 'getOrder'; holdId: string }
  | { kind: 'webhook'; request: WebhookRequest; copies: number }
  | { kind: 'advance'; durationMs: number }
  | { kind: 'sweep' }
  | { kind: 'restart'; inFlight: Command[]; ticks: number }
  | { kind: 'limit'; productId: number; perBuyerLimit: number | null }
  | { kind: 'join'; productId: number; qty: number; buyer: string | null }
  | { kind: 'getTicket'; ticketId: string }
  | { kind: 'leave'; ticketId: string }

interface WebhookRequest {
  key: string
  orderId: string | null
  holdId: string | null
  status: 'success' | 'failed'
  paymentId: string
  amount: string | null
}

export interface SimOptions {
  engine: EngineName
  databaseUrl: string
  seed: number
  ops: number
  // Audit (I1-I4 from the rows) after every this many steps; 1 = every step.
  auditEvery?: number
  // Changes the model's settings (not the service's): the self-test proves a wrong model fails.
  skewModel?: (settings: ModelSettings) => ModelSettings
  onProgress?: (done: number, stats: SimStats) => void
}

export interface SimStats {
  ops: number
  restarts: number
  abandoned: number
  sweeps: number
  audits: number
  byKind: Record<string, number>
  byStatus: Record<string, number>
  // Refusals by error code.
  byCode: Record<string, number>
  // Late payments refused a recovery by the buyer's limit (from the model).
  recoveriesRefusedByLimit: number
  // Waitlist tickets admitted (each checked in the service), and closed by a per_buyer_limit
  // changed since they were taken, at the change or when the line reached them (from the model).
  admissions: number
  closedByLimit: number
  anomalies: string[]
  elapsedMs: number
}

// Runs this long or longer must have exercised what the simulation claims to cover.
export const coverageOpsMin = 10_000

// What a run of at least coverageOpsMin operations left unexercised (empty when nothing): shared
// by the test and `npm run simulate`, so a seed explored by hand is held to what CI asks.
export function coverageGaps(stats: SimStats): string[] {
  if (stats.ops < coverageOpsMin) return []
  const gaps: string[] = []
  if (stats.restarts === 0 || stats.abandoned === 0) gaps.push('no restart abandoned a request')
  for (const status of ['200', '201', '202', '401', '404', '409', '410', '422']) if ((stats.byStatus[status] ?? 0) === 0) gaps.push(`no ${status} answer`)
  for (const code of ['buyer_limit_reached', 'buyer_token_required', 'insufficient_stock', 'idempotency_key_reused', 'sale_not_started', 'sale_ended', 'ticket_admitted'])
    if ((stats.byCode[code] ?? 0) === 0) gaps.push(`no ${code} refusal`)
  if (stats.recoveriesRefusedByLimit === 0) gaps.push('no late payment refused a recovery by the limit')
  if (stats.admissions === 0) gaps.push('no waitlist ticket admitted')
  return gaps
}

export class SimFailure extends Error {
  override name = 'SimFailure'
}

// The service's settings in the simulation: short TTLs so clock advances cross them often.
export const simEnv = {
  HOLD_TTL_SECONDS: '60',
  ORDER_TTL_SECONDS: '120',
  IDEMPOTENCY_TTL_HOURS: '0.25',
  MAX_QTY_PER_HOLD: '10',
}

// How many products a run makes, and the most unsold stock one may have: keeps every lapsed row
// within one sweep pass (SWEEP_BATCH_MAX) and one reclaim, so the model's sweep is exact.
const productsMax = 4
const stockMax = 30
// How many recent requests a duplicate or a reused key is drawn from.
const recentMax = 50
// A fixed start, so a replay of a seed sees the same instants.
const simStartMs = Date.parse('2030-01-01T00:00:00.000Z')
// Buyers come from a window of a few, so one meets a product's limit often, and the window moves
// on every so many steps: paid units count for good, so a fixed set of buyers would soon be
// refused everything and the run would stop selling.
const buyersAtOnce = 6
const stepsPerNewBuyer = 150
// Longer than any run's manual clock moves (about 12 s a step: a million steps is 140 days).
const buyerTokenTtlS = 10 * 365 * 24 * 3600

interface Live {
  runtime: Runtime
  app: App
  catalog: Catalog
}

interface Reply {
  status: number
  body: any
  replayed: boolean
}

export async function runSimulation(options: SimOptions): Promise<SimStats> {
  const sim = new Simulation(options)
  try {
    await sim.run()
  } finally {
    await sim.close()
  }
  return sim.stats
}

class Simulation {
  readonly stats: SimStats = {
    ops: 0,
    restarts: 0,
    abandoned: 0,
    sweeps: 0,
    audits: 0,
    byKind: {},
    byStatus: {},
    byCode: {},
    recoveriesRefusedByLimit: 0,
    admissions: 0,
    closedByLimit: 0,
    anomalies: [],
    elapsedMs: 0,
  }
  private readonly random: SimRandom
  private readonly clock: ManualClock
  private readonly config: Config
  private readonly model: Model
  private live: Live | undefined
  private readonly log: string[] = []
  private keyCount = 0
  private readonly recentHolds: Array<Extract<Command, { kind: 'hold' }>> = []
  private readonly recentOrders: Array<Extract<Command, { kind: 'order' }>> = []
  private readonly recentWebhooks: WebhookRequest[] = []
  private readonly tokens = new Map<string, string>()
  // Products ever given a sale window, and products a line ever formed on (kept apart).
  private readonly windowed = new Set<number>()
  private readonly lined = new Set<number>()

  constructor(private readonly options: SimOptions) {
    this.random = new SimRandom(options.seed)
    this.clock = new ManualClock(new Date(simStartMs))
    this.config = loadConfig({
      DATABASE_URL: options.databaseUrl,
      LOG_LEVEL: 'silent',
      RATE_LIMIT_READ_PER_MIN: '0',
      RATE_LIMIT_HOLD_PER_MIN: '0',
      RATE_LIMIT_ORDER_PER_MIN: '0',
      SEED_STOCK: '0',
      ...buyerEnv,
      ...simEnv,
    })
    const settings: ModelSettings = {
      holdTtlMs: this.config.holdTtlMs,
      orderTtlMs: this.config.orderTtlMs,
      idempotencyTtlMs: this.config.idempotencyTtlMs,
      maxQtyPerHold: this.config.maxQtyPerHold,
    }
    this.model = new Model(options.skewModel ? options.skewModel(settings) : settings, this.clock.now().getTime())
  }

  async run(): Promise<void> {
    const startedMs = performance.now()
    this.live = await this.open(true)
    const auditEvery = this.options.auditEvery ?? 1
    for (let step = 0; step < this.options.ops; step++) {
      const command = this.generate()
      this.log.push(JSON.stringify(command))
      if (this.log.length > 40) this.log.shift()
      try {
        await this.execute(command, false)
        await this.learnAdmissions()
        const full = step % auditEvery === 0 || command.kind === 'restart' || command.kind === 'sweep'
        // Every product on audit steps and after the clock moves; otherwise the one the command worked on.
        const touched = this.productOf(command)
        await this.checkProducts(full || touched === undefined || command.kind === 'advance' ? [...this.model.products.keys()] : [touched])
        const problems = this.model.selfCheck(false)
        if (problems.length > 0) throw new SimFailure(`model broke its own invariants: ${problems.join('; ')}`)
        if (full) await this.audit()
      } catch (error) {
        const message = error instanceof Error ? error.message : String(error)
        const replay = `npm run simulate -- --engine ${this.options.engine} --seed ${this.options.seed} --ops ${this.options.ops}`
        const failure = new SimFailure(
          `step ${step} (${command.kind}) on ${this.options.engine}, seed ${this.options.seed} (replay: ${replay}): ${message}\nlast commands:\n  ${this.log.join('\n  ')}`,
        )
        failure.stack = `${failure.message}\n${error instanceof Error ? error.stack : ''}`
        throw failure
      }
      this.stats.ops += 1
      this.stats.elapsedMs = performance.now() - startedMs
      if (this.options.onProgress && (step + 1) % 1000 === 0) this.options.onProgress(step + 1, this.stats)
    }
    await this.audit()
    const problems = this.model.selfCheck(true)
    if (problems.length > 0) throw new SimFailure(`model broke its own invariants: ${problems.join('; ')}`)
    this.stats.anomalies = this.model.anomalies
    this.stats.recoveriesRefusedByLimit = this.model.recoveriesRefusedByLimit
    this.stats.admissions = this.model.admissions
    this.stats.closedByLimit = this.model.closedByLimit
    this.stats.elapsedMs = performance.now() - startedMs
  }

  async close(): Promise<void> {
    if (!this.live) return
    await this.live.app.close()
    await this.live.runtime.store.close()
    this.live = undefined
  }

  private async open(migrate: boolean): Promise<Live> {
    const runtime = openRuntime(this.config, { clock: this.clock, logger: pino({ level: 'silent' }) })
    if (migrate) await runtime.store.migrate()
    const app = await buildApp({ config: this.config, store: runtime.store, clock: this.clock, logger: runtime.logger, metrics: runtime.metrics, observer: runtime.observer })
    return { runtime, app, catalog: new Catalog(runtime.store, this.clock) }
  }

  // ---- generating commands from the model's state ----

  private newKey(prefix: string): string {
    this.keyCount += 1
    return `${prefix}-${this.options.seed}-${this.keyCount}`
  }

  private anyHoldId(): string {
    const ids = this.model.holdIds
    if (ids.length === 0 || this.random.chance(0.03)) return 'h_unknown0000000000000000'
    // Mostly recent holds, where the action is.
    return ids[Math.max(0, ids.length - 1 - this.random.int(0, Math.min(ids.length - 1, 30)))]!
  }

  private generate(): Command {
    const model = this.model
    // The first product has no sale window, so a line can form on it (lineProductIds).
    if (model.products.size === 0)
      return {
        kind: 'product',
        stock: this.random.int(4, 16),
        priceMinor: this.random.int(1, 5000),
        perBuyerLimit: this.perBuyerLimit(),
        window: { saleStartsAtMs: null, saleEndsAtMs: null },
      }
    const kind = this.random.weighted({
      product: model.products.size < productsMax ? 3 : 0,
      addStock: 3,
      window: 2,
      hold: 24,
      getHold: 3,
      release: 8,
      order: 18,
      getOrder: 3,
      webhook: 20,
      advance: 16,
      sweep: 3,
      restart: 1,
      limit: 3,
      join: this.lineProductIds().length > 0 ? 8 : 0,
      getTicket: model.ticketIds.length > 0 ? 2 : 0,
      leave: model.ticketIds.length > 0 ? 2 : 0,
    })
    switch (kind) {
      case 'restart': {
        const inFlight: Command[] = []
        const used = new Set<number>()
        for (let attempt = 0; attempt < 6 && inFlight.length < 3; attempt++) {
          const candidate = this.generateOne(this.random.pick(['hold', 'order', 'release', 'webhook'] as const), true)
          const productId = this.productOf(candidate)
          if (productId === undefined || used.has(productId)) continue
          used.add(productId)
          inFlight.push(candidate)
        }
        return { kind: 'restart', inFlight, ticks: this.random.int(0, 4) }
      }
      default:
        return this.generateOne(kind, false)
    }
  }

  // The product a command works on, if the model knows one (restarts keep in-flight commands on
  // distinct products, so their outcomes do not depend on each other's order).
  private productOf(command: Command): number | undefined {
    if (command.kind === 'addStock' || command.kind === 'window' || command.kind === 'limit') return command.productId
    if (command.kind === 'join') return this.model.products.has(command.productId) ? command.productId : undefined
    if (command.kind === 'getTicket' || command.kind === 'leave') return this.model.tickets.get(command.ticketId)?.productId
    if (command.kind === 'hold') return this.model.products.has(command.productId) ? command.productId : undefined
    const holdId =
      command.kind === 'order' || command.kind === 'release' || command.kind === 'getHold' || command.kind === 'getOrder'
        ? command.holdId
        : command.kind === 'webhook'
          ? this.webhookHoldId(command.request)
          : undefined
    return holdId === undefined ? undefined : this.model.holds.get(holdId)?.productId
  }

  private webhookHoldId(request: WebhookRequest): string | undefined {
    if (request.holdId !== null) return request.holdId
    return request.orderId === null ? undefined : this.model.orderById(request.orderId)?.holdId
  }

  // Products a line may form on: never given a sale window, so the line is first come, first
  // served and no window edge passes with work for it (the model serves lines only in the
  // transactions it mirrors; a pre-sale draw is random).
  // The second product never gets a line, so windows always have a product to move: with lines
  // free to form anywhere, a run (seed 101) put one on every product before any window and never
  // refused sale_not_started or sale_ended.
  private lineProductIds(): number[] {
    const secondId = [...this.model.products.keys()][1]
    return [...this.model.products.values()].filter((product) => !this.windowed.has(product.id) && product.id !== secondId).map((product) => product.id)
  }

  private anyTicketId(): string {
    const ids = this.model.ticketIds
    if (ids.length === 0 || this.random.chance(0.03)) return 'tkt_unknown000000000000000'
    return ids[Math.max(0, ids.length - 1 - this.random.int(0, Math.min(ids.length - 1, 20)))]!
  }

  // Half the products limit units per buyer, to a few units: holds of 1-3 meet it soon.
  private perBuyerLimit(): number | null {
    return this.random.chance(0.5) ? this.random.int(2, 8) : null
  }

  // null: an anonymous request.
  // A third of the windows open later or have opened already, and end within minutes (the clock
  // moves about 12 s a step, and is often moved to a window's edge exactly); the rest have none.
  private saleWindow(): SaleWindow {
    if (this.random.chance(0.67)) return { saleStartsAtMs: null, saleEndsAtMs: null }
    const nowMs = this.model.nowMs
    const saleStartsAtMs = this.random.chance(0.7) ? nowMs + this.random.int(-30_000, 120_000) : null
    const saleEndsAtMs = this.random.chance(0.7) ? (saleStartsAtMs ?? nowMs) + this.random.int(30_000, 900_000) : null
    return { saleStartsAtMs, saleEndsAtMs }
  }

  private anyBuyer(): string | null {
    if (this.random.chance(0.15)) return null
    return `b${Math.floor(this.stats.ops / stepsPerNewBuyer) + this.random.int(0, buyersAtOnce - 1)}`
  }

  private generateOne(kind: Exclude<Command['kind'], 'restart'>, keyed: boolean): Command {
    const random = this.random
    const model = this.model
    const productIds = [...model.products.keys()]
    switch (kind) {
      case 'product':
        return { kind, stock: random.int(0, 16), priceMinor: random.int(1, 5000), perBuyerLimit: this.perBuyerLimit(), window: this.saleWindow() }
      case 'window': {
        // An admin moving a drop's window (or clearing it), which also keeps ended products
        // selling; never on a product a line formed on, nor on the first (kept for a line).
        const noLine = productIds.filter((productId) => !this.lined.has(productId) && productId !== productIds[0])
        if (noLine.length === 0) return { kind: 'sweep' }
        return { kind, productId: random.pick(noLine), window: this.saleWindow() }
      }
      case 'limit':
        // Raised, lowered (below what some buyers have), set or cleared mid-sale.
        return { kind, productId: random.pick(productIds), perBuyerLimit: this.perBuyerLimit() }
      case 'join': {
        const productId = random.chance(0.03) ? 999_999 : random.pick(this.lineProductIds())
        const qty = random.chance(0.03) ? random.pick([0, 11]) : random.int(1, 3)
        return { kind, productId, qty, buyer: this.anyBuyer() }
      }
      case 'getTicket':
      case 'leave':
        return { kind, ticketId: this.anyTicketId() }
      case 'addStock':
        return { kind, productId: random.pick(productIds), delta: random.int(-4, 8) }
      case 'hold': {
        const roll = random.int(0, 99)
        if (roll < 10 && this.recentHolds.length > 0) return { ...random.pick(this.recentHolds), copies: random.chance(0.3) ? random.int(2, 3) : 1 }
        if (roll < 14 && this.recentHolds.length > 0) return { ...random.pick(this.recentHolds), qty: random.int(1, 4), copies: 1 }
        // Another buyer's request under a key already used: a reuse unless it is the same buyer.
        if (roll < 17 && this.recentHolds.length > 0) return { ...random.pick(this.recentHolds), buyer: this.anyBuyer(), copies: 1 }
        const productId = random.chance(0.03) ? 999_999 : random.pick(productIds)
        const qty = random.chance(0.03) ? random.pick([0, 11]) : random.int(1, 3)
        const key = keyed || random.chance(0.6) ? this.newKey('hold') : null
        const command: Extract<Command, { kind: 'hold' }> = { kind, productId, qty, key, buyer: this.anyBuyer(), copies: key !== null && random.chance(0.1) ? random.int(2, 3) : 1 }
        if (key !== null) remember(this.recentHolds, command)
        return command
      }
      case 'getHold':
      case 'release':
        return { kind, holdId: this.anyHoldId() }
      case 'order': {
        const roll = random.int(0, 99)
        if (roll < 10 && this.recentOrders.length > 0) return random.pick(this.recentOrders)
        if (roll < 14 && this.recentOrders.length > 0) return { ...random.pick(this.recentOrders), holdId: this.anyHoldId() }
        const key = keyed || random.chance(0.6) ? this.newKey('order') : null
        const command: Extract<Command, { kind: 'order' }> = { kind, holdId: this.anyHoldId(), key }
        if (key !== null) remember(this.recentOrders, command)
        return command
      }
      case 'getOrder': {
        const named = model.namedOrders
        return named.length === 0 ? { kind: 'getHold', holdId: this.anyHoldId() } : { kind, holdId: named[named.length - 1 - random.int(0, Math.min(named.length - 1, 50))]!.holdId }
      }
      case 'webhook': {
        const roll = random.int(0, 99)
        // A provider's retry: the same event again, sometimes several at once.
        if (roll < 15 && this.recentWebhooks.length > 0) return { kind, request: random.pick(this.recentWebhooks), copies: random.chance(0.3) ? random.int(2, 3) : 1 }
        const holdId = this.anyHoldId()
        const order = model.orders.get(holdId)
        const byOrder = order?.id != null && random.chance(0.6)
        const hold = model.holds.get(holdId)
        const product = hold ? model.products.get(hold.productId) : undefined
        const amountRoll = random.int(0, 9)
        const rightMinor = hold && product ? product.priceMinor * hold.qty : 100
        const amount = amountRoll < 6 ? null : amountRoll < 9 ? formatAmount(rightMinor, 'USD') : formatAmount(rightMinor + 1, 'USD')
        const key = roll < 20 && this.recentWebhooks.length > 0 ? random.pick(this.recentWebhooks).key : this.newKey('pay')
        const request: WebhookRequest = {
          key,
          orderId: byOrder ? order!.id : random.chance(0.02) ? 'o_unknown0000000000000000' : null,
          holdId: byOrder ? null : holdId,
          status: random.chance(0.7) ? 'success' : 'failed',
          paymentId: `pi_${random.int(0, 1_000_000)}`,
          amount,
        }
        if (request.orderId !== null) request.holdId = null
        remember(this.recentWebhooks, request)
        return { kind, request, copies: 1 }
      }
      case 'advance': {
        const roll = random.int(0, 99)
        if (roll < 30) return { kind, durationMs: random.int(1, 5000) }
        if (roll < 70) {
          // To an expiry instant exactly, or one millisecond before it: the boundary of SPEC §4.
          const instants = model.activeHolds().map((hold) => hold.expiresAtMs)
          for (const order of model.pendingOrders()) instants.push(order.expiresAtMs)
          for (const product of model.products.values()) for (const edge of [product.saleStartsAtMs, product.saleEndsAtMs]) if (edge !== null) instants.push(edge)
          const future = instants.filter((instant) => instant > model.nowMs + 1)
          if (future.length > 0) return { kind, durationMs: random.pick(future) - model.nowMs - random.int(0, 1) }
        }
        if (roll < 97) return { kind, durationMs: random.int(30_000, 130_000) }
        return { kind, durationMs: this.config.idempotencyTtlMs }
      }
      case 'sweep':
        return { kind }
    }
  }

  // ---- executing ----

  private count(key: string, table: Record<string, number>): void {
    table[key] = (table[key] ?? 0) + 1
  }

  private async inject(method: string, url: string, body?: unknown, headers: Record<string, string> = {}): Promise<Reply> {
    const response = await this.live!.app.inject({
      method: method as 'GET',
      url,
      headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers },
      ...(body === undefined ? {} : { payload: JSON.stringify(body) }),
    })
    const reply = { status: response.statusCode, body: response.body ? JSON.parse(response.body) : undefined, replayed: response.headers['idempotent-replayed'] === 'true' }
    this.count(String(reply.status), this.stats.byStatus)
    if (typeof reply.body?.code === 'string') this.count(reply.body.code, this.stats.byCode)
    return reply
  }

  // Tokens as a shop would issue them, minted once per buyer for the start of the manual clock.
  private async tokenOf(buyer: string): Promise<string> {
    let token = this.tokens.get(buyer)
    if (token === undefined) {
      token = await buyerToken(buyer, { nowMs: simStartMs, expS: Math.floor(simStartMs / 1000) + buyerTokenTtlS })
      this.tokens.set(buyer, token)
    }
    return token
  }

  private async request(command: Command): Promise<Reply> {
    switch (command.kind) {
      case 'hold': {
        const headers = { ...(command.key === null ? {} : { 'idempotency-key': command.key }), ...(command.buyer === null ? {} : bearer(await this.tokenOf(command.buyer))) }
        return this.inject('POST', '/api/holds', { product_id: command.productId, qty: command.qty }, headers)
      }
      case 'getHold':
        return this.inject('GET', `/api/holds/${command.holdId}`)
      case 'release':
        return this.inject('DELETE', `/api/holds/${command.holdId}`)
      case 'order':
        return this.inject('POST', '/api/orders', { hold_id: command.holdId }, command.key === null ? {} : { 'idempotency-key': command.key })
      case 'getOrder':
        return this.inject('GET', `/api/orders/${this.model.orders.get(command.holdId)!.id}`)
      case 'join': {
        const headers = command.buyer === null ? {} : bearer(await this.tokenOf(command.buyer))
        return this.inject('POST', `/api/products/${command.productId}/waitlist`, { qty: command.qty }, headers)
      }
      case 'getTicket':
        return this.inject('GET', `/api/waitlist/${command.ticketId}`)
      case 'leave':
        return this.inject('DELETE', `/api/waitlist/${command.ticketId}`)
      case 'webhook': {
        const { request } = command
        const body: Record<string, unknown> = { status: request.status, payment_id: request.paymentId }
        if (request.orderId !== null) body.order_id = request.orderId
        if (request.holdId !== null) body.hold_id = request.holdId
        if (request.amount !== null) body.amount = request.amount
        return this.inject('POST', '/api/payments/webhook', body, { 'idempotency-key': request.key })
      }
      default:
        throw new Error(`${command.kind} is not a request`)
    }
  }

  private predict(command: Command): Expected {
    const model = this.model
    switch (command.kind) {
      case 'hold':
        return model.hold(command.productId, command.qty, command.key, command.buyer)
      case 'getHold':
        return model.getHold(command.holdId)
      case 'release':
        return model.release(command.holdId)
      case 'order':
        return model.order(command.holdId, command.key)
      case 'getOrder':
        return model.getOrder(model.orders.get(command.holdId)!)
      case 'webhook':
        return model.webhook(command.request)
      case 'join':
        return model.join(command.productId, command.qty, command.buyer)
      case 'getTicket':
        return model.getTicket(command.ticketId)
      case 'leave':
        return model.leave(command.ticketId)
      default:
        throw new Error(`${command.kind} is not a request`)
    }
  }

  // `retry`: the request may have committed before a restart, so a replay is as good an answer.
  private async execute(command: Command, retry: boolean): Promise<void> {
    this.count(command.kind, this.stats.byKind)
    switch (command.kind) {
      case 'product': {
        const created = await this.live!.catalog.create({
          name: `sim ${command.stock}`,
          priceMinor: command.priceMinor,
          currency: 'USD',
          stock: command.stock,
          drop: { perBuyerLimit: command.perBuyerLimit, ...windowDates(command.window) },
        })
        this.model.addProduct(created.id, command.stock, command.priceMinor, command.perBuyerLimit, command.window)
        if (command.window.saleStartsAtMs !== null || command.window.saleEndsAtMs !== null) this.windowed.add(created.id)
        return
      }
      case 'limit': {
        const expected = this.model.setLimit(command.productId, command.perBuyerLimit)
        const view = await this.live!.catalog.update(command.productId, { drop: { perBuyerLimit: command.perBuyerLimit } })
        compare('limit', expected, { status: 200, body: { per_buyer_limit: view.drop.perBuyerLimit }, replayed: false })
        return
      }
      case 'addStock': {
        const product = this.model.products.get(command.productId)!
        // Units on sale (not sold) stay under stockMax, so every lapsed row fits one sweep pass.
        if (product.stock - product.sold + command.delta > stockMax) return
        const expected = this.model.addStock(command.productId, command.delta)
        let reply: Reply
        try {
          const view = await this.live!.catalog.addStock(command.productId, command.delta)
          reply = { status: 200, body: { stock: view.stock }, replayed: false }
        } catch (error) {
          if (!(error instanceof DomainError)) throw error
          reply = { status: statusByCode[error.code], body: { code: error.code }, replayed: false }
        }
        compare('addStock', expected, reply)
        return
      }
      case 'window': {
        this.windowed.add(command.productId)
        const expected = this.model.setWindow(command.productId, command.window)
        const view = await this.live!.catalog.update(command.productId, { drop: windowDates(command.window) })
        const reply = {
          status: 200,
          body: { sale_starts_at: view.drop.saleStartsAt?.toISOString() ?? null, sale_ends_at: view.drop.saleEndsAt?.toISOString() ?? null },
          replayed: false,
        }
        compare('window', expected, reply)
        return
      }
      case 'advance':
        this.clock.advanceMs(command.durationMs)
        this.model.advance(command.durationMs)
        return
      case 'sweep': {
        this.stats.sweeps += 1
        if (this.model.lapsedCount() > this.config.sweepBatchMax) throw new SimFailure('more lapsed rows than one sweep pass takes: lower the generator limits')
        const expectedCount = this.model.sweep()
        const result = await sweepOnce(this.live!.runtime.store, this.live!.runtime.observer, this.clock, this.config.sweepBatchMax)
        if (result.expiredCount !== expectedCount) throw new SimFailure(`sweep expired ${result.expiredCount} rows, model expected ${expectedCount}`)
        return
      }
      case 'restart':
        return this.restart(command)
      default: {
        const copies = 'copies' in command ? command.copies : 1
        const productId = this.productOf(command)
        if (command.kind === 'join' && productId !== undefined) this.lined.add(productId)
        const expected = this.predict(command)
        // The request's transaction serves the product's line last (a no-op unless it freed units).
        if (command.kind === 'hold' || command.kind === 'release' || command.kind === 'order' || command.kind === 'webhook') this.model.serveLineOf(productId)
        if (retry) delete expected.replayed
        if (copies === 1) {
          const reply = await this.request(command)
          compare(command.kind, expected, reply)
          expected.learn?.(reply.body)
          return
        }
        // Concurrent duplicates of one keyed request: one effect, every answer the same one
        // (a duplicate may be told the key is still in flight).
        const replies = await Promise.all(Array.from({ length: copies }, () => this.request(command)))
        const answered = replies.filter((reply) => !(reply.status === 409 && reply.body?.code === 'idempotency_key_in_flight'))
        if (answered.length === 0) throw new SimFailure(`all ${copies} concurrent duplicates were told idempotency_key_in_flight`)
        delete expected.replayed
        for (const reply of answered) compare(command.kind, expected, reply)
        const bodies = new Set(answered.filter((reply) => reply.status < 300).map((reply) => JSON.stringify(reply.body)))
        if (bodies.size > 1) throw new SimFailure(`concurrent duplicates answered differently: ${[...bodies].join(' / ')}`)
        expected.learn?.(answered[0]!.body)
      }
    }
  }

  // Requests are started, the event loop turns a few times, and the store is closed under them
  // without draining: whatever had not committed is lost. A new runtime opens on the same
  // database, and each abandoned request is retried with the same key.
  private async restart(command: Extract<Command, { kind: 'restart' }>): Promise<void> {
    this.stats.restarts += 1
    this.stats.abandoned += command.inFlight.length
    const old = this.live!
    const abandoned = command.inFlight.map((inFlight) => this.request(inFlight).catch(() => undefined))
    for (let tick = 0; tick < command.ticks; tick++) await new Promise((resolve) => setImmediate(resolve))
    const closing = old.runtime.store.close().catch(() => undefined)
    this.live = await this.open(false)
    await Promise.all(abandoned)
    await closing
    await old.app.close()
    for (const inFlight of command.inFlight) await this.execute(inFlight, true)
  }

  // ---- checks after every step ----

  private async checkProducts(productIds: number[]): Promise<void> {
    for (const productId of productIds) {
      const product = this.model.products.get(productId)!
      const reply = await this.inject('GET', `/api/products/${product.id}`)
      const expected = {
        stock: product.stock,
        reserved: product.reserved,
        sold: product.sold,
        available_stock: this.model.shownToHolds(product),
        per_buyer_limit: product.perBuyerLimit,
        sale_starts_at: product.saleStartsAtMs === null ? null : new Date(product.saleStartsAtMs).toISOString(),
        sale_ends_at: product.saleEndsAtMs === null ? null : new Date(product.saleEndsAtMs).toISOString(),
      }
      const actual = {
        stock: reply.body?.stock,
        reserved: reply.body?.reserved,
        sold: reply.body?.sold,
        available_stock: reply.body?.available_stock,
        per_buyer_limit: reply.body?.per_buyer_limit,
        sale_starts_at: reply.body?.sale_starts_at,
        sale_ends_at: reply.body?.sale_ends_at,
      }
      if (reply.status !== 200 || JSON.stringify(actual) !== JSON.stringify(expected)) {
        throw new SimFailure(
          `product ${product.id}: service ${reply.status} ${JSON.stringify(actual)}, model ${JSON.stringify(expected)} (waiting ${product.waitingQty} in ${product.waitingTickets}, shown free ${this.model.shownAvailable(product)}; service ${JSON.stringify(reply.body)})`,
        )
      }
    }
  }

  // Tickets the model admitted in the last step: each must be admitted in the service too, with
  // the hold the model expects (its id is learned here).
  private async learnAdmissions(): Promise<void> {
    const admitted = this.model.unlearnedAdmissions.splice(0)
    for (const ticket of admitted) {
      const reply = await this.inject('GET', `/api/waitlist/${ticket.id}`)
      const hold = ticket.hold!
      compare('admitted ticket', { status: 200, body: { status: 'admitted', qty: ticket.qty, buyer_id: ticket.buyer, expires_at: new Date(hold.expiresAtMs).toISOString() } }, reply)
      this.model.learnAdmission(ticket, reply.body.hold_id)
    }
  }

  private async audit(): Promise<void> {
    this.stats.audits += 1
    const report = await audit(this.live!.runtime.store, this.clock.now())
    if (!report.ok) throw new SimFailure(`audit: ${report.violations.map((violation) => `${violation.invariant} ${violation.message}`).join('; ')}`)
  }
}

function windowDates(window: SaleWindow): { saleStartsAt: Date | null; saleEndsAt: Date | null } {
  return {
    saleStartsAt: window.saleStartsAtMs === null ? null : new Date(window.saleStartsAtMs),
    saleEndsAt: window.saleEndsAtMs === null ? null : new Date(window.saleEndsAtMs),
  }
}

function remember<T>(list: T[], item: T): void {
  list.push(item)
  if (list.length > recentMax) list.shift()
}

function compare(label: string, expected: Expected, reply: Reply): void {
  const problems: string[] = []
  if (reply.status !== expected.status) problems.push(`status ${reply.status}, expected ${expected.status}`)
  if (expected.code !== undefined && reply.body?.code !== expected.code) problems.push(`code ${reply.body?.code}, expected ${expected.code}`)
  for (const [field, value] of Object.entries(expected.body ?? {})) {
    if (value === undefined) continue
    if (JSON.stringify(reply.body?.[field]) !== JSON.stringify(value)) problems.push(`${field} ${JSON.stringify(reply.body?.[field])}, expected ${JSON.stringify(value)}`)
  }
  if (expected.replayed !== undefined && reply.replayed !== expected.replayed) problems.push(`Idempotent-Replayed ${reply.replayed}, expected ${expected.replayed}`)
  if (problems.length > 0) throw new SimFailure(`${label}: ${problems.join(', ')}; answer ${JSON.stringify(reply.body)}`)
}
