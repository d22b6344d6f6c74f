// Composition: config -> logger, metrics, store -> app + sweeper -> graceful close.
import cluster from 'node:cluster'
import { Redis } from 'ioredis'
import type { Logger } from 'pino'
import type { Config } from './config.js'
import { systemClock, type Clock } from './domain/clock.js'
import type { DomainEvent, Observer } from './domain/events.js'
import type { Store } from './domain/store.js'
import { buildApp } from './http/app.js'
import { createLogger } from './observability/logger.js'
import { Metrics } from './observability/metrics.js'
import { clusterWorkerMetricsSource, localMetricsSource } from './observability/cluster-metrics.js'
import { createObserver } from './observability/observer.js'
import { failureLogIntervalMs, LogThrottle } from './observability/throttle.js'
import { startSweeper } from './jobs/sweeper.js'
import { KyselyStore } from './store/kysely-store.js'
import { Catalog } from './domain/products.js'
import { drainServices } from './domain/services.js'

export interface Runtime {
  config: Config
  logger: Logger
  metrics: Metrics
  observer: Observer
  store: Store
  clock: Clock
}

export interface RuntimeOptions {
  clock?: Clock
  logger?: Logger
  // Sees every domain event too (tests record them).
  onEvent?: (event: DomainEvent) => void
}

export function openRuntime(config: Config, options: RuntimeOptions = {}): Runtime {
  const clock = options.clock ?? systemClock
  const logger = options.logger ?? createLogger(config)
  const metrics = new Metrics()
  const logged = createObserver(logger, metrics)
  const { onEvent } = options
  const observer: Observer = onEvent ? { emit: (event, log) => (onEvent(event), logged.emit(event, log)) } : logged
  const store = new KyselyStore({
    databaseUrl: config.databaseUrl,
    engine: config.engine,
    observer,
    txAttemptsMax: config.txAttemptsMax,
    lockWaitMs: config.sqliteLockWaitMs,
    ...(config.dbTimeoutMs > 0 ? { timeoutMs: config.dbTimeoutMs } : {}),
    seed: { ...seedProduct, stock: config.seedStock },
  })
  metrics.trackProducts(store, clock)
  return { config, logger, metrics, observer, store, clock }
}

const seedProduct = { name: 'Limited edition sneaker', priceMinor: 9_999, currency: 'USD' }

// `flash-sale seed`: product 1 with SEED_STOCK units if the database has no product. (A new
// database is seeded by its migrations already; this is for one emptied or migrated unseeded.)
export async function seedIfEmpty(runtime: Runtime): Promise<boolean> {
  if ((await runtime.store.countProducts()) > 0 || runtime.config.seedStock <= 0) return false
  await new Catalog(runtime.store, runtime.clock).create({ ...seedProduct, stock: runtime.config.seedStock })
  return true
}

// How long a graceful close may take before the process exits anyway.
const closeTimeoutMs = 10_000

export async function serve(config: Config, options: { migrate: boolean }): Promise<{ close: () => Promise<void>; port: number }> {
  const runtime = openRuntime(config)
  const { store, logger, metrics, observer, clock } = runtime
  if (options.migrate) await store.migrate()
  const redis = config.redisUrl ? new Redis(config.redisUrl, { lazyConnect: false, maxRetriesPerRequest: 1, enableOfflineQueue: false }) : undefined
  redis?.on('error', (error) => logger.warn({ err: error.message }, 'redis.error'))
  // A worker's scrape reports the whole service: the primary sums every worker's counters.
  const metricsSource = cluster.isWorker ? clusterWorkerMetricsSource(metrics.registry) : localMetricsSource(metrics.registry)
  const app = await buildApp({ config, store, clock, logger, metrics, metricsSource, observer, ...(redis ? { redis } : {}) })
  const sweepFailureLog = new LogThrottle(failureLogIntervalMs)
  const sweeper = startSweeper({
    store,
    observer,
    clock,
    intervalMs: config.sweepIntervalMs,
    batchMax: config.sweepBatchMax,
    onPass: (result) => {
      metrics.sweepExpired.inc(result.expiredCount)
    },
    onError: (error) => {
      metrics.sweepFailures.inc()
      const logged = sweepFailureLog.take()
      if (logged) logger.error({ err: error, ...logged }, 'sweep.failed')
    },
  })
  await app.listen({ port: config.port, host: config.host })
  const address = app.server.address()
  const port = typeof address === 'object' && address ? address.port : config.port

  let closing: Promise<void> | undefined
  const close = (): Promise<void> => {
    closing ??= (async () => {
      // Stop accepting, finish in-flight requests (and the batches they wait on), stop
      // the sweeper, then close the database.
      // Connections idle between requests are closed as they appear; busy ones close after
      // their answer (Connection: close while draining), so close() completes.
      const idleSweep = setInterval(() => app.server.closeIdleConnections(), 50)
      try {
        await app.close()
      } finally {
        clearInterval(idleSweep)
      }
      await drainServices(app.services)
      await sweeper.stop()
      await store.close()
      redis?.disconnect()
      logger.info({ event: 'server.closed' }, 'server.closed')
    })()
    return closing
  }
  return { close, port }
}

// Drains on the first SIGTERM or SIGINT, or when `drain` is called (a worker told to by its
// primary); a second signal exits at once. Returns `drain`.
export function installSignalHandlers(close: () => Promise<void>, logger: Pick<Logger, 'info' | 'error'>): (reason: string) => void {
  let draining = false
  const drain = (reason: string): void => {
    if (draining) return
    draining = true
    logger.info({ event: 'server.draining', signal: reason }, 'server.draining')
    setTimeout(() => {
      logger.error({ event: 'server.forced_exit', signal: reason }, 'drain took too long: exiting now')
      process.exit(1)
    }, closeTimeoutMs).unref()
    close().then(
      () => process.exit(0),
      (error: unknown) => {
        logger.error({ err: error }, 'close.failed')
        process.exit(1)
      },
    )
  }
  let signals = 0
  const onSignal = (signal: NodeJS.Signals): void => {
    signals += 1
    if (signals > 1) {
      logger.error({ event: 'server.forced_exit', signal }, 'second signal: exiting now')
      process.exit(1)
    }
    drain(signal)
  }
  process.on('SIGTERM', onSignal)
  process.on('SIGINT', onSignal)
  return drain
}
