// Helpers for the hold/order lifecycle, expiry and CLI tests: bounded polling against real
// time, named events and metrics, and the command line run as a child process.
import { randomBytes } from 'node:crypto'
import type { DomainEvent, EventName } from '../../src/domain/events.js'
import { runToExit, type ExitResult } from './servers.js'

// Polls until `done` accepts what `read` returns; fails after timeoutMs naming the last value,
// so a service that never gets there fails the test instead of hanging it.
export async function pollUntil<T>(read: () => T | Promise<T>, done: (value: T) => boolean, options: { timeoutMs?: number; intervalMs?: number; what?: string } = {}): Promise<T> {
  const { timeoutMs = 15_000, intervalMs = 25, what = 'condition' } = options
  const deadlineMs = Date.now() + timeoutMs
  for (;;) {
    const value = await read()
    if (done(value)) return value
    if (Date.now() >= deadlineMs) throw new Error(`${what} not reached in ${timeoutMs} ms; last value: ${JSON.stringify(value)}`)
    await new Promise((resolve) => setTimeout(resolve, intervalMs))
  }
}

// Waits for a wall-clock instant (epoch ms), at once if it has passed: server processes run on
// the wall clock, so a request aimed at an instant of theirs (an expires_at) is sent then.
export function untilWallClock(instantMs: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, instantMs - Date.now())))
}

// An id shaped like the service's own, that no hold or order has.
export function unknownId(prefix: 'hold' | 'ord'): string {
  return `${prefix}_${randomBytes(12).toString('base64url')}`
}

export function eventsNamed(events: readonly DomainEvent[], name: EventName): DomainEvent[] {
  return events.filter((event) => event.name === name)
}

// One sample of a Prometheus counter or gauge, 0 when the series is absent.
export function metricValue(metricsText: string, series: string): number {
  for (const line of metricsText.split('\n')) {
    if (line.startsWith(`${series} `)) return Number(line.slice(series.length + 1))
  }
  return 0
}

// `node bin/flash-sale.js <args>` from the repository root, as `npx flash-sale` runs it.
export function runCli(args: readonly string[], env: Record<string, string>): Promise<ExitResult> {
  return runToExit(['bin/flash-sale.js', ...args], { ...process.env, LOG_LEVEL: 'warn', ...env })
}
