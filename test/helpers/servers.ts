// Node processes started from the repository: real server processes (the compiled `npm start`
// entry) sharing one database, for tests of concurrency across processes, crashes (SIGKILL) and
// graceful drains (SIGTERM); and commands run to their exit (the CLI, a server refusing to start).
import { spawn, type ChildProcess } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { onTestFinished } from 'vitest'
import pino from 'pino'
import { loadConfig, type EngineName } from '../../src/config.js'
import { audit, type AuditReport } from '../../src/domain/audit.js'
import { openRuntime, type Runtime } from '../../src/runtime.js'
import { baseEnv, productCreator } from './app.js'
import { freshDatabase, rawQuery } from './engines.js'

const repoRoot = fileURLToPath(new URL('../..', import.meta.url))

export interface ServerProcess {
  child: ChildProcess
  baseUrl: string
  // Every stdout line the process wrote (JSON log lines), for asserting named events.
  logLines: string[]
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
}

export interface Cluster {
  databaseUrl: string
  engine: EngineName
  servers: ServerProcess[]
  // A store of the test's own on the same database: audit, product creation, direct reads.
  runtime: Runtime
  productId: number
  start(env?: Record<string, string>): Promise<ServerProcess>
  audit(): Promise<AuditReport>
  createProduct(stock: number, priceMinor?: number): Promise<number>
}

// Every child still running when this test process exits is killed with it: a test that times
// out or crashes must not leave servers behind that slow every later test on the machine.
const liveChildren = new Set<ChildProcess>()
process.once('exit', () => {
  for (const child of liveChildren) child.kill('SIGKILL')
})

// `node <args>` from the repository root with exactly `env`, stdout and stderr piped.
function spawnNode(args: readonly string[], env: NodeJS.ProcessEnv): ChildProcess & { stdout: NodeJS.ReadableStream; stderr: NodeJS.ReadableStream } {
  const child = spawn(process.execPath, args, { cwd: repoRoot, env, stdio: ['ignore', 'pipe', 'pipe'] }) as ChildProcess & {
    stdout: NodeJS.ReadableStream
    stderr: NodeJS.ReadableStream
  }
  liveChildren.add(child)
  child.once('exit', () => liveChildren.delete(child))
  return child
}

export interface ExitResult {
  code: number | null
  stdout: string
  stderr: string
}

// Runs `node <args>` to its exit; a process still running after timeoutMs is killed and fails the test.
export function runToExit(args: readonly string[], env: NodeJS.ProcessEnv, timeoutMs = 30_000): Promise<ExitResult> {
  return new Promise((resolve, reject) => {
    const child = spawnNode(args, env)
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()))
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`node ${args.join(' ')} did not exit in ${timeoutMs} ms: ${stderr}`))
    }, timeoutMs)
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

// Long enough for WORKERS=3 to start while a database server of the test's own starts too.
export const faultStartTimeoutMs = 90_000

export interface SpawnOptions {
  // How many `server.listening` lines to wait for (WORKERS=N writes one per worker).
  listeningMin?: number
  startTimeoutMs?: number
}

// Starts the compiled server on a free port; resolves once it listens. A process that fails to
// start is killed, not left running.
export async function spawnServer(databaseUrl: string, env: Record<string, string> = {}, options: SpawnOptions = {}): Promise<ServerProcess> {
  const { listeningMin = 1, startTimeoutMs = 30_000 } = options
  const child = spawnNode(['dist/main.js'], { ...process.env, ...baseEnv(databaseUrl, { LOG_LEVEL: 'info', PORT: '0', ...env }) })
  const logLines: string[] = []
  let stderr = ''
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
  const ports: number[] = []
  const port = new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start in ${startTimeoutMs} ms: ${stderr}`)), startTimeoutMs)
    let buffered = ''
    child.stdout.on('data', (chunk: Buffer) => {
      buffered += chunk.toString()
      const lines = buffered.split('\n')
      buffered = lines.pop() ?? ''
      for (const line of lines) {
        logLines.push(line)
        const match = /"event":"server.listening","port":(\d+)/.exec(line)
        if (match) ports.push(Number(match[1]))
        if (ports.length >= listeningMin) {
          clearTimeout(timer)
          resolve(ports[0]!)
        }
      }
    })
    void exited.then(({ code, signal }) => {
      clearTimeout(timer)
      reject(new Error(`server exited (${code ?? signal}) before listening: ${stderr}`))
    })
  })
  try {
    return { child, baseUrl: `http://127.0.0.1:${await port}`, logLines, exited }
  } catch (error) {
    child.kill('SIGKILL')
    await exited
    throw error
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

// The server a request with this index goes to: requests spread round-robin over the processes.
export function serverFor(servers: readonly ServerProcess[], index: number): ServerProcess {
  return servers[index % servers.length]!
}

// The cells of the multi-process tests: one process, and several on one database (fewer on
// SQLite, where writers take turns on one file lock).
export function processCounts(engine: EngineName): number[] {
  return [1, engine === 'sqlite' ? 2 : 3]
}

export async function startCluster(engine: EngineName, options: { processes: number; stock?: number; env?: Record<string, string> }): Promise<Cluster> {
  const fresh = await freshDatabase(engine)
  const config = loadConfig(baseEnv(fresh.url, options.env))
  const runtime = openRuntime(config, { logger: pino({ level: 'silent' }) })
  // Migrate once here, so the processes started below never race each other's migration.
  await runtime.store.migrate()
  const createProduct = productCreator(runtime.store, runtime.clock)
  const productId = await createProduct(options.stock ?? 100)
  const servers: ServerProcess[] = []
  const start = async (env: Record<string, string> = {}): Promise<ServerProcess> => {
    const server = await spawnServer(fresh.url, { ...options.env, ...env })
    servers.push(server)
    return server
  }
  onTestFinished(async () => {
    for (const server of servers) if (server.child.exitCode === null && server.child.signalCode === null) server.child.kill('SIGKILL')
    await Promise.all(servers.map((server) => server.exited))
    await runtime.store.close()
    await fresh.drop()
  })
  await Promise.all(Array.from({ length: options.processes }, () => start()))
  return { databaseUrl: fresh.url, engine, servers, runtime, productId, start, audit: () => audit(runtime.store), createProduct }
}

// How many rows of `table` name the product, read from the database rather than through a server.
export async function rowCount(cluster: Cluster, table: 'holds' | 'orders', productId: number): Promise<number> {
  const rows = (await rawQuery(cluster.engine, cluster.databaseUrl, `select count(*) as n from ${table} where product_id = ${productId}`)) as Array<{ n: unknown }>
  return Number(rows[0]!.n)
}
