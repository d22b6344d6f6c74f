// Operations: liveness, readiness, metrics and the OpenAPI document.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { Store } from '../../domain/store.js'
import type { MetricsSource } from '../../observability/cluster-metrics.js'
import type { Metrics } from '../../observability/metrics.js'
import { failureLogIntervalMs, LogThrottle } from '../../observability/throttle.js'

export interface OpsRoutesOptions {
  store: Store
  metrics: Metrics
  metricsSource: MetricsSource
}

export const opsRoutes: FastifyPluginAsyncTypebox<OpsRoutesOptions> = async (app, { store, metrics, metricsSource }) => {
  const hidden = { hide: true }
  // A load balancer probes every few hundred ms: during an outage that is one line per probe.
  const readyFailureLog = new LogThrottle(failureLogIntervalMs)
  app.get('/health', { schema: hidden }, async () => ({ status: 'ok' }))

  app.get('/ready', { schema: hidden }, async (request, reply) => {
    try {
      await store.ping()
      return { status: 'ready' }
    } catch (error) {
      metrics.readyFailures.inc()
      const logged = readyFailureLog.take()
      if (logged) request.log.warn({ err: error, ...logged }, 'ready.failed')
      return reply.code(503).send({ status: 'unavailable' })
    }
  })

  // The service's counters (every worker's, summed), then what the database says now.
  app.get('/metrics', { schema: hidden }, async (_request, reply) => {
    const scraped = await metricsSource.scrape()
    metrics.processes.set(scraped.processes)
    const databaseText = await metrics.databaseRegistry.metrics()
    return reply.type(metrics.registry.contentType).send(`${scraped.text.trimEnd()}\n\n${databaseText}`)
  })

  app.get('/openapi.json', { schema: hidden }, async () => app.swagger())
}
