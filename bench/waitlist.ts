// The `waitlist` phase (issue 10): joins/s on a sold-out product next to holds/s, then units
// freed in bursts into a line of 10,000+ tickets: admissions per second and the time from a unit
// freed to its ticket admitted, for releases (DELETE /api/holds/:id) and for expiry (the sweeper).
//
// Which ticket a freed unit admits is known without asking the server: every ticket is qty 1
// and the line is first come, first served, so the k-th unit freed goes to the k-th ticket in
// line. The bench joins the tickets that will be admitted itself (recording their positions)
// before anyone else joins, and pairs freed units with tickets by rank.
import { Agent } from 'node:http'
import { call, cannon, percentile, textRequest, type Answer, type LoadResult } from './load.js'
import { sleep, startServer } from './server-process.js'

// The line the admissions are measured against, as the issue asks.
export const waitingTicketsMin = 10_000
// Units (one hold of qty 1 each) freed by releases, and again by expiry.
export const waitlistUnits = 2_000
// DELETEs sent at once in a release burst.
const releaseBurstSize = 100
// Requests in flight when the bench takes holds or joins tickets itself.
const setupConcurrency = 100
// A GET after a DELETE that does not show the ticket admitted is retried this often, this far apart.
const admittedPollMax = 100
const admittedPollGapMs = 10
// The expiry server's HOLD_TTL_SECONDS is sized so the line is built before the first hold
// lapses (twice the time joining it took at the measured rate, plus slack), within these bounds.
const expiryTtlSMin = 10
const expiryTtlSMax = 60
const expiryTtlSlackS = 5
// Slack past the last hold's expiry for the sweepers to admit everything.
const expirySweepsWaited = 10
const expirySlackMs = 10_000
// How often the waiting-ticket gauge is read while the sweepers admit.
const expiryPollGapMs = 100
// The top-up that brings the line to waitingTicketsMin gives up after this long.
const topUpMaxS = 60

export interface WaitlistContext {
  baseUrl: string
  serverEnv: Record<string, string>
  databaseUrl: string
  workers: number
  createProduct: (name: string, stock: number) => Promise<number>
  log: (line: string) => void
}

export interface ReleaseReport {
  units: number
  burstSize: number
  waitingBefore: number
  admitted: number
  wallS: number
  admissionsPerS: number
  deleteP50Ms: number
  deleteP99Ms: number
  // DELETE sent -> a GET of the ticket that unit went to shows `admitted`.
  admittedP50Ms: number
  admittedP99Ms: number
  admittedMaxMs: number
  // Tickets whose first GET after the DELETE's answer did not show them admitted yet.
  lateLooks: number
  notAdmitted: number
  failures: Record<string, number>
  // flash_sale_events_total{event="waitlist.admitted"} over the releases, all workers.
  admittedEvents: number
}

export interface ExpiryReport {
  units: number
  holdTtlS: number
  sweepIntervalMs: number
  waitingAtExpiry: number
  // False if a hold lapsed before the line was built: the figures then include joins.
  lineReadyBeforeExpiry: boolean
  admitted: number
  // First freed hold's expires_at -> last admission, as the server recorded them.
  wallS: number
  admissionsPerS: number
  // Distinct admission instants (one per transaction that admitted).
  admittingTransactions: number
  // Hold expires_at -> admission (the created_at of the hold its ticket became), paired by rank.
  latencyP50Ms: number
  latencyP99Ms: number
  latencyMaxMs: number
  notAdmitted: number
  failures: Record<string, number>
}

export interface WaitlistReport {
  // Joins at a level of 256 connections when BENCH_CONNECTIONS has none that high.
  extraJoins: LoadResult | undefined
  waitingAfterJoins: number
  topUpJoins: number
  release: ReleaseReport | undefined
  expiry: ExpiryReport | undefined
}

interface TakenHold {
  id: string
  expiresAtMs: number
}

export interface Line {
  productId: number
  holds: TakenHold[]
  // Ticket ids in line order: the first tickets of the line, one per held unit.
  heads: string[]
}

export function joinBody(): string {
  return JSON.stringify({ qty: 1 })
}

export function joinUrl(baseUrl: string, productId: number): string {
  return `${baseUrl}/api/products/${productId}/waitlist`
}

