// What `flash-sale race` shows and concludes: the progress bar while it runs, the summary of what
// the server answered, and the verdict (oversold or not). The requests themselves are made in
// race.ts; nothing here touches the network, so the judging is plain functions of the tally.
const progressRedrawMs = 100

export interface RaceIo {
  out: (line: string) => void
  err: (line: string) => void
  // Progress goes to stderr; a terminal gets a bar redrawn in place, anything else a few lines.
  progressIsTty: boolean
  writeProgress: (text: string) => void
}

export interface Counts {
  stock: number
  available: number
  reserved: number
  sold: number
}

// One granted hold, with the server's own instants: units count as taken from createdAtMs until
// expiresAtMs, or for good once paid. Server times only, so client clock skew cannot matter.
export interface Grant {
  qty: number
  createdAtMs: number
  untilMs: number
}

export interface Tally {
  attempted: number
  granted: Grant[]
  grantedIds: Set<string>
  duplicateIds: number
  refusals: Map<string, number>
  holdLatenciesMs: number[]
  orders: number
  orderRefusals: Map<string, number>
  paid: number
  paidUnits: number
  paymentRefusals: Map<string, number>
  checkoutLatenciesMs: number[]
}

export function emptyTally(): Tally {
  return {
    attempted: 0,
    granted: [],
    grantedIds: new Set(),
    duplicateIds: 0,
    refusals: new Map(),
    holdLatenciesMs: [],
    orders: 0,
    orderRefusals: new Map(),
    paid: 0,
    paidUnits: 0,
    paymentRefusals: new Map(),
    checkoutLatenciesMs: [],
  }
}

export interface RunSummary {
  buyers: number
  checkout: boolean
  maxDurationMs: number
  elapsedS: number
  stoppedAtDeadline: boolean
}

export function reportTally(tally: Tally, run: RunSummary, out: (line: string) => void): void {
  const grantedUnits = sum(tally.granted.map((grant) => grant.qty))
  out(
    `holds: ${tally.granted.length} granted (${grantedUnits} units), ${tally.attempted - tally.granted.length} refused or failed, in ${run.elapsedS.toFixed(2)} s (${(tally.attempted / Math.max(run.elapsedS, 0.001)).toFixed(0)} requests/s)`,
  )
  if (run.stoppedAtDeadline) out(`stopped at the ${run.maxDurationMs / 1000} s limit: ${run.buyers - tally.attempted} buyers not tried`)
  for (const [code, count] of sortedEntries(tally.refusals)) out(`  refused ${code}: ${count}`)
  out(`hold latency ms: ${percentiles(tally.holdLatenciesMs)}`)
  if (run.checkout) {
    out(`checkout: ${tally.orders} orders, ${tally.paid} paid (${tally.paidUnits} units)`)
    for (const [code, count] of sortedEntries(tally.orderRefusals)) out(`  order refused ${code}: ${count}`)
    for (const [code, count] of sortedEntries(tally.paymentRefusals)) out(`  payment not paid ${code}: ${count}`)
    out(`checkout latency ms (order + webhook): ${percentiles(tally.checkoutLatenciesMs)}`)
  }
}

// Units that may be taken at once during the race: sold units never come back, reserved ones may lapse.
export function unitsLimitOf(before: Counts): number {
  return before.stock - before.sold
}

// Every way the server's answers break the stock it had; `after` is undefined when it could not be read.
export function oversellFailures(before: Counts, after: Counts | undefined, tally: Tally): string[] {
  const unitsLimit = unitsLimitOf(before)
  const failures: string[] = []
  if (after) {
    if (after.available < 0 || after.reserved < 0 || after.sold < 0 || after.reserved + after.sold > after.stock)
      failures.push(`the product's counts break stock - reserved - sold >= 0 (${describeCounts(after)})`)
    if (after.sold - before.sold > unitsLimit) failures.push(`${after.sold - before.sold} units sold during the race, only ${unitsLimit} could be`)
  }
  const peakUnits = peakLiveUnits(tally.granted)
  if (peakUnits > unitsLimit) failures.push(`${peakUnits} units were held at once, only ${unitsLimit} could be (stock ${before.stock} - sold ${before.sold})`)
  if (tally.paidUnits > unitsLimit) failures.push(`${tally.paidUnits} units were paid, only ${unitsLimit} could be`)
  if (tally.duplicateIds > 0) failures.push(`${tally.duplicateIds} hold ids were granted to two buyers`)
  return failures
}

