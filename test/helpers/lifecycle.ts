// Helpers for the hold/order lifecycle, expiry and CLI tests: bounded polling against real
// time, named events from logs and metrics, and the command line run as a child process.
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { fileURLToPath } from 'node:url'
import type { DomainEvent, EventName } from '../../src/domain/events.js'
import type { ServerProcess } from './servers.js'

const repoRoot = fileURLToPath(new URL('../..', import.meta.url))

// Polls until `done` accepts what `read` returns; fails after timeoutMs naming the last value,
// so a service that never gets there fails the test instead of hanging it.
export async function pollUntil<T>(
  read: () => Promise<T>,
  done: (value: T) => boolean,
  options: { timeoutMs?: number; intervalMs?: number; what?: string } = {},
): Promise<T> {
  const { timeoutMs = 15_000, intervalMs = 25, what = 'condition' } = options
  const deadlineMs = Date.now() + timeoutMs
  for (;;) {
    const value = await read()
    if (done(value)) return value
    if (Date.now() >= deadlineMs) throw new Error(`${what} not reached in ${timeoutMs} ms; last value: ${JSON.stringify(value)}`)
    await new Promise((resolve) => setTimeout(resolve, intervalMs))
  }
}

export function sleepMs(durationMs: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, durationMs))
}

// An id shaped like the service's own, that no hold or order has.
export function unknownId(prefix: 'hold' | 'ord'): string {
  return `${prefix}_${randomBytes(12).toString('base64url')}`
}

export function eventsNamed(events: readonly DomainEvent[], name: EventName): DomainEvent[] {
  return events.filter((event) => event.name === name)
}

// The named events a server process logged (JSON lines on stdout).
export function loggedEvents(server: ServerProcess, name: EventName): Array<Record<string, unknown>> {
  const marker = `"event":"${name}"`
  return server.logLines.filter((line) => line.includes(marker)).map((line) => JSON.parse(line) as Record<string, unknown>)
}

// One sample of a Prometheus counter or gauge, 0 when the series is absent.
export function metricValue(metricsText: string, series: string): number {
  for (const line of metricsText.split('\n')) {
    if (line.startsWith(`${series} `)) return Number(line.slice(series.length + 1))
  }
  return 0
}

export interface CliResult {
  code: number | null
  stdout: string
  stderr: string
}

const cliTimeoutMs = 30_000

// `node bin/flash-sale.js <args>` from the repository root, as `npx flash-sale` runs it.
export function runCli(args: readonly string[], env: Record<string, string>): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['bin/flash-sale.js', ...args], {
      cwd: repoRoot,
      env: { ...process.env, LOG_LEVEL: 'warn', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()))
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`flash-sale ${args.join(' ')} did not exit in ${cliTimeoutMs} ms: ${stderr}`))
    }, cliTimeoutMs)
    child.once('error', (error) => {
      clearTimeout(timer)
      reject(error)
    })
    child.once('close', (code) => {
      clearTimeout(timer)
      resolve({ code, stdout, stderr })
    })
  })
}
