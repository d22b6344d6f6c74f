// `flash-sale race`: a sell-out against any running deployment, to prove afterwards that nothing
// was oversold. It fires N hold requests for one product (distinct buyers when a buyer-token
// secret is given), optionally carries each granted hold through an order and a signed payment
// webhook, then checks what the server granted against the stock it had: exit 1 if more units
// were live at once, or sold, than the product allowed, or if the audit (with a token) fails.
// It speaks only the public HTTP API, so it judges the deployment, not this code base.
// This file drives the load; race-report.ts prints and judges what came back.
import { createHmac, randomBytes } from 'node:crypto'
import { parseArgs } from 'node:util'
import { signPayload } from '../http/signature.js'
import {
  auditFailure,
  describeCounts,
  emptyTally,
  increment,
  oversellFailures,
  Progress,
  reportTally,
  uncheckedPrefix,
  verdict,
  type Counts,
  type Grant,
  type RaceIo,
} from './race-report.js'

// Every request and the whole run are bounded: a race cannot hammer a target forever.
export const raceBuyersMax = 100_000
export const raceConcurrencyMax = 1_000
const raceDurationSDefault = 120
const raceDurationSMax = 3_600
const requestTimeoutMs = 10_000
// A buyer token outlives the longest allowed run, so no token expires mid-race.
const buyerTokenTtlS = raceDurationSMax + 600
// Problem bodies are small; a target that answers megabytes is cut off, not buffered.
const replyBytesMax = 64 * 1024

export const raceUsage = `race --url URL --product ID --buyers N --concurrency C [--admin-token T] [--checkout]
      [--buyer-token-secret S] [--webhook-secret S] [--max-duration-s S]
                        sell one product to N concurrent buyers and check nothing was oversold
                        (exit 1 if oversold or the audit fails)`

export interface RaceOptions {
  baseUrl: string
  productId: number
  buyers: number
  concurrency: number
  adminToken?: string
  checkout: boolean
  buyerTokenSecret?: string
  webhookSecret?: string
  maxDurationMs: number
}

export class RaceUsageError extends Error {}

export function parseRaceArgs(args: string[], env: NodeJS.ProcessEnv): RaceOptions {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      url: { type: 'string' },
      product: { type: 'string' },
      buyers: { type: 'string' },
      concurrency: { type: 'string' },
      'admin-token': { type: 'string' },
      checkout: { type: 'boolean' },
      'buyer-token-secret': { type: 'string' },
      'webhook-secret': { type: 'string' },
      'max-duration-s': { type: 'string' },
    },
  })
  if (values.url === undefined) throw new RaceUsageError('race needs --url')
  let url: URL
  try {
    url = new URL(values.url)
  } catch {
    throw new RaceUsageError(`--url ${JSON.stringify(values.url)} is not a URL`)
  }
  // Only HTTP: a file:, data: or other scheme is never what a load test should reach.
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new RaceUsageError(`--url must be http:// or https://, not ${url.protocol}`)
  if (url.username || url.password) throw new RaceUsageError('--url must not carry credentials')
  if (url.search || url.hash) throw new RaceUsageError('--url must not carry a query or fragment')
  const buyers = integerFlag('buyers', values.buyers, 1, raceBuyersMax)
  const options: RaceOptions = {
    baseUrl: url.toString().replace(/\/+$/, ''),
    productId: integerFlag('product', values.product, 1, Number.MAX_SAFE_INTEGER),
    buyers,
    concurrency: Math.min(buyers, integerFlag('concurrency', values.concurrency, 1, raceConcurrencyMax)),
    checkout: values.checkout ?? false,
    maxDurationMs: 1000 * (values['max-duration-s'] === undefined ? raceDurationSDefault : integerFlag('max-duration-s', values['max-duration-s'], 1, raceDurationSMax)),
  }
  if (values['admin-token'] !== undefined) options.adminToken = values['admin-token']
  if (values['buyer-token-secret'] !== undefined) options.buyerTokenSecret = values['buyer-token-secret']
  const webhookSecret = values['webhook-secret'] ?? env.WEBHOOK_SECRET
  if (webhookSecret) options.webhookSecret = webhookSecret
  return options
}

function integerFlag(name: string, value: string | undefined, min: number, max: number): number {
  if (value === undefined) throw new RaceUsageError(`race needs --${name}`)
  if (!/^\d+$/.test(value) || Number(value) < min || Number(value) > max) throw new RaceUsageError(`--${name} must be an integer from ${min} to ${max}, not ${JSON.stringify(value)}`)
  return Number(value)
}