// Prints a 200 answer of GET /api/admin/audit; returns the failure it means, if any.
export function auditFailure(body: any, out: (line: string) => void): string | undefined {
  const violations: unknown[] = Array.isArray(body?.violations) ? body.violations : []
  out(`audit: ${body?.ok === true ? 'ok' : 'FAILED'}, ${Number(body?.checked_products ?? 0)} products checked, ${violations.length} violations`)
  for (const violation of violations.slice(0, 20)) out(`  ${JSON.stringify(violation)}`)
  return body?.ok === true ? undefined : 'the audit reports violations'
}

// Prints the verdict; returns the exit status.
// The failures that say a check could not run, not that it found something.
export const uncheckedPrefix = 'could not check: '

export function verdict(failures: readonly string[], before: Counts, tally: Tally, checkout: boolean, out: (line: string) => void): number {
  if (failures.length > 0) {
    // A check that could not run (the audit refused a wrong --admin-token, say) is not evidence
    // of overselling: the verdict says which it is (exit 1 either way, as documented).
    const unchecked = failures.every((failure) => failure.startsWith(uncheckedPrefix))
    out(unchecked ? 'verdict: could not check (see below)' : 'verdict: OVERSOLD or inconsistent')
    for (const failure of failures) out(`  ${failure}`)
    return 1
  }
  out(`verdict: ok (at most ${peakLiveUnits(tally.granted)} of ${unitsLimitOf(before)} units held at once${checkout ? `, ${tally.paidUnits} paid` : ''})`)
  return 0
}

// The most units the server claimed were ours at one instant. At equal instants an end is
// counted before a start: a hold whose expiry is the next one's creation never overlaps it.
export function peakLiveUnits(grants: readonly Grant[]): number {
  const edges: Array<[atMs: number, delta: number]> = []
  for (const grant of grants) {
    edges.push([grant.createdAtMs, grant.qty])
    if (Number.isFinite(grant.untilMs)) edges.push([grant.untilMs, -grant.qty])
  }
  edges.sort((a, b) => a[0] - b[0] || a[1] - b[1])
  let live = 0
  let peak = 0
  for (const [, delta] of edges) {
    live += delta
    peak = Math.max(peak, live)
  }
  return peak
}

export function describeCounts(counts: Counts): string {
  return `stock ${counts.stock}, available ${counts.available}, reserved ${counts.reserved}, sold ${counts.sold}`
}

export function increment(counts: Map<string, number>, key: string): void {
  counts.set(key, (counts.get(key) ?? 0) + 1)
}

function sortedEntries(counts: Map<string, number>): Array<[string, number]> {
  return [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
}

function sum(values: readonly number[]): number {
  return values.reduce((total, value) => total + value, 0)
}

// Nearest-rank percentiles.
export function percentiles(samplesMs: readonly number[]): string {
  if (samplesMs.length === 0) return 'no samples'
  const sorted = [...samplesMs].sort((a, b) => a - b)
  const at = (fraction: number): string => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(fraction * sorted.length) - 1))]!.toFixed(1)
  return `p50 ${at(0.5)}, p90 ${at(0.9)}, p99 ${at(0.99)}, max ${sorted[sorted.length - 1]!.toFixed(1)}`
}

export class Progress {
  private lastDrawMs = 0
  private lastQuarter = 0
  private readonly barWidth = 30

  constructor(
    private readonly io: RaceIo,
    private readonly total: number,
  ) {}

  update(done: number, granted: number): void {
    if (this.io.progressIsTty) {
      const nowMs = Date.now()
      if (nowMs - this.lastDrawMs < progressRedrawMs) return
      this.lastDrawMs = nowMs
      this.io.writeProgress(`\r${this.line(done, granted)}`)
      return
    }
    // Not a terminal (a log, a CI job): one line per quarter instead of a redrawn bar.
    const quarter = Math.floor((4 * done) / this.total)
    if (quarter > this.lastQuarter) {
      this.lastQuarter = quarter
      this.io.writeProgress(`${this.line(done, granted)}\n`)
    }
  }

  finish(done: number, granted: number): void {
    if (this.io.progressIsTty) this.io.writeProgress(`\r${this.line(done, granted)}\n`)
    else if (this.lastQuarter < 4) this.io.writeProgress(`${this.line(done, granted)}\n`)
  }

  private line(done: number, granted: number): string {
    const filled = Math.round((this.barWidth * done) / this.total)
    return `[${'#'.repeat(filled)}${'.'.repeat(this.barWidth - filled)}] ${done}/${this.total} buyers, ${granted} holds granted`
  }
}
