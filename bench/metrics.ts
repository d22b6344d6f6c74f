// Reads the server's own counters from GET /metrics: the hold batch size histogram (how many
// requests one transaction served) and transaction retries. With WORKERS=N every worker keeps
// its own registry and each fresh connection may reach any of them, so the bench scrapes several
// times while no load runs and sums the distinct answers (a worker's series do not change
// between scrapes then, and two workers with identical non-zero histograms are not plausible).
import { textRequest } from './load.js'

export type Series = Map<string, number>

const keptPrefixes = ['flash_sale_hold_batch_size', 'flash_sale_tx_retries_total', 'flash_sale_tx_busy_total']
// Scrapes per worker: cluster hands connections round-robin, so a few each reach them all.
const scrapesPerWorker = 4

function keptLines(text: string): string[] {
  return text
    .split('\n')
    .filter((line) => keptPrefixes.some((prefix) => line.startsWith(prefix)))
    .sort()
}

// Rounds of scrapes until two in a row see the same answers: autocannon stops at its deadline,
// but the server still finishes the batches already queued, so the first scrapes after a phase
// may see a histogram still moving (and would count one worker twice).
const scrapeRoundsMax = 10
const scrapeRoundGapMs = 200

export async function scrapeServer(baseUrl: string, workers: number): Promise<Series> {
  let previous = ''
  let distinct = new Map<string, string[]>()
  for (let round = 1; round <= scrapeRoundsMax; round++) {
    distinct = new Map()
    for (let index = 0; index < Math.max(1, workers) * scrapesPerWorker; index++) {
      const lines = keptLines(await textRequest(`${baseUrl}/metrics`))
      distinct.set(lines.join('\n'), lines)
    }
    const signature = [...distinct.keys()].sort().join('\n--\n')
    if (signature === previous && distinct.size <= Math.max(1, workers)) break
    previous = signature
    await new Promise((resolve) => setTimeout(resolve, scrapeRoundGapMs))
  }
  const total: Series = new Map()
  for (const lines of distinct.values()) {
    for (const line of lines) {
      const space = line.lastIndexOf(' ')
      const name = line.slice(0, space)
      const value = Number(line.slice(space + 1))
      if (Number.isFinite(value)) total.set(name, (total.get(name) ?? 0) + value)
    }
  }
  return total
}

export interface BatchStats {
  // Transactions that served hold requests.
  batches: number
  requests: number
  meanSize: number
  // Upper bounds of the histogram buckets holding the median and the 90th percentile batch.
  p50SizeAtMost: number
  p90SizeAtMost: number
  txRetries: number
  txBusy: number
}

export function batchStats(before: Series, after: Series): BatchStats {
  const delta = (name: string): number => (after.get(name) ?? 0) - (before.get(name) ?? 0)
  const batches = delta('flash_sale_hold_batch_size_count')
  const requests = delta('flash_sale_hold_batch_size_sum')
  const buckets: Array<{ le: number; count: number }> = []
  for (const name of after.keys()) {
    const match = /^flash_sale_hold_batch_size_bucket\{le="([^"]+)"\}$/.exec(name)
    if (match) buckets.push({ le: match[1] === '+Inf' ? Number.POSITIVE_INFINITY : Number(match[1]), count: delta(name) })
  }
  buckets.sort((a, b) => a.le - b.le)
  const bucketAt = (fraction: number): number => buckets.find((bucket) => bucket.count >= fraction * batches)?.le ?? Number.NaN
  const sumOf = (prefix: string): number => [...after.keys()].filter((name) => name.startsWith(prefix)).reduce((sum, name) => sum + delta(name), 0)
  return {
    batches,
    requests,
    meanSize: batches > 0 ? requests / batches : Number.NaN,
    p50SizeAtMost: batches > 0 ? bucketAt(0.5) : Number.NaN,
    p90SizeAtMost: batches > 0 ? bucketAt(0.9) : Number.NaN,
    txRetries: sumOf('flash_sale_tx_retries_total'),
    txBusy: sumOf('flash_sale_tx_busy_total'),
  }
}
