// The bench's printed result: a few lines per phase, then one markdown table ready for the
// README, with the machine and engine it was measured on.
import type { FunnelResult, LoadResult } from './load.js'
import type { BatchStats } from './metrics.js'
import type { CpuShare } from './server-process.js'
import type { WaitlistReport } from './waitlist.js'
import { formatWaitlist } from './waitlist-report.js'

export interface LevelReport {
  connections: number
  // Measured before and after the hold and read phases.
  health: LoadResult[]
  holds: LoadResult | undefined
  // Plain holds with a fresh Idempotency-Key each.
  keyed: LoadResult | undefined
  // Holds with a buyer token (a different buyer each request) on a product with per_buyer_limit.
  buyer: LoadResult | undefined
  // POST /bench/hold-ceiling: the hold route's parsing and validation of the same body and key,
  // without the database: what this server could answer if holds cost nothing behind the route.
  ceiling: LoadResult | undefined
  // The same holds on a second server with HOLD_BATCH_MAX=1: one transaction per hold, the
  // lock-per-request design that group commit is measured against.
  unbatched: LoadResult | undefined
  // POST /api/products/:id/waitlist {qty: 1} on a sold-out product: every join waits.
  joins: LoadResult | undefined
  reads: LoadResult | undefined
  funnel: FunnelResult | undefined
  batches: BatchStats | undefined
  // Its mean size must be 1.0: anything more means the reference was not one hold per transaction.
  unbatchedBatches: BatchStats | undefined
  cpu: Record<string, CpuShare>
}

export interface SelloutReport {
  stock: number
  connections: number
  durationS: number
  grantedAnswers: number
  refusedAnswers: number
  otherAnswers: number
  availableAfter: number
  // Units of the product in holds, pending and paid orders, as the rows record them.
  grantedInDatabase: number
  oversold: number
  auditOk: boolean
  auditViolations: string[]
}

export interface BenchReport {
  machine: { cpuModel: string; cpuCount: number; memoryGiB: number; os: string; node: string; loadAverage: number[] }
  engine: string
  engineVersion: string
  workers: number
  durationS: number
  perBuyerLimit: number
  // Distinct buyers (tokens) the buyer phase cycled through.
  buyers: number
  // Phase -> why it did not run (the service lacks what it measures).
  skipped: Record<string, string>
  levels: LevelReport[]
  waitlist: WaitlistReport | undefined
  // The audit after the run, when the waitlist phase ran.
  waitlistAuditOk: boolean | undefined
  sellout: SelloutReport | undefined
  // The server's warn-or-worse log lines over the whole run, by event (tx.retry, tx.busy, ...).
  serverLogEvents: Record<string, number>
  serverStderr: string
  // The same for the unbatched servers, summed over levels; stderr of the last one.
  unbatchedServerLogEvents: Record<string, number>
  unbatchedServerStderr: string
}

const whole = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 })

function rate(value: number | undefined): string {
  return value === undefined || !Number.isFinite(value) ? '–' : whole.format(value)
}

function ratio(numerator: number | undefined, denominator: number | undefined): string {
  if (numerator === undefined || denominator === undefined || !(denominator > 0)) return '–'
  return `${(numerator / denominator).toFixed(2)}×`
}

function ms(value: number | undefined): string {
  if (value === undefined || !Number.isFinite(value)) return '–'
  return value < 10 ? value.toFixed(1) : whole.format(value)
}

export function healthRate(level: LevelReport): number | undefined {
  if (level.health.length === 0) return undefined
  return level.health.reduce((sum, result) => sum + result.okPerS, 0) / level.health.length
}

function nonSuccess(result: LoadResult | undefined): string {
  if (!result) return ''
  const parts = Object.entries(result.statusCounts)
    .filter(([status]) => !status.startsWith('2'))
    .map(([status, count]) => `${status}×${count}`)
  if (result.errors) parts.push(`errors×${result.errors}`)
  return parts.length ? ` (${parts.join(', ')})` : ''
}

function cores(share: CpuShare | undefined): string {
  if (!share) return '–'
  return `${share.serverCores.toFixed(2)} / ${share.databaseCores.toFixed(2)} / ${share.benchCores.toFixed(2)} / ${share.otherCores.toFixed(2)}`
}

