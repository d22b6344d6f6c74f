// A failure that repeats while the database is away (every /ready probe, every sweep pass)
// would otherwise write one log line each time: the first in each interval is logged, with how
// many were left unlogged before it; the metrics count every one.
export class LogThrottle {
  private loggedAtMs = -Infinity
  private suppressedCount = 0

  constructor(private readonly intervalMs: number) {}

  // Undefined while this interval has already logged; else how many were left unlogged since.
  take(nowMs: number = Date.now()): { suppressedCount: number } | undefined {
    if (nowMs - this.loggedAtMs < this.intervalMs) {
      this.suppressedCount += 1
      return undefined
    }
    this.loggedAtMs = nowMs
    const suppressedCount = this.suppressedCount
    this.suppressedCount = 0
    return { suppressedCount }
  }
}

// The store's db.unavailable uses the same interval: one line each per outage interval.
export const failureLogIntervalMs = 5_000
