// Load generators: autocannon for one request repeated on N keep-alive connections (open
// loop per connection: the next request goes as soon as the answer arrives), and a small
// closed-loop driver for the buyer funnel (hold -> order -> signed webhook), which autocannon
// cannot chain.
import { Agent, request } from 'node:http'
import autocannon from 'autocannon'
import { signPayload } from '../src/http/signature.js'

export interface LoadResult {
  label: string
  connections: number
  durationS: number
  // Answers with a 2xx status per second: the figure that counts.
  okPerS: number
  // Every answer per second, whatever its status.
  answersPerS: number
  latencyP50Ms: number
  latencyP99Ms: number
  latencyMaxMs: number
  statusCounts: Record<string, number>
  errors: number
  timeouts: number
}

export interface CannonOptions {
  label: string
  url: string
  connections: number
  durationS: number
  method?: 'GET' | 'POST'
  body?: string
  // Headers that change with every request (a fresh Idempotency-Key, the next buyer's token),
  // written into each request by freshHeaderRequests below.
  headersPerRequest?: () => Record<string, string>
  // Stops early when it returns true, checked on every answer.
  stopWhen?: (statusCounts: Record<string, number>) => boolean
}

// Each request of a connection with its own headers, for the cost of one string. Autocannon's
// own way (`requests: [{ setupRequest }]`) rebuilds the request from its whole options object
// and deep-clones its context on every request: 30–50 µs more client CPU per request than a
// prepared buffer on this project's two-core machine, where the client shares the cores with the
// service and the database, so keyed and buyer holds paid for the load generator's work
// (measured with a trivial server: 57–68 µs per request with one prepared buffer, 114 µs with
// a setupRequest). Here each connection keeps the request autocannon prepared, split where the
// headers end, and its getRequestBuffer (what autocannon 8 writes for every request) inserts
// the fresh headers there. test/bench-load.test.ts checks the bytes a server receives.
export function freshHeaderRequests(headersPerRequest: () => Record<string, string>): (client: unknown) => void {
  return (client: unknown) => {
    const prepared = client as { getRequestBuffer?: () => unknown }
    const getRequestBuffer = prepared.getRequestBuffer
    const built: unknown = typeof getRequestBuffer === 'function' ? getRequestBuffer.call(client) : undefined
    if (!Buffer.isBuffer(built)) throw new Error('autocannon changed: a client has no prepared request buffer (bench/load.ts freshHeaderRequests)')
    const text = built.toString('latin1')
    const headersEnd = text.indexOf('\r\n\r\n')
    if (headersEnd < 0) throw new Error('autocannon changed: a prepared request has no end of headers (bench/load.ts freshHeaderRequests)')
    const head = text.slice(0, headersEnd + 2)
    const rest = text.slice(headersEnd + 2)
    prepared.getRequestBuffer = () => {
      let headers = ''
      const fresh = headersPerRequest()
      for (const name in fresh) headers += `${name}: ${fresh[name]}\r\n`
      return Buffer.from(head + headers + rest, 'latin1')
    }
  }
}

// Autocannon's own limit on one request: far above any latency worth reporting.
const requestTimeoutS = 10

export function cannon(options: CannonOptions): Promise<LoadResult> {
  return new Promise((resolve, reject) => {
    const seen: Record<string, number> = {}
    let stopped = false
    const { headersPerRequest } = options
    const instance = autocannon(
      {
        url: options.url,
        connections: options.connections,
        duration: options.durationS,
        pipelining: 1,
        timeout: requestTimeoutS,
        method: options.method ?? 'GET',
        ...(options.body !== undefined ? { body: options.body, headers: { 'content-type': 'application/json' } } : {}),
        ...(headersPerRequest ? { setupClient: freshHeaderRequests(headersPerRequest) } : {}),
      },
      (error: unknown, result: autocannon.Result) => {
        if (error) return reject(error)
        const statusCounts: Record<string, number> = {}
        for (const [status, stat] of Object.entries(result.statusCodeStats ?? {})) statusCounts[status] = stat.count ?? 0
        const durationS = Math.max(result.duration, 1e-3)
        resolve({
          label: options.label,
          connections: options.connections,
          durationS,
          okPerS: result['2xx'] / durationS,
          answersPerS: (result['1xx'] + result['2xx'] + result['3xx'] + result['4xx'] + result['5xx']) / durationS,
          latencyP50Ms: result.latency.p50,
          latencyP99Ms: result.latency.p99,
          latencyMaxMs: result.latency.max,
          statusCounts,
          errors: result.errors,
          timeouts: result.timeouts,
        })
      },
    )
    const { stopWhen } = options
    if (stopWhen) {
      instance.on('response', (_client, statusCode) => {
        const key = String(statusCode)
        seen[key] = (seen[key] ?? 0) + 1
        if (!stopped && stopWhen(seen)) {
          stopped = true
          instance.stop()
        }
      })
    }
  })
}