// Server CPU time per answer: steadier than rates on a shared machine, and holds/s can reach
// the health rate only if a hold costs the server about as much CPU as a health check.
// With `all`, the database server's and the load generator's CPU too: on a machine where all
// three share the cores, the rate of a request type is about the busy cores over this cost.
function cpuPerAnswer(share: CpuShare | undefined, result: LoadResult | undefined, all = false): string {
  if (!share || !result || !(result.answersPerS > 0)) return '–'
  const cores = all ? share.serverCores + share.databaseCores + share.benchCores : share.serverCores
  return whole.format((cores * 1e6) / result.answersPerS)
}

// Where a shape's CPU goes: what a shape adds to plain holds shows up in the service, the
// database server or the load generator (which builds a request anew for each fresh header).
function cpuSplit(share: CpuShare | undefined, result: LoadResult): string {
  if (!share || !(result.answersPerS > 0)) return '–'
  const perAnswer = (cores: number): string => whole.format((cores * 1e6) / result.answersPerS)
  return `${perAnswer(share.serverCores)} · ${perAnswer(share.databaseCores)} · ${perAnswer(share.benchCores)}`
}

// What the CPU measured during the holds phase allows, whatever the batching and waiting: with
// the server, the database and the load generator on the same cores, no rate above cores / CPU
// per hold can be had while each hold costs what it cost.
function cpuCeiling(level: LevelReport, cpuCount: number): { holdTotalUs: number; holdServerUs: number; holdsPerS: number } | undefined {
  const share = level.cpu.holds
  const answersPerS = level.holds?.answersPerS
  if (!share || !answersPerS || !(answersPerS > 0)) return undefined
  const holdServerUs = (share.serverCores * 1e6) / answersPerS
  const holdTotalUs = ((share.serverCores + share.databaseCores + share.benchCores) * 1e6) / answersPerS
  if (!(holdTotalUs > 0)) return undefined
  return { holdTotalUs, holdServerUs, holdsPerS: (cpuCount * 1e6) / holdTotalUs }
}

// One row per hold shape: its rate and latency, and where it stands between the plain holds
// (what a shape's extra work costs) and the ceiling (what the database work behind the route costs).
function holdShapes(report: BenchReport, level: LevelReport): string[] {
  const shapes: Array<[string, LoadResult | undefined, string | undefined, CpuShare | undefined]> = [
    ['plain holds (POST /api/holds)', level.holds, report.skipped.holds, level.cpu.holds],
    ['keyed: a fresh Idempotency-Key each', level.keyed, report.skipped.keyed, level.cpu.keyed],
    [
      `buyer: a buyer token each (${report.buyers ? `${whole.format(report.buyers)} buyers, ` : ''}per_buyer_limit ${report.perBuyerLimit})`,
      level.buyer,
      report.skipped.buyer,
      level.cpu.buyer,
    ],
    ['ceiling: hold parse + validate, no database (POST /bench/hold-ceiling)', level.ceiling, report.skipped.ceiling, level.cpu.ceiling],
  ]
  const measured = shapes.filter(([, result]) => result !== undefined)
  if (measured.length === 0) return []
  const rows = [
    `| hold shapes at ${level.connections} connections | 2xx/s | p50 / p99, ms | ÷ plain holds | ÷ ceiling | CPU per answer, µs: server · db · client |`,
    '|---|---:|---:|---:|---:|---:|',
    ...shapes
      .filter(([, result, reason]) => result !== undefined || reason !== undefined)
      .map(([label, result, reason, cpu]) =>
        result
          ? `| ${label} | ${rate(result.okPerS)}${nonSuccess(result)} | ${ms(result.latencyP50Ms)} / ${ms(result.latencyP99Ms)} | ${ratio(result.okPerS, level.holds?.okPerS)} | ${ratio(result.okPerS, level.ceiling?.okPerS)} | ${cpuSplit(cpu, result)} |`
          : `| ${label} | skipped | | | | |`,
      ),
    '',
  ]
  return rows
}