async function eachConcurrently<T>(count: number, concurrency: number, work: (index: number) => Promise<T>): Promise<T[]> {
  const results = new Array<T>(count)
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < count) {
      const index = next++
      results[index] = await work(index)
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker))
  return results
}

function summary(answer: Answer): string {
  const code = answer.json?.code
  return `${answer.status || answer.failure || 'no answer'}${typeof code === 'string' ? ` ${code}` : ''}`
}

async function takeHolds(agent: Agent, baseUrl: string, productId: number, units: number): Promise<TakenHold[]> {
  const body = JSON.stringify({ product_id: productId, qty: 1 })
  return eachConcurrently(units, setupConcurrency, async () => {
    const answer = await call(agent, baseUrl, 'POST', '/api/holds', body)
    if (answer.status !== 201 || typeof answer.json?.hold_id !== 'string' || typeof answer.json.expires_at !== 'string') throw new Error(`waitlist: a hold answered ${summary(answer)}`)
    return { id: answer.json.hold_id, expiresAtMs: Date.parse(answer.json.expires_at) }
  })
}

async function joinHeads(agent: Agent, baseUrl: string, productId: number, count: number): Promise<string[]> {
  const body = joinBody()
  const joined = await eachConcurrently(count, setupConcurrency, async () => {
    const answer = await call(agent, baseUrl, 'POST', `/api/products/${productId}/waitlist`, body)
    const { ticket_id: ticketId, status, position } = answer.json ?? {}
    if (answer.status !== 201 || typeof ticketId !== 'string' || status !== 'waiting' || typeof position !== 'number') {
      throw new Error(`waitlist: a join answered ${summary(answer)} ${JSON.stringify(answer.json)}, not 201 waiting`)
    }
    return { ticketId, position }
  })
  joined.sort((a, b) => a.position - b.position)
  // The heads must be exactly positions 1..count: the rank pairing relies on it.
  joined.forEach((ticket, index) => {
    if (ticket.position !== index + 1) throw new Error(`waitlist: ticket ${ticket.ticketId} has position ${ticket.position}, expected ${index + 1}`)
  })
  return joined.map((ticket) => ticket.ticketId)
}

// A sold-out product: `units` units, all held (qty 1 each), and the first `units` tickets of its
// line joined by the bench. Its holds outlive the run (the server's HOLD_TTL_SECONDS).
export async function prepareLine(context: WaitlistContext, name: string, holdsBaseUrl = context.baseUrl): Promise<Line> {
  const agent = new Agent({ keepAlive: true, maxSockets: setupConcurrency })
  try {
    const productId = await context.createProduct(name, waitlistUnits)
    const holds = await takeHolds(agent, holdsBaseUrl, productId, waitlistUnits)
    const heads = await joinHeads(agent, context.baseUrl, productId, waitlistUnits)
    return { productId, holds, heads }
  } finally {
    agent.destroy()
  }
}

// The waiting tickets of a product, from the database-backed gauge (the same on every worker).
export async function waitingTickets(baseUrl: string, productId: number): Promise<number> {
  const text = await textRequest(`${baseUrl}/metrics`)
  const match = new RegExp(`^flash_sale_product_waitlist_tickets\\{product_id="${productId}"\\} (\\d+)$`, 'm').exec(text)
  if (!match) throw new Error(`waitlist: /metrics has no flash_sale_product_waitlist_tickets for product ${productId}`)
  return Number(match[1])
}

// Every worker keeps its own counters and a fresh connection may reach any of them: scrapes
// until each of `workers` distinct answers has been seen twice, and sums them. Called while
// nothing admits, so a worker's answer does not change between scrapes.
async function admittedEvents(baseUrl: string, workers: number): Promise<number> {
  const seen = new Map<string, number>()
  const pattern = /^flash_sale_events_total\{event="waitlist\.admitted"\} (\d+)$/m
  for (let scrape = 0; scrape < workers * 8; scrape++) {
    const text = await textRequest(`${baseUrl}/metrics`)
    // A worker that admitted nothing has no series: its answer is told apart by its other lines.
    const key = text
      .split('\n')
      .filter((line) => line.startsWith('flash_sale_events_total'))
      .join('\n')
    seen.set(key, Number(pattern.exec(text)?.[1] ?? 0))
  }
  return [...seen.values()].reduce((sum, value) => sum + value, 0)
}

