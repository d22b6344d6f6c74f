// The service under test, as `npm start` runs it: `node <its flags> dist/main.js` in a child process of its
// own process group (WORKERS=N forks N workers inside it), on a free loopback port. Whatever
// happens to the bench, the group is killed on exit, so no server outlives it.
import { spawn, type ChildProcess } from 'node:child_process'
import { readdirSync, readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { request } from 'node:http'
import { freePort } from '../dev/free-port.js'

export interface ServerOptions {
  databaseUrl: string
  workers: number
  env: Record<string, string>
  // Extra node flags (`--cpu-prof`); cluster workers inherit them.
  nodeFlags: string[]
}

export interface ServerProcess {
  child: ChildProcess
  baseUrl: string
  port: number
  stderrTail(): string
  // Warn-or-worse log lines (LOG_LEVEL=warn) counted by event and label: tx.retry, tx.busy, ...
  logEvents(): Record<string, number>
  stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null; forced: boolean }>
}

const startTimeoutMs = 60_000
const stopTimeoutMs = 20_000
const stderrKeptChars = 8_000

const liveGroups = new Set<number>()
let exitHookInstalled = false

// Synchronous, so it also runs from process.on('exit').
export function killAllServers(): void {
  for (const pid of liveGroups) {
    try {
      process.kill(-pid, 'SIGKILL')
    } catch {
      // Already gone.
    }
  }
  liveGroups.clear()
}

function installExitHook(): void {
  if (exitHookInstalled) return
  exitHookInstalled = true
  process.on('exit', killAllServers)
}

// The node flags of package.json's start script (`node <flags> dist/main.js`), so the bench runs
// the server with the heap settings `npm start` gives it.
export function startScriptNodeFlags(packageJsonPath = fileURLToPath(new URL('../package.json', import.meta.url))): string[] {
  const start = (JSON.parse(readFileSync(packageJsonPath, 'utf8')) as { scripts?: Record<string, string> }).scripts?.start ?? ''
  const match = /(?:^|&&\s*)node((?:\s+--[\w-]+(?:=\S+)?)*)\s+dist\/main\.js\s*$/.exec(start)
  if (!match) throw new Error(`package.json's start script does not end in "node [--flags] dist/main.js": ${start}`)
  return match[1]!
    .trim()
    .split(/\s+/)
    .filter((flag) => flag !== '')
}

export async function startServer(options: ServerOptions): Promise<ServerProcess> {
  installExitHook()
  const port = await freePort()
  const child = spawn(process.execPath, [...startScriptNodeFlags(), ...options.nodeFlags, 'dist/main.js'], {
    env: { ...process.env, ...options.env, DATABASE_URL: options.databaseUrl, WORKERS: String(options.workers), PORT: String(port), HOST: '127.0.0.1' },
    stdio: ['ignore', 'pipe', 'pipe'],
    // Its own process group: one kill(-pid) reaches the primary and every worker.
    detached: true,
  })
  if (child.pid === undefined) throw new Error('could not spawn the server')
  liveGroups.add(child.pid)
  let stderr = ''
  child.stderr!.on('data', (chunk: Buffer) => {
    stderr = (stderr + chunk.toString()).slice(-stderrKeptChars)
  })
  const logEvents: Record<string, number> = {}
  let stdoutRest = ''
  child.stdout!.on('data', (chunk: Buffer) => {
    const lines = (stdoutRest + chunk.toString()).split('\n')
    stdoutRest = (lines.pop() ?? '').slice(-stderrKeptChars)
    for (const line of lines) {
      if (line.trim() === '') continue
      let key = 'unparsed log line'
      try {
        const entry = JSON.parse(line) as { event?: string; label?: string; msg?: string }
        key = [entry.event ?? entry.msg ?? 'log', entry.label].filter(Boolean).join(' ')
      } catch {
        // Counted as unparsed.
      }
      logEvents[key] = (logEvents[key] ?? 0) + 1
    }
  })
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => {
      liveGroups.delete(child.pid!)
      resolve({ code, signal })
    }),
  )
  const baseUrl = `http://127.0.0.1:${port}`
  const deadline = Date.now() + startTimeoutMs
  let ready = false
  let exitedEarly = false
  void exited.then(() => (exitedEarly = true))
  // LOG_LEVEL=warn hides `server.listening`, so readiness is polled: /ready also proves the
  // database is reachable.
  while (!ready && !exitedEarly && Date.now() < deadline) {
    ready = (await probe(`${baseUrl}/ready`)) === 200
    if (!ready) await sleep(100)
  }
  const stop = async (): Promise<{ code: number | null; signal: NodeJS.Signals | null; forced: boolean }> => {
    if (child.exitCode !== null || child.signalCode !== null) return { ...(await exited), forced: false }
    // SIGTERM: the primary stops its workers, each drains and exits (writing --cpu-prof files).
    child.kill('SIGTERM')
    const timer = sleep(stopTimeoutMs).then(() => 'timeout' as const)
    const outcome = await Promise.race([exited, timer])
    if (outcome !== 'timeout') return { ...outcome, forced: false }
    killAllServers()
    return { ...(await exited), forced: true }
  }
  if (!ready) {
    const outcome = await stop()
    const why = exitedEarly ? `exited before it was ready (code ${outcome.code}, signal ${outcome.signal})` : `did not become ready in ${startTimeoutMs} ms`
    throw new Error(`server ${why}:\n${stderr}`)
  }
  return { child, baseUrl, port, stderrTail: () => stderr, logEvents: () => ({ ...logEvents }), stop }
}