// --- closed-loop funnel -----------------------------------------------------------------------

export interface FunnelOptions {
  baseUrl: string
  productId: number
  buyers: number
  durationS: number
  webhookSecret: string
}

export interface FunnelResult {
  buyers: number
  durationS: number
  // Buyers whose order ended `paid`, per second.
  buyersPerS: number
  completed: number
  latencyP50Ms: number
  latencyP99Ms: number
  // "<step> <status>" -> count, for every answer that was not the expected one.
  failures: Record<string, number>
}

export interface Answer {
  // 0 when no answer came: `failure` says why (timeout, ECONNRESET, ...).
  status: number
  json: Record<string, unknown> | undefined
  failure?: string
}

const funnelRequestTimeoutMs = 10_000
// A buyer whose step failed waits this long before starting over, so a failing server is not
// hammered by a tight loop (the run is bounded by its duration anyway).
const failureBackoffMs = 20

export function call(agent: Agent, baseUrl: string, method: string, path: string, body: string | undefined, headers: Record<string, string> = {}): Promise<Answer> {
  return new Promise((resolve) => {
    const req = request(
      `${baseUrl}${path}`,
      {
        method,
        agent,
        timeout: funnelRequestTimeoutMs,
        headers: body === undefined ? headers : { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)), ...headers },
      },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (chunk: Buffer) => chunks.push(chunk))
        res.on('end', () => {
          let json: Record<string, unknown> | undefined
          try {
            json = JSON.parse(Buffer.concat(chunks).toString()) as Record<string, unknown>
          } catch {
            json = undefined
          }
          resolve({ status: res.statusCode ?? 0, json })
        })
      },
    )
    let timedOut = false
    req.on('error', (error: NodeJS.ErrnoException) => resolve({ status: 0, json: undefined, failure: timedOut ? 'timeout' : (error.code ?? error.message) }))
    req.on('timeout', () => {
      timedOut = true
      req.destroy()
    })
    if (body !== undefined) req.write(body)
    req.end()
  })
}

