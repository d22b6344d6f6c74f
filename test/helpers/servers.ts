// Real server processes (the compiled `npm start` entry) sharing one database, for tests of
// concurrency across processes, crashes (SIGKILL) and graceful drains (SIGTERM).
import { spawn, type ChildProcess } from 'node:child_process'
import { onTestFinished } from 'vitest'
import pino from 'pino'
import { loadConfig, type EngineName } from '../../src/config.js'
import { audit, type AuditReport } from '../../src/domain/audit.js'
import { Catalog } from '../../src/domain/products.js'
import { openRuntime, type Runtime } from '../../src/runtime.js'
import { baseEnv } from './app.js'
import { freshDatabase } from './engines.js'

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

const startTimeoutMs = 20_000

export async function spawnServer(databaseUrl: string, env: Record<string, string> = {}): Promise<ServerProcess> {
  const child = spawn(process.execPath, ['dist/main.js'], {
    env: { ...process.env, ...baseEnv(databaseUrl, { LOG_LEVEL: 'info', PORT: '0', ...env }) },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const logLines: string[] = []
  let stderr = ''
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start in ${startTimeoutMs} ms: ${stderr}`)), startTimeoutMs)
    let buffered = ''
    child.stdout!.on('data', (chunk: Buffer) => {
      buffered += chunk.toString()
      const lines = buffered.split('\n')
      buffered = lines.pop() ?? ''
      for (const line of lines) {
        logLines.push(line)
        const match = /"event":"server.listening","port":(\d+)/.exec(line)
        if (match) {
          clearTimeout(timer)
          resolve(Number(match[1]))
        }
      }
    })
    void exited.then(({ code }) => {
      clearTimeout(timer)
      reject(new Error(`server exited (${code}) before listening: ${stderr}`))
    })
  })
  return { child, baseUrl: `http://127.0.0.1:${port}`, logLines, exited }
}

export async function startCluster(engine: EngineName, options: { processes: number; stock?: number; env?: Record<string, string> }): Promise<Cluster> {
  const fresh = await freshDatabase(engine)
  const config = loadConfig(baseEnv(fresh.url, options.env))
  const runtime = openRuntime(config, { logger: pino({ level: 'silent' }) })
  // Migrate once here, so the processes started below never race each other's migration.
  await runtime.store.migrate()
  const catalog = new Catalog(runtime.store, runtime.clock)
  const createProduct = async (stock: number, priceMinor = 9_999): Promise<number> =>
    (await catalog.create({ name: `product ${stock}`, priceMinor, currency: 'USD', stock })).id
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