interface Reply {
  status: number
  body: any
  latencyMs: number
}

export async function runRace(options: RaceOptions, io: RaceIo): Promise<number> {
  const startedAtMs = Date.now()
  const deadlineMs = startedAtMs + options.maxDurationMs
  // The reads after the run (product, audit) get their own short allowance past the deadline.
  let requestDeadlineMs = deadlineMs
  const runId = randomBytes(6).toString('hex')
  const productPath = `/api/products/${options.productId}`

  const send = async (method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Reply | { error: string; latencyMs: number }> => {
    const sentAtMs = performance.now()
    const remainingMs = requestDeadlineMs - Date.now()
    if (remainingMs <= 0) return { error: 'deadline', latencyMs: 0 }
    const rawBody = body === undefined ? undefined : JSON.stringify(body)
    try {
      const response = await fetch(`${options.baseUrl}${path}`, {
        method,
        headers: rawBody === undefined ? headers : { 'content-type': 'application/json', ...headers },
        ...(rawBody === undefined ? {} : { body: rawBody }),
        redirect: 'error',
        signal: AbortSignal.timeout(Math.min(requestTimeoutMs, remainingMs)),
      })
      const text = await readBounded(response)
      let parsed: unknown
      try {
        parsed = text ? JSON.parse(text) : undefined
      } catch {
        parsed = undefined
      }
      return { status: response.status, body: parsed, latencyMs: performance.now() - sentAtMs }
    } catch (error) {
      return { error: errorName(error), latencyMs: performance.now() - sentAtMs }
    }
  }

  const readCounts = async (): Promise<Counts | string> => {
    const reply = await send('GET', productPath)
    if ('error' in reply) return reply.error
    if (reply.status !== 200) return `${reply.status} ${problemCode(reply.body) ?? ''}`.trim()
    const { stock, available_stock: available, reserved, sold } = reply.body ?? {}
    if (![stock, available, reserved, sold].every(Number.isSafeInteger)) return 'answer without integer stock, available_stock, reserved and sold'
    return { stock, available, reserved, sold }
  }

  io.out(`race: ${options.buyers} buyers, concurrency ${options.concurrency}, product ${options.productId} at ${options.baseUrl}${options.checkout ? ', with checkout' : ''}`)
  const before = await readCounts()
  if (typeof before === 'string') {
    io.err(`could not read product ${options.productId}: ${before}`)
    return 1
  }
  io.out(`before: ${describeCounts(before)}`)

  const tally = emptyTally()
  const progress = new Progress(io, options.buyers)

  const buyer = async (index: number): Promise<void> => {
    const headers: Record<string, string> = { 'idempotency-key': `race-${runId}-hold-${index}` }
    if (options.buyerTokenSecret) headers.authorization = `Bearer ${buyerToken(options.buyerTokenSecret, `race-${runId}-${index}`)}`
    tally.attempted += 1
    const hold = await send('POST', '/api/holds', { product_id: options.productId, qty: 1 }, headers)
    tally.holdLatenciesMs.push(hold.latencyMs)
    if ('error' in hold || hold.status !== 201) {
      increment(tally.refusals, 'error' in hold ? `error ${hold.error}` : `${hold.status} ${problemCode(hold.body) ?? '(no code)'}`)
      return
    }
    const holdId = String(hold.body?.hold_id ?? '')
    if (tally.grantedIds.has(holdId)) tally.duplicateIds += 1
    tally.grantedIds.add(holdId)
    const qty = Number.isSafeInteger(hold.body?.qty) ? hold.body.qty : 1
    const grant: Grant = { qty, createdAtMs: instantMs(hold.body?.created_at, Date.now()), untilMs: instantMs(hold.body?.expires_at, Number.POSITIVE_INFINITY) }
    tally.granted.push(grant)
    if (!options.checkout) return

    const checkoutStartedMs = performance.now()
    const order = await send('POST', '/api/orders', { hold_id: holdId }, { 'idempotency-key': `race-${runId}-order-${index}` })
    if ('error' in order || order.status !== 201) {
      increment(tally.orderRefusals, 'error' in order ? `error ${order.error}` : `${order.status} ${problemCode(order.body) ?? '(no code)'}`)
      return
    }
    tally.orders += 1
    // A pending order keeps the hold's units until it lapses.
    grant.untilMs = Math.max(grant.untilMs, instantMs(order.body?.expires_at, Number.POSITIVE_INFINITY))
    const payment = { order_id: order.body?.order_id, status: 'success', payment_id: `race_${runId}_${index}`, amount: order.body?.amount }
    const rawBody = JSON.stringify(payment)
    const paymentHeaders: Record<string, string> = { 'idempotency-key': `race-${runId}-pay-${index}` }
    if (options.webhookSecret) paymentHeaders['webhook-signature'] = signPayload(options.webhookSecret, Math.floor(Date.now() / 1000), rawBody)
    const paid = await send('POST', '/api/payments/webhook', payment, paymentHeaders)
    tally.checkoutLatenciesMs.push(performance.now() - checkoutStartedMs)
    if ('error' in paid || paid.status !== 200 || paid.body?.order_status !== 'paid') {
      const code =
        'error' in paid
          ? `error ${paid.error}`
          : paid.status === 200
            ? `200 ${String(paid.body?.outcome ?? paid.body?.order_status)}`
            : `${paid.status} ${problemCode(paid.body) ?? '(no code)'}`
      increment(tally.paymentRefusals, code)
      return
    }
    tally.paid += 1
    tally.paidUnits += qty
    grant.untilMs = Number.POSITIVE_INFINITY
  }

  // A fixed pool of C workers taking the next buyer: never more than C requests in flight.
  let next = 0
  let stoppedAtDeadline = false
  const worker = async (): Promise<void> => {
    while (next < options.buyers) {
      if (Date.now() >= deadlineMs) {
        stoppedAtDeadline = true
        return
      }
      const index = next++
      await buyer(index)
      progress.update(tally.attempted, tally.granted.length)
    }
  }
  await Promise.all(Array.from({ length: options.concurrency }, worker))
  progress.finish(tally.attempted, tally.granted.length)
  const elapsedS = (Date.now() - startedAtMs) / 1000
  reportTally(tally, { buyers: options.buyers, checkout: options.checkout, maxDurationMs: options.maxDurationMs, elapsedS, stoppedAtDeadline }, io.out)

  requestDeadlineMs = Date.now() + 2 * requestTimeoutMs
  const after = await readCounts()
  if (typeof after === 'string') io.out(`after: could not read product: ${after}`)
  else io.out(`after: ${describeCounts(after)}`)
  const failures = oversellFailures(before, typeof after === 'string' ? undefined : after, tally)

  if (options.adminToken) {
    const report = await send('GET', '/api/admin/audit', undefined, { authorization: `Bearer ${options.adminToken}` })
    if ('error' in report || report.status !== 200) {
      failures.push(`${uncheckedPrefix}the audit answered ${'error' in report ? report.error : `${report.status} ${problemCode(report.body) ?? ''}`}`)
    } else {
      const failure = auditFailure(report.body, io.out)
      if (failure) failures.push(failure)
    }
  }
  return verdict(failures, before, tally, options.checkout, io.out)
}

// HS256 JWT (what the service's BUYER_TOKEN_SECRET verifies), made with node:crypto alone.
export function buyerToken(secret: string, buyerId: string, nowS = Math.floor(Date.now() / 1000)): string {
  const encode = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url')
  const unsigned = `${encode({ alg: 'HS256', typ: 'JWT' })}.${encode({ sub: buyerId, iat: nowS, exp: nowS + buyerTokenTtlS })}`
  return `${unsigned}.${createHmac('sha256', secret).update(unsigned).digest('base64url')}`
}

async function readBounded(response: Response): Promise<string> {
  if (!response.body) return ''
  const reader = response.body.getReader()
  const chunks: Uint8Array[] = []
  let bytes = 0
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    bytes += value.byteLength
    if (bytes > replyBytesMax) {
      await reader.cancel()
      return ''
    }
    chunks.push(value)
  }
  return Buffer.concat(chunks).toString('utf8')
}

function errorName(error: unknown): string {
  if (error instanceof Error) {
    if (error.name === 'TimeoutError' || error.name === 'AbortError') return 'timeout'
    const cause = (error as { cause?: { code?: string } }).cause
    return cause?.code ?? error.name
  }
  return 'unknown'
}

function problemCode(body: unknown): string | undefined {
  const code = (body as { code?: unknown } | undefined)?.code
  return typeof code === 'string' ? code.slice(0, 64) : undefined
}

function instantMs(value: unknown, fallbackMs: number): number {
  if (typeof value !== 'string') return fallbackMs
  const parsedMs = Date.parse(value)
  return Number.isFinite(parsedMs) ? parsedMs : fallbackMs
}