export async function funnel(options: FunnelOptions): Promise<FunnelResult> {
  const agent = new Agent({ keepAlive: true, maxSockets: options.buyers })
  const failures: Record<string, number> = {}
  const latenciesMs: number[] = []
  const fail = (step: string, answer: Answer): void => {
    const key = `${step} ${answer.status || answer.failure || 'no answer'}`
    failures[key] = (failures[key] ?? 0) + 1
  }
  const holdBody = JSON.stringify({ product_id: options.productId, qty: 1 })
  const startedMs = performance.now()
  const deadlineMs = startedMs + options.durationS * 1000
  let sequence = 0

  const buyer = async (): Promise<void> => {
    while (performance.now() < deadlineMs) {
      const beganMs = performance.now()
      const hold = await call(agent, options.baseUrl, 'POST', '/api/holds', holdBody)
      const holdId = hold.json?.hold_id
      if (hold.status !== 201 || typeof holdId !== 'string') {
        fail('hold', hold)
        await new Promise((resolve) => setTimeout(resolve, failureBackoffMs))
        continue
      }
      const order = await call(agent, options.baseUrl, 'POST', '/api/orders', JSON.stringify({ hold_id: holdId }))
      const orderId = order.json?.order_id
      if (order.status !== 201 || typeof orderId !== 'string') {
        fail('order', order)
        await new Promise((resolve) => setTimeout(resolve, failureBackoffMs))
        continue
      }
      sequence += 1
      const paymentId = `bench_pay_${sequence}_${orderId}`
      const body = JSON.stringify({ order_id: orderId, status: 'success', payment_id: paymentId, amount: order.json?.amount })
      const signature = signPayload(options.webhookSecret, Math.floor(Date.now() / 1000), body)
      const paid = await call(agent, options.baseUrl, 'POST', '/api/payments/webhook', body, { 'idempotency-key': paymentId, 'webhook-signature': signature })
      if (paid.status !== 200 || paid.json?.order_status !== 'paid') {
        fail('webhook', paid)
        continue
      }
      latenciesMs.push(performance.now() - beganMs)
    }
  }

  await Promise.all(Array.from({ length: options.buyers }, () => buyer()))
  const durationS = (performance.now() - startedMs) / 1000
  agent.destroy()
  latenciesMs.sort((a, b) => a - b)
  return {
    buyers: options.buyers,
    durationS,
    buyersPerS: latenciesMs.length / durationS,
    completed: latenciesMs.length,
    latencyP50Ms: percentile(latenciesMs, 0.5),
    latencyP99Ms: percentile(latenciesMs, 0.99),
    failures,
  }
}

export function percentile(sorted: number[], fraction: number): number {
  if (sorted.length === 0) return Number.NaN
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil(fraction * sorted.length) - 1))
  return sorted[index] ?? Number.NaN
}

// One JSON request on a fresh connection, for setup (admin API) and checks.
export async function jsonRequest(baseUrl: string, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Answer> {
  const agent = new Agent({ keepAlive: false })
  try {
    return await call(agent, baseUrl, method, path, body === undefined ? undefined : JSON.stringify(body), headers)
  } finally {
    agent.destroy()
  }
}

// The raw text of one GET on a fresh connection (with WORKERS=N, each fresh connection may reach
// another worker).
export function textRequest(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request(url, { agent: false, timeout: funnelRequestTimeoutMs }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (chunk: Buffer) => chunks.push(chunk))
      res.on('end', () => resolve(Buffer.concat(chunks).toString()))
    })
    req.on('error', reject)
    req.on('timeout', () => req.destroy(new Error(`timeout: ${url}`)))
    req.end()
  })
}

// Units a product has on hold. Around a keyed phase: every 2xx must be a new hold (fresh keys, no
// replays), so the units held grow by at least the number of 2xx answers (of qty 1 each); by a
// few more where requests in flight when the phase stopped were granted unanswered.
export async function reservedUnits(baseUrl: string, productId: number): Promise<number> {
  const answer = await jsonRequest(baseUrl, 'GET', `/api/products/${productId}`)
  const reserved = answer.json?.reserved
  if (answer.status !== 200 || typeof reserved !== 'number') throw new Error(`could not read product ${productId}: ${answer.status}`)
  return reserved
}

// Throws unless the keyed phase's 2xx answers were all new holds of one unit. Only while no
// hold of the product can have lapsed (`firstHoldAtMs` + the hold TTL, the run's own setting):
// a lapsed hold leaves `reserved` and would look like a replay. Returns whether it checked.
export function assertFreshHolds(label: string, result: LoadResult, reservedBefore: number, reservedAfter: number, lapseFree: { firstHoldAtMs: number; holdTtlS: number }): boolean {
  if (Date.now() >= lapseFree.firstHoldAtMs + lapseFree.holdTtlS * 1000) return false
  const answered = Object.entries(result.statusCounts)
    .filter(([status]) => status.startsWith('2'))
    .reduce((sum, [, count]) => sum + count, 0)
  if (reservedAfter - reservedBefore < answered) {
    throw new Error(`${label}: ${answered} answers 2xx but ${reservedAfter - reservedBefore} units newly held: some requests were not fresh holds`)
  }
  return true
}