function probe(url: string): Promise<number> {
  return new Promise((resolve) => {
    const req = request(url, { agent: false, timeout: 1000 }, (res) => {
      res.resume()
      res.on('end', () => resolve(res.statusCode ?? 0))
    })
    req.on('error', () => resolve(0))
    req.on('timeout', () => req.destroy())
    req.end()
  })
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

// --- CPU accounting -------------------------------------------------------------------------
// Where the machine's CPU went during a phase, from /proc: the server's process group, the
// database server's processes, this bench process (autocannon and the funnel driver), and
// everything else (other jobs on a shared machine: the noise in the figures).

export interface CpuSample {
  atMs: number
  // Ticks per pid, so a process that ends between two samples (another client's database
  // backend) drops out instead of making the difference negative.
  serverTicks: Map<number, number>
  databaseTicks: Map<number, number>
  machineBusyTicks: number
  benchUs: number
}

export interface CpuShare {
  // Cores busy on average over the phase (2.0 = both cores of a 2-core machine).
  serverCores: number
  databaseCores: number
  benchCores: number
  otherCores: number
}

const ticksPerS = 100 // USER_HZ on Linux (getconf CLK_TCK).
const databaseCommands = new Set(['postgres', 'mariadbd', 'mysqld'])

interface ProcStat {
  pid: number
  comm: string
  ppid: number
  pgrp: number
  ticks: number
}

function readProcStat(pid: string): ProcStat | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const close = text.lastIndexOf(')')
    const comm = text.slice(text.indexOf('(') + 1, close)
    const fields = text.slice(close + 2).split(' ')
    // After "(comm) ": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    return { pid: Number(pid), comm, ppid: Number(fields[1]), pgrp: Number(fields[2]), ticks: Number(fields[11]) + Number(fields[12]) }
  } catch {
    return undefined
  }
}

export function cpuSample(serverGroup: number | undefined): CpuSample {
  const serverTicks = new Map<number, number>()
  const databaseTicks = new Map<number, number>()
  let pids: string[] = []
  try {
    pids = readdirSync('/proc').filter((name) => /^\d+$/.test(name))
  } catch {
    // Not Linux: CPU shares are reported as unknown (zeros).
  }
  for (const pid of pids) {
    const stat = readProcStat(pid)
    if (!stat) continue
    if (serverGroup !== undefined && stat.pgrp === serverGroup) serverTicks.set(stat.pid, stat.ticks)
    else if (databaseCommands.has(stat.comm)) databaseTicks.set(stat.pid, stat.ticks)
  }
  let machineBusyTicks = 0
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? ''
    const values = line.trim().split(/\s+/).slice(1).map(Number)
    // user nice system idle iowait irq softirq steal: busy is everything but idle and iowait.
    machineBusyTicks = values.reduce((sum, value, index) => (index === 3 || index === 4 || index > 7 ? sum : sum + value), 0)
  } catch {
    // Not Linux.
  }
  const usage = process.cpuUsage()
  return { atMs: performance.now(), serverTicks, databaseTicks, machineBusyTicks, benchUs: usage.user + usage.system }
}

// Ticks spent between two samples by processes alive at the second: a process born in between
// counts whole.
function ticksBetween(before: Map<number, number>, after: Map<number, number>): number {
  let total = 0
  for (const [pid, ticks] of after) total += Math.max(0, ticks - (before.get(pid) ?? 0))
  return total
}

export function cpuShare(before: CpuSample, after: CpuSample): CpuShare {
  const wallS = Math.max((after.atMs - before.atMs) / 1000, 1e-3)
  const serverCores = ticksBetween(before.serverTicks, after.serverTicks) / ticksPerS / wallS
  const databaseCores = ticksBetween(before.databaseTicks, after.databaseTicks) / ticksPerS / wallS
  const benchCores = (after.benchUs - before.benchUs) / 1e6 / wallS
  const machineCores = (after.machineBusyTicks - before.machineBusyTicks) / ticksPerS / wallS
  return { serverCores, databaseCores, benchCores, otherCores: Math.max(0, machineCores - serverCores - databaseCores - benchCores) }
}
