// Bursts of requests against real server processes that may die or drain under them: every
// request ends either answered or with the connection error the client saw, never hung, and
// every wait is a bounded poll.
import { setTimeout as sleep } from 'node:timers/promises'
import { request, type Reply, type RequestOptions } from './http.js'
import type { ServerProcess } from './servers.js'

// What one request came to: an HTTP answer, or the transport error the client got instead.
export type Outcome = { answered: true; reply: Reply; answeredAtMs: number } | { answered: false; error: string; failedAtMs: number }

// Sends one request; a refused or reset connection is an outcome, not an exception.
export async function attempt(baseUrl: string, method: string, path: string, options: RequestOptions = {}): Promise<Outcome> {
  try {
    const reply = await request(baseUrl, method, path, options)
    return { answered: true, reply, answeredAtMs: Date.now() }
  } catch (error) {
    const cause = (error as { cause?: { code?: string; message?: string } }).cause
    return { answered: false, error: String(cause?.code ?? cause?.message ?? error), failedAtMs: Date.now() }
  }
}

// Runs the tasks with at most `concurrencyMax` in flight, in order; `onOutcome` sees each outcome
// as it arrives (with how many have been answered so far), so a test can act mid-burst.
export async function runBurst<T extends Outcome>(
  tasks: ReadonlyArray<() => Promise<T>>,
  concurrencyMax: number,
  onOutcome?: (outcome: T, index: number, answeredCount: number) => void,
): Promise<T[]> {
  const outcomes: T[] = new Array(tasks.length)
  let next = 0
  let answeredCount = 0
  const lane = async (): Promise<void> => {
    while (next < tasks.length) {
      const index = next++
      const outcome = await tasks[index]!()
      outcomes[index] = outcome
      if (outcome.answered) answeredCount += 1
      onOutcome?.(outcome, index, answeredCount)
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrencyMax, tasks.length) }, lane))
  return outcomes
}

// Polls `check` every `intervalMs` until it holds, failing with `what` after `timeoutMs`.
export async function waitUntil(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 10_000, intervalMs = 25): Promise<void> {
  const deadlineMs = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadlineMs) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(intervalMs)
  }
}

// Resolves with how the process ended, failing if it has not ended within `timeoutMs`.
export async function exitOf(server: ServerProcess, timeoutMs = 15_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`process ${server.child.pid} did not exit within ${timeoutMs} ms`)), timeoutMs)
  })
  try {
    return await Promise.race([server.exited, timeout])
  } finally {
    clearTimeout(timer)
  }
}

export type LogLine = Record<string, unknown> & { event?: string; pid?: number }

// The JSON log lines of these processes that carry the named event.
export function logEvents(servers: readonly ServerProcess[], event: string): LogLine[] {
  const lines: LogLine[] = []
  for (const server of servers) {
    for (const line of server.logLines) {
      if (!line.includes(`"event":"${event}"`)) continue
      try {
        lines.push(JSON.parse(line) as LogLine)
      } catch {
        // A line cut by a SIGKILL is not JSON; the events a test counts come from whole lines.
      }
    }
  }
  return lines
}

export function statusCounts(outcomes: readonly Outcome[]): Record<string, number> {
  const counts: Record<string, number> = {}
  for (const outcome of outcomes) {
    const name = outcome.answered ? String(outcome.reply.status) : 'connection_error'
    counts[name] = (counts[name] ?? 0) + 1
  }
  return counts
}

export function sum(values: readonly number[]): number {
  return values.reduce((total, value) => total + value, 0)
}