// Brings the line to waitingTicketsMin with one burst of joins, bounded in time.
export async function topUp(baseUrl: string, productId: number, connections: number): Promise<number> {
  const missing = waitingTicketsMin - (await waitingTickets(baseUrl, productId))
  if (missing <= 0) return 0
  const result = await cannon({
    label: 'waitlist top-up joins',
    url: joinUrl(baseUrl, productId),
    connections,
    durationS: topUpMaxS,
    method: 'POST',
    body: joinBody(),
    stopWhen: (seen) => (seen['201'] ?? 0) >= missing,
  })
  return result.statusCounts['201'] ?? 0
}

// Frees the line's held units in bursts of concurrent DELETEs. After each DELETE's answer, the
// k-th answer of the burst, the bench GETs the k-th ticket of the burst's share of the line: k
// committed releases have admitted at least the first k of those tickets, so it must show
// `admitted` (admission runs in the DELETE's transaction) unless the service is wrong.
export async function releaseBursts(context: WaitlistContext, line: Line): Promise<ReleaseReport> {
  const { baseUrl } = context
  const agent = new Agent({ keepAlive: true, maxSockets: releaseBurstSize })
  const failures: Record<string, number> = {}
  const fail = (key: string): void => void (failures[key] = (failures[key] ?? 0) + 1)
  const deleteMs: number[] = []
  const admittedMs: number[] = []
  let lateLooks = 0
  let notAdmitted = 0
  const eventsBefore = await admittedEvents(baseUrl, context.workers)
  const waitingBefore = await waitingTickets(baseUrl, line.productId)
  const startedMs = performance.now()
  try {
    for (let from = 0; from < line.holds.length; from += releaseBurstSize) {
      const burst = line.holds.slice(from, from + releaseBurstSize)
      const heads = line.heads.slice(from, from + releaseBurstSize)
      let answered = 0
      await Promise.all(
        burst.map(async (hold) => {
          const sentMs = performance.now()
          const released = await call(agent, baseUrl, 'DELETE', `/api/holds/${hold.id}`, undefined)
          deleteMs.push(performance.now() - sentMs)
          if (released.status !== 200) return fail(`DELETE ${summary(released)}`)
          const ticketId = heads[answered++]!
          for (let attempt = 0; attempt <= admittedPollMax; attempt++) {
            const ticket = await call(agent, baseUrl, 'GET', `/api/waitlist/${ticketId}`, undefined)
            if (ticket.json?.status === 'admitted') {
              admittedMs.push(performance.now() - sentMs)
              if (attempt > 0) lateLooks += 1
              return
            }
            if (ticket.status !== 200) fail(`GET ticket ${summary(ticket)}`)
            await sleep(admittedPollGapMs)
          }
          notAdmitted += 1
        }),
      )
    }
  } finally {
    agent.destroy()
  }
  const wallS = (performance.now() - startedMs) / 1000
  const admitted = waitingBefore - (await waitingTickets(baseUrl, line.productId))
  deleteMs.sort((a, b) => a - b)
  admittedMs.sort((a, b) => a - b)
  return {
    units: line.holds.length,
    burstSize: releaseBurstSize,
    waitingBefore,
    admitted,
    wallS,
    admissionsPerS: admitted / wallS,
    deleteP50Ms: percentile(deleteMs, 0.5),
    deleteP99Ms: percentile(deleteMs, 0.99),
    admittedP50Ms: percentile(admittedMs, 0.5),
    admittedP99Ms: percentile(admittedMs, 0.99),
    admittedMaxMs: admittedMs[admittedMs.length - 1] ?? Number.NaN,
    lateLooks,
    notAdmitted,
    failures,
    admittedEvents: (await admittedEvents(baseUrl, context.workers)) - eventsBefore,
  }
}

