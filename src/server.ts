// `npm start`: serve on the configured engine. WORKERS=N runs N processes sharing one port
// (node:cluster); the primary migrates and seeds once before forking, so workers never race it.
import cluster from 'node:cluster'
import { ConfigError, loadConfig, loadDotEnv, type Config } from './config.js'
import { createLogger } from './observability/logger.js'
import { startClusterMetricsPrimary } from './observability/cluster-metrics.js'
import { installSignalHandlers, openRuntime, serve } from './runtime.js'

export async function startServer(): Promise<void> {
  loadDotEnv()
  let config: Config
  try {
    config = loadConfig()
  } catch (error) {
    if (error instanceof ConfigError) {
      console.error(`configuration error: ${error.message}`)
      process.exit(2)
    }
    throw error
  }
  const logger = createLogger(config)
  if (config.workers > 1 && cluster.isPrimary) {
    const runtime = openRuntime(config, { logger })
    await runtime.store.migrate()
    await runtime.store.close()
    // Before the first fork, so no worker's request for the service's metrics goes unheard.
    startClusterMetricsPrimary()
    for (let index = 0; index < config.workers; index++) cluster.fork()
    let stopping = false
    cluster.on('exit', (worker, code, signal) => {
      if (stopping) return
      logger.error({ event: 'worker.exited', pid: worker.process.pid, code, signal }, 'worker exited; starting another')
      cluster.fork()
    })
    installSignalHandlers(async () => {
      stopping = true
      for (const worker of Object.values(cluster.workers ?? {})) worker?.process.kill('SIGTERM')
      await new Promise<void>((resolve) => {
        const check = (): void => {
          if (Object.keys(cluster.workers ?? {}).length === 0) resolve()
          else setTimeout(check, 50)
        }
        check()
      })
    }, logger)
    logger.info({ event: 'server.started', workers: config.workers, port: config.port, engine: config.engine }, 'server.started')
    return
  }
  const { close, port } = await serve(config, { migrate: cluster.isPrimary })
  installSignalHandlers(close, logger)
  if (cluster.isWorker) {
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
