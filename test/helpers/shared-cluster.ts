// Server processes on one fresh database owned by a describe block (beforeAll/afterAll) rather
// than one test, so several tests share the processes' start-up cost; each test then uses a
// product of its own. startCluster (servers.ts) is the per-test form.
import pino from 'pino'
import { loadConfig, type EngineName } from '../../src/config.js'
import { openRuntime } from '../../src/runtime.js'
import { baseEnv, productCreator } from './app.js'
import { freshDatabase } from './engines.js'
import { spawnServer, type ServerProcess } from './servers.js'

export interface SharedCluster {
  databaseUrl: string
  servers: ServerProcess[]
  close(): Promise<void>
}

export async function startSharedCluster(engine: EngineName, options: { processes: number; env?: Record<string, string> }): Promise<SharedCluster> {
  const fresh = await freshDatabase(engine)
  const runtime = openRuntime(loadConfig(baseEnv(fresh.url, options.env)), { logger: pino({ level: 'silent' }) })
  const servers: ServerProcess[] = []
  const close = async (): Promise<void> => {
    for (const server of servers) if (server.child.exitCode === null && server.child.signalCode === null) server.child.kill('SIGKILL')
    await Promise.all(servers.map((server) => server.exited))
    await runtime.store.close()
    await fresh.drop()
  }
  try {
    // Migrated here, and a product made before any process starts, so no process races another's
    // migration or seeds a product of its own.
    await runtime.store.migrate()
    await productCreator(runtime.store, runtime.clock)(0)
    const started = await Promise.allSettled(Array.from({ length: options.processes }, () => spawnServer(fresh.url, options.env)))
    for (const result of started) if (result.status === 'fulfilled') servers.push(result.value)
    const failed = started.find((result) => result.status === 'rejected')
    if (failed) throw failed.reason
  } catch (error) {
    await close()
    throw error
  }
  return { databaseUrl: fresh.url, servers, close }
}