// Units freed by expiry: a second server (killAllServers covers it if the bench dies) on the same database with a short HOLD_TTL_SECONDS
// takes the holds; the main server (long TTL) joins the line, so the holds the tickets become
// do not lapse in turn. Both servers' sweepers expire the lapsed holds and admit the line.
export async function expiryWaves(context: WaitlistContext, joinsPerS: number): Promise<ExpiryReport> {
  const { baseUrl } = context
  const sweepIntervalMs = Number(context.serverEnv.SWEEP_INTERVAL_MS ?? process.env.SWEEP_INTERVAL_MS ?? 1000)
  const joinS = waitingTicketsMin / Math.max(joinsPerS, 1)
  const holdTtlS = Math.min(expiryTtlSMax, Math.max(expiryTtlSMin, Math.ceil(2 * joinS) + expiryTtlSlackS))
  const server = await startServer({ databaseUrl: context.databaseUrl, workers: context.workers, nodeFlags: [], env: { ...context.serverEnv, HOLD_TTL_SECONDS: String(holdTtlS) } })
  const failures: Record<string, number> = {}
  const fail = (key: string): void => void (failures[key] = (failures[key] ?? 0) + 1)
  try {
    const line = await prepareLine(context, 'bench waitlist expiry product', server.baseUrl)
    const firstExpiryMs = Math.min(...line.holds.map((hold) => hold.expiresAtMs))
    const lastExpiryMs = Math.max(...line.holds.map((hold) => hold.expiresAtMs))
    const missing = waitingTicketsMin - (await waitingTickets(baseUrl, line.productId))
    const timeLeftS = Math.floor((firstExpiryMs - Date.now()) / 1000) - 1
    if (missing > 0 && timeLeftS >= 1) {
      await cannon({
        label: 'waitlist expiry line joins',
        url: joinUrl(baseUrl, line.productId),
        connections: setupConcurrency,
        durationS: timeLeftS,
        method: 'POST',
        body: joinBody(),
        stopWhen: (seen) => (seen['201'] ?? 0) >= missing,
      })
    }
    const waitingAtExpiry = await waitingTickets(baseUrl, line.productId)
    const lineReadyBeforeExpiry = Date.now() < firstExpiryMs
    const deadlineMs = lastExpiryMs + expirySweepsWaited * sweepIntervalMs + expirySlackMs
    let waiting = waitingAtExpiry
    while (waitingAtExpiry - waiting < line.holds.length && Date.now() < deadlineMs) {
      await sleep(expiryPollGapMs)
      waiting = await waitingTickets(baseUrl, line.productId)
    }
    const agent = new Agent({ keepAlive: true, maxSockets: setupConcurrency })
    let admittedAtMs: Array<number | undefined>
    try {
      admittedAtMs = await eachConcurrently(line.heads.length, setupConcurrency, async (index) => {
        const ticket = await call(agent, baseUrl, 'GET', `/api/waitlist/${line.heads[index]}`, undefined)
        if (ticket.json?.status !== 'admitted' || typeof ticket.json.hold_id !== 'string') {
          fail(`ticket ${ticket.status === 200 ? String(ticket.json?.status) : summary(ticket)}`)
          return undefined
        }
        const hold = await call(agent, baseUrl, 'GET', `/api/holds/${ticket.json.hold_id}`, undefined)
        if (hold.status !== 200 || typeof hold.json?.created_at !== 'string') {
          fail(`GET hold ${summary(hold)}`)
          return undefined
        }
        return Date.parse(hold.json.created_at)
      })
    } finally {
      agent.destroy()
    }
    const admissions = admittedAtMs.filter((at): at is number => at !== undefined).sort((a, b) => a - b)
    const expiries = line.holds.map((hold) => hold.expiresAtMs).sort((a, b) => a - b)
    const latencies = admissions.map((at, rank) => at - expiries[rank]!).sort((a, b) => a - b)
    const lastAdmissionMs = admissions[admissions.length - 1] ?? Number.NaN
    const wallS = (lastAdmissionMs - firstExpiryMs) / 1000
    return {
      units: line.holds.length,
      holdTtlS,
      sweepIntervalMs,
      waitingAtExpiry,
      lineReadyBeforeExpiry,
      admitted: admissions.length,
      wallS,
      admissionsPerS: admissions.length / wallS,
      admittingTransactions: new Set(admissions).size,
      latencyP50Ms: percentile(latencies, 0.5),
      latencyP99Ms: percentile(latencies, 0.99),
      latencyMaxMs: latencies[latencies.length - 1] ?? Number.NaN,
      notAdmitted: line.heads.length - admissions.length,
      failures,
    }
  } finally {
    const stopped = await server.stop()
    if (stopped.forced) context.log('bench: the waitlist expiry server did not stop within its drain time and was killed')
  }
}