export function formatReport(report: BenchReport): string {
  const { machine, levels } = report
  const header = `| ${report.engineVersion}, WORKERS=${report.workers}, ${report.durationS} s per phase | ${levels.map((level) => `${level.connections} connections`).join(' | ')} |`
  const rule = `|---|${levels.map(() => '---:').join('|')}|`
  const row = (label: string, cell: (level: LevelReport) => string): string => `| ${label} | ${levels.map(cell).join(' | ')} |`
  const rows = [
    header,
    rule,
    row('GET /health, req/s (the ceiling)', (level) => rate(healthRate(level))),
    row('POST /api/holds, holds/s', (level) => rate(level.holds?.okPerS) + nonSuccess(level.holds)),
    row('holds / health', (level) => ratio(level.holds?.okPerS, healthRate(level))),
    row('holds p50 / p99 latency, ms', (level) => `${ms(level.holds?.latencyP50Ms)} / ${ms(level.holds?.latencyP99Ms)}`),
    row('hold batch size, mean (p90 ≤)', (level) => (level.batches ? `${level.batches.meanSize.toFixed(1)} (${level.batches.p90SizeAtMost})` : '–')),
    row('POST /api/holds unbatched (HOLD_BATCH_MAX=1), holds/s', (level) => rate(level.unbatched?.okPerS) + nonSuccess(level.unbatched)),
    row('unbatched p50 / p99 latency, ms', (level) => `${ms(level.unbatched?.latencyP50Ms)} / ${ms(level.unbatched?.latencyP99Ms)}`),
    row('group commit gain, × (holds / unbatched)', (level) => ratio(level.holds?.okPerS, level.unbatched?.okPerS)),
    row('POST /api/products/:id/waitlist (sold out), joins/s', (level) => rate(level.joins?.okPerS) + nonSuccess(level.joins)),
    row('joins / holds', (level) => ratio(level.joins?.okPerS, level.holds?.okPerS)),
    row('joins p50 / p99 latency, ms', (level) => `${ms(level.joins?.latencyP50Ms)} / ${ms(level.joins?.latencyP99Ms)}`),
    row('GET /api/products/:id, reads/s', (level) => rate(level.reads?.okPerS) + nonSuccess(level.reads)),
    row('reads / health', (level) => ratio(level.reads?.okPerS, healthRate(level))),
    row('reads p99 latency, ms', (level) => ms(level.reads?.latencyP99Ms)),
    row('funnel (hold → order → signed webhook), buyers/s', (level) => rate(level.funnel?.buyersPerS)),
    row('funnel p50 / p99 per buyer, ms', (level) => `${ms(level.funnel?.latencyP50Ms)} / ${ms(level.funnel?.latencyP99Ms)}`),
    row('server CPU per answer, µs: health / hold / read', (level) =>
      [cpuPerAnswer(level.cpu.health1, level.health[0]), cpuPerAnswer(level.cpu.holds, level.holds), cpuPerAnswer(level.cpu.reads, level.reads)].join(' / '),
    ),
    row('server + db + client CPU per answer, µs: health / hold / read', (level) =>
      [cpuPerAnswer(level.cpu.health1, level.health[0], true), cpuPerAnswer(level.cpu.holds, level.holds, true), cpuPerAnswer(level.cpu.reads, level.reads, true)].join(' / '),
    ),
    row('CPU cores during holds: server / db / bench / other', (level) => cores(level.cpu.holds)),
  ]
  const lines: string[] = ['', '## Benchmark', '', ...rows, '', ...levels.flatMap((level) => holdShapes(report, level))]
  if (report.waitlist) lines.push(...formatWaitlist(report.waitlist, report.waitlistAuditOk))
  for (const [phase, reason] of Object.entries(report.skipped)) lines.push(`Phase ${phase} skipped: ${reason}.`, '')
  const { sellout } = report
  const last = levels[levels.length - 1]
  if (last) {
    const health = healthRate(last)
    const verdict = (ok: boolean | undefined): string => (ok === undefined ? 'not measured' : ok ? 'met' : 'NOT met')
    const holdsRatio = last.holds && health ? last.holds.okPerS / health : undefined
    const readsRatio = last.reads && health ? last.reads.okPerS / health : undefined
    lines.push(
      `Targets (issue 4) at ${last.connections} connections: holds/s ≥ 0.9 × health: ${verdict(holdsRatio === undefined ? undefined : holdsRatio >= 0.9)}` +
        ` (${holdsRatio?.toFixed(2) ?? '–'}); holds p99 ≤ 50 ms: ${verdict(last.holds ? last.holds.latencyP99Ms <= 50 : undefined)} (${ms(last.holds?.latencyP99Ms)} ms);` +
        ` reads/s ≥ 0.9 × health: ${verdict(readsRatio === undefined ? undefined : readsRatio >= 0.9)} (${readsRatio?.toFixed(2) ?? '–'});` +
        ` 0 oversold: ${verdict(sellout ? sellout.oversold === 0 : undefined)}.`,
      '',
    )
    const ceiling = cpuCeiling(last, machine.cpuCount)
    if (ceiling && health) {
      lines.push(
        `CPU ceiling at ${last.connections} connections: a hold cost ${whole.format(ceiling.holdTotalUs)} µs of CPU (server ${whole.format(ceiling.holdServerUs)}, ` +
          `the rest database and client), so ${machine.cpuCount} fully busy cores allow at most ${rate(ceiling.holdsPerS)} holds/s: ` +
          `holds / health ≤ ${(ceiling.holdsPerS / health).toFixed(2)} at this cost per hold, however the waiting is arranged.`,
        '',
      )
    }
    if (last.unbatched) {
      lines.push(
        `Group commit at ${last.connections} connections: ${rate(last.holds?.okPerS)} holds/s batched, ${rate(last.unbatched.okPerS)} with one transaction per hold ` +
          `(a second server on the same database, HOLD_BATCH_MAX=1, run right after): ${ratio(last.holds?.okPerS, last.unbatched.okPerS)}.`,
        '',
      )
    }
  }
  if (sellout) {
    lines.push(
      `Sell-out: stock ${whole.format(sellout.stock)}, ${sellout.connections} connections, ${sellout.durationS.toFixed(1)} s: ` +
        `${whole.format(sellout.grantedAnswers)} holds answered 201, ${whole.format(sellout.refusedAnswers)} refused 409` +
        `${sellout.otherAnswers ? `, ${whole.format(sellout.otherAnswers)} other` : ''}; ` +
        `units held in the database ${whole.format(sellout.grantedInDatabase)}, available after ${sellout.availableAfter}; ` +
        `audit ${sellout.auditOk ? 'ok' : `FAILED (${sellout.auditViolations.join('; ')})`}.`,
      '',
      `oversold: ${sellout.oversold}`,
      '',
    )
  }
  lines.push(
    `Machine: ${machine.cpuCount} × ${machine.cpuModel}, ${machine.memoryGiB.toFixed(1)} GiB RAM, ${machine.os}, Node ${machine.node}; ` +
      `${report.engineVersion} (${report.engine}) on the same host; load average at the end ${machine.loadAverage.map((value) => value.toFixed(2)).join(' ')}.`,
    'Client: autocannon in one process on the same machine, 127.0.0.1, keep-alive, no pipelining; each figure is from one run, ' +
      'and the ratios compare phases of that run (the machine is shared, so absolute rates move between runs). ' +
      'CPU cores: busy cores averaged over the phase, from /proc ("db" is every database server process on the host, ' +
      '"other" everything else on the machine).',
  )
  const logged = Object.entries(report.serverLogEvents)
  lines.push('', `Server warnings over the run: ${logged.length ? logged.map(([event, count]) => `${event} ×${count}`).join(', ') : 'none'}.`)
  const loggedUnbatched = Object.entries(report.unbatchedServerLogEvents)
  if (loggedUnbatched.length) lines.push(`Unbatched server warnings: ${loggedUnbatched.map(([event, count]) => `${event} ×${count}`).join(', ')}.`)
  const failures = levels.flatMap((level) => Object.entries(level.funnel?.failures ?? {}).map(([key, count]) => `${level.connections} buyers: ${key} ×${count}`))
  if (failures.length) lines.push(`Funnel steps that failed: ${failures.join(', ')}.`)
  if (report.serverStderr) lines.push('', 'Server stderr (tail):', '```', report.serverStderr, '```')
  if (report.unbatchedServerStderr) lines.push('', 'Unbatched server stderr (tail):', '```', report.unbatchedServerStderr, '```')
  return lines.join('\n')
}
