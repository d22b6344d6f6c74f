// The waitlist phase's lines in the printed report: the join rows sit in the main table (next to
// the holds they are compared with); admissions get a table of their own.
import type { WaitlistReport } from './waitlist.js'

const whole = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 })

function ms(value: number): string {
  if (!Number.isFinite(value)) return '–'
  return value < 10 ? value.toFixed(1) : whole.format(value)
}

function problems(failures: Record<string, number>, extra: Array<[string, number]>): string {
  const parts = [...Object.entries(failures), ...extra.filter(([, count]) => count > 0)].map(([key, count]) => `${key} ×${count}`)
  return parts.length ? parts.join(', ') : 'none'
}

export function formatWaitlist(waitlist: WaitlistReport, auditOk: boolean | undefined): string[] {
  const { release, expiry, extraJoins } = waitlist
  const lines: string[] = []
  if (extraJoins) {
    lines.push(
      `Joins at ${extraJoins.connections} connections (no BENCH_CONNECTIONS level that high): ${whole.format(extraJoins.okPerS)} joins/s, p50 ${ms(extraJoins.latencyP50Ms)} ms, p99 ${ms(extraJoins.latencyP99Ms)} ms.`,
      '',
    )
  }
  lines.push(
    '| waitlist admissions (tickets of qty 1, first come first served) | release bursts | expiry (sweeper) |',
    '|---|---:|---:|',
    `| tickets waiting when units were freed | ${release ? whole.format(release.waitingBefore) : '–'} | ${expiry ? whole.format(expiry.waitingAtExpiry) : '–'} |`,
    `| units freed (holds of qty 1) | ${release ? `${whole.format(release.units)} (DELETE, ${release.burstSize} at once)` : '–'} | ${expiry ? `${whole.format(expiry.units)} (HOLD_TTL_SECONDS=${expiry.holdTtlS}, sweep every ${whole.format(expiry.sweepIntervalMs)} ms)` : '–'} |`,
    `| tickets admitted | ${release ? whole.format(release.admitted) : '–'} | ${expiry ? whole.format(expiry.admitted) : '–'} |`,
    `| admissions/s (admitted ÷ wall time) | ${release ? `${whole.format(release.admissionsPerS)} (${release.wallS.toFixed(2)} s)` : '–'} | ${expiry ? `${whole.format(expiry.admissionsPerS)} (${expiry.wallS.toFixed(2)} s from the first expiry)` : '–'} |`,
    `| freed → admitted p50 / p99 (max), ms | ${release ? `${ms(release.admittedP50Ms)} / ${ms(release.admittedP99Ms)} (${ms(release.admittedMaxMs)})` : '–'} | ${expiry ? `${ms(expiry.latencyP50Ms)} / ${ms(expiry.latencyP99Ms)} (${ms(expiry.latencyMaxMs)})` : '–'} |`,
    `| measured as | DELETE sent → a GET shows the ticket admitted (DELETE alone p50 ${release ? ms(release.deleteP50Ms) : '–'}, p99 ${release ? ms(release.deleteP99Ms) : '–'}) | hold expires_at → created_at of the hold the ticket became, paired by rank; ${expiry ? expiry.admittingTransactions : '–'} admitting transactions |`,
    '',
  )
  if (release) {
    lines.push(
      `Releases: flash_sale_events_total{event="waitlist.admitted"} rose by ${whole.format(release.admittedEvents)}; ` +
        `problems: ${problems(release.failures, [
          ['first GET not yet admitted', release.lateLooks],
          ['never admitted', release.notAdmitted],
        ])}.`,
    )
  }
  if (expiry) {
    lines.push(
      `Expiry: line built before the first hold lapsed: ${expiry.lineReadyBeforeExpiry ? 'yes' : 'NO (the figures include joins after units were free)'}; ` +
        `problems: ${problems(expiry.failures, [['never admitted', expiry.notAdmitted]])}.`,
    )
  }
  lines.push(
    `Line: ${whole.format(waitlist.waitingAfterJoins)} tickets waiting after the measured joins, ${whole.format(waitlist.topUpJoins)} more joined to reach 10,000; audit after the phase ${auditOk === undefined ? 'not run' : auditOk ? 'ok' : 'FAILED'}.`,
    '',
  )
  return lines
}
