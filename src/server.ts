// `npm start`: serve on the configured engine. WORKERS=N runs N processes sharing one port
// (node:cluster); the primary migrates and seeds once before forking, so workers never race it.
import cluster from 'node:cluster'
import { ConfigError, loadConfig, loadDotEnv, type Config } from './config.js'
import type { Logger } from 'pino'
import { createLogger } from './observability/logger.js'
import { startClusterMetricsPrimary } from './observability/cluster-metrics.js'
import { installSignalHandlers, openRuntime, serve } from './runtime.js'
import { MigrationFailed } from './store/kysely-store.js'

// The primary tells its workers to drain with this message (server.ts, the only sender).
const drainMessage = { type: 'flash-sale:drain' } as const

function isDrainMessage(message: unknown): boolean {
  return typeof message === 'object' && message !== null && (message as { type?: unknown }).type === drainMessage.type
}

// A database the server cannot migrate at start (unreachable, refused, a path it cannot open):
// said in one line, exit 3, as the command line says a database command that cannot run. It
// printed Node's stack trace and exited 1 (the twelfth session's probe). A supervisor restarts it.
function cannotStart(error: MigrationFailed, logger: Logger): never {
  const reason = error.message.split('\n')[0]!
  logger.error({ event: 'server.start_failed', reason }, 'server.start_failed')
  console.error(`cannot start: ${reason}`)
  process.exit(3)
}

export async function startServer(): Promise<void> {
  loadDotEnv()
  let config: Config
  let logger: Logger
  try {
    config = loadConfig()
    logger = createLogger(config)
  } catch (error) {
    if (error instanceof ConfigError) {
      console.error(`configuration error: ${error.message}`)
      process.exit(2)
    }
    throw error
  }
  if (config.workers > 1 && cluster.isPrimary) {
    const runtime = openRuntime(config, { logger })
    await runtime.store.migrate().catch((error: unknown) => {
      if (error instanceof MigrationFailed) cannotStart(error, logger)
      throw error
    })
    await runtime.store.close()
    // Before the first fork, so no worker's request for the service's metrics goes unheard.
    startClusterMetricsPrimary()
    for (let index = 0; index < config.workers; index++) cluster.fork()
    let stopping = false
    let uncleanStops = 0
    // Workers that have listened: one that exits before it does (its port taken, its address
    // not this host's) would fail the same way again, and was restarted forever (the probe).
    const listened = new Set<number>()
    cluster.on('listening', (worker) => listened.add(worker.id))
    const stopWorkers = async (): Promise<void> => {
      stopping = true
      // Told over IPC, not with a signal: Ctrl-C and systemd's default stop signal every process
      // of the group at once, and a worker took the primary's SIGTERM after its own as a second
      // signal, exiting mid-drain (in-flight requests unanswered; the seventh probe).
      for (const worker of Object.values(cluster.workers ?? {})) {
        if (worker?.isConnected()) worker.send(drainMessage)
        else worker?.process.kill('SIGTERM')
      }
      await new Promise<void>((resolve) => {
        const check = (): void => {
          if (Object.keys(cluster.workers ?? {}).length === 0) resolve()
          else setTimeout(check, 50)
        }
        check()
      })
    }
    cluster.on('exit', (worker, code, signal) => {
      // Forgotten once gone, so restarts never grow the set.
      const hadListened = listened.delete(worker.id)
      if (stopping) {
        if (code !== 0) uncleanStops += 1
        return
      }
      if (!hadListened) {
        logger.error({ event: 'worker.start_failed', pid: worker.process.pid, code, signal }, 'a worker exited before it listened: stopping the service')
        void stopWorkers().then(() => process.exit(1))
        return
      }
      logger.error({ event: 'worker.exited', pid: worker.process.pid, code, signal }, 'worker exited; starting another')
      cluster.fork()
    })
    installSignalHandlers(async () => {
      await stopWorkers()
      // The service stopped uncleanly if a worker did: the primary's exit status says so.
      if (uncleanStops > 0) throw new Error(`${uncleanStops} of ${config.workers} workers did not drain cleanly`)
    }, logger)
    logger.info({ event: 'server.started', workers: config.workers, port: config.port, engine: config.engine }, 'server.started')
    return
  }
  let served: Awaited<ReturnType<typeof serve>>
  try {
    served = await serve(config, { migrate: cluster.isPrimary })
  } catch (error) {
    if (error instanceof MigrationFailed) cannotStart(error, logger)
    // The port taken or the address not this host's: said in one line, exit 1 (a worker's exit
    // before it listened stops the whole service, above).
    const code = (error as NodeJS.ErrnoException).code
    if (code === 'EADDRINUSE' || code === 'EADDRNOTAVAIL' || code === 'EACCES') {
      logger.error({ event: 'server.listen_failed', host: config.host, port: config.port, code }, 'server.listen_failed')
      console.error(`cannot listen on ${config.host}:${config.port}: ${code}`)
      process.exit(1)
    }
    throw error
  }
  const { close, port } = served
  const drain = installSignalHandlers(close, logger)
  if (cluster.isWorker) {
    process.on('message', (message: unknown) => {
      if (isDrainMessage(message)) drain('primary')
    })
    // A worker whose primary died (killed, crashed) must not live on unsupervised: drain and exit.
    process.once('disconnect', () => {
      logger.warn({ event: 'worker.orphaned', pid: process.pid }, 'primary gone: draining')
      close().then(
        () => process.exit(0),
        () => process.exit(1),
      )
    })
  }
  logger.info({ event: 'server.listening', port, host: config.host, engine: config.engine, pid: process.pid }, 'server.listening')
}
