// Builds the Fastify app from its dependencies; never listens (main.ts and tests do that).
import { randomBytes } from 'node:crypto'
import fastifyRateLimit from '@fastify/rate-limit'
import fastifySwagger from '@fastify/swagger'
import fastifySwaggerUi from '@fastify/swagger-ui'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import Fastify, { LogController, type FastifyInstance } from 'fastify'
import type { Redis } from 'ioredis'
import type { Logger } from 'pino'
import type { Config } from '../config.js'
import type { Clock } from '../domain/clock.js'
import { DomainError } from '../domain/errors.js'
import type { Observer } from '../domain/events.js'
import { createServices, type Services } from '../domain/services.js'
import type { Store } from '../domain/store.js'
import { localMetricsSource, type MetricsSource } from '../observability/cluster-metrics.js'
import type { Metrics } from '../observability/metrics.js'
import { clientErrorProblem, errorHandler, idCharsRoutedMax, sendProblem } from './problem.js'
import { adminRoutes } from './routes/admin.js'
import { dashboardRoutes } from './routes/dashboard.js'
import { stripeRoutes } from './routes/stripe.js'
import { opsRoutes } from './routes/ops.js'
import { publicRoutes } from './routes/public.js'
import { HoldView, OrderView, Problem, ProductView } from './schemas/index.js'

declare module 'fastify' {
  interface FastifyRequest {
    rawBody?: string
  }
}

export interface AppDeps {
  config: Config
  store: Store
  clock: Clock
  logger: Logger
  metrics: Metrics
  // Where /metrics and the dashboard get the service's counters; this process's own by default.
  metricsSource?: MetricsSource
  observer: Observer
  redis?: Redis
}

export type App = FastifyInstance & { services: Services }

// Request ids for requests that bring no X-Request-Id: a random prefix per process, then a
// sequence. Fastify's own `req-1, req-2, ...` repeated in every worker and after every restart,
// so one id named several requests in the logs (the seventh probe).
export function requestIdSource(): () => string {
  const prefix = randomBytes(4).toString('hex')
  let sequence = 0
  return () => `${prefix}-${(++sequence).toString(36)}`
}

// The keyed creates read Idempotency-Key from the header without a header schema (validating one
// would cost every hold a step): the document names it here.
const keyedCreatePaths = ['/api/holds', '/api/orders', '/api/products/{id}/waitlist']
const idempotencyKeyHeader = {
  name: 'Idempotency-Key',
  in: 'header',
  required: false,
  description: '1-255 visible ASCII characters: the same key replays the first answer (SPEC §3); also accepted as the body field idempotency_key',
  schema: { type: 'string', minLength: 1, maxLength: 255 },
}

// What the generated document misses of the routes as they answer: errors are sent as
// application/problem+json (RFC 9457; it said application/json), and the keyed creates' header.
function documentAsSent<T extends { paths?: Record<string, unknown> }>(document: T): T {
  for (const [path, operations] of Object.entries(document.paths ?? {})) {
    for (const [method, operation] of Object.entries(operations as Record<string, { parameters?: unknown[]; responses?: Record<string, { content?: Record<string, unknown> }> }>)) {
      if (method === 'post' && keyedCreatePaths.includes(path)) operation.parameters = [...(operation.parameters ?? []), idempotencyKeyHeader]
      for (const [status, response] of Object.entries(operation.responses ?? {})) {
        const content = response.content
        if (Number(status) < 400 || !content?.['application/json']) continue
        response.content = { 'application/problem+json': content['application/json'] }
      }
    }
  }
  return document
}

function trustHops(hops: number): (address: string, hop: number) => boolean {
  return (_address, hop) => hop < hops
}

export async function buildApp(deps: AppDeps): Promise<App> {
  const { config, metrics } = deps
  const { store, clock } = deps
  const services = createServices(store, clock, deps.observer, config)
  const app = Fastify({
    loggerInstance: deps.logger,
    bodyLimit: config.bodyBytesMax,
    // A hop count trusts that many proxies in front (Fastify's number form, typed as a function).
    trustProxy: typeof config.trustProxy === 'number' ? trustHops(config.trustProxy) : config.trustProxy,
    requestIdHeader: 'x-request-id',
    genReqId: requestIdSource(),
    // Per-request access lines would cost more than a hold itself under a burst; the named
    // events and the latency histogram say what happened.
    logController: new LogController({ requestIdLogLabel: 'request_id', disableRequestLogging: true }),
    // While draining, requests that arrive on open connections are still served (they are
    // answered with Connection: close below), rather than given Fastify's bare 503.
    return503OnClosing: false,
    // Long enough that an over-long id reaches its route and is answered hold_not_found (etc.).
    routerOptions: { maxParamLength: idCharsRoutedMax },
    // What Node's HTTP parser refuses (over-long headers, not HTTP) is a problem too.
    clientErrorHandler: clientErrorProblem,
    // URL errors found before routing (bad percent-encoding, an over-long id) are problems too.
    // No onResponse hook runs for them, so they are counted in the latency histogram here (a
    // probe found 400 bad_request missing from it).
    frameworkErrors: (error, request, reply) => {
      const startedAtMs = performance.now()
      reply.raw.once('finish', () => {
        metrics.requestDuration.observe({ method: request.method, route: 'unmatched', status_code: String(reply.raw.statusCode) }, (performance.now() - startedAtMs) / 1000)
      })
      return errorHandler(error, request, reply)
    },
    ajv: {
      // Strict types (SPEC §3): a JSON integer field never accepts "5", true, null or 1.5.
      customOptions: { coerceTypes: false, allErrors: true, removeAdditional: false, useDefaults: false },
    },
  }).withTypeProvider<TypeBoxTypeProvider>()
  app.decorate('services', services)

  // JSON only, parsed here so the webhook's signature can be checked over the raw bytes.
  const parseJson = app.getDefaultJsonParser('error', 'error')
  app.removeContentTypeParser(['application/json', 'text/plain'])
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) => {
    const text = body as string
    request.rawBody = text
    if (text.trim() === '') {
      if (request.method === 'DELETE' || request.method === 'GET') return done(null, undefined)
      return done(new DomainError('malformed_json'), undefined)
    }
    parseJson(request, text, (error, parsed) => (error ? done(new DomainError('malformed_json'), undefined) : done(null, parsed)))
  })

  // Draining (SIGTERM): every answer closes its connection, so keep-alive clients let go and
  // the server can finish; in-flight requests complete normally.
  let draining = false
  app.addHook('preClose', async () => {
    draining = true
  })
  // Hooks of every request take a callback, not a promise: each promise is a little more CPU of
  // every answer.
  app.addHook('onSend', (_request, reply, payload, done) => {
    if (draining) reply.header('connection', 'close')
    done(null, payload)
  })
  app.addHook('onResponse', (request, reply, done) => {
    metrics.requestDuration.observe({ method: request.method, route: request.routeOptions.url ?? 'unmatched', status_code: String(reply.statusCode) }, reply.elapsedTime / 1000)
    done()
  })

  await app.register(fastifyRateLimit, {
    global: false,
    ...(deps.redis ? { redis: deps.redis, nameSpace: 'flash-sale:rate:' } : {}),
    keyGenerator: (request) => request.ip,
    // A shared limiter that cannot be reached lets requests through rather than failing them.
    skipOnError: true,
    errorResponseBuilder: (request, context) => {
      metrics.rateLimited.inc({ route: request.routeOptions.url ?? 'unmatched' })
      return new DomainError('rate_limited', { retry_after_s: Math.ceil(context.ttl / 1000), limit_per_window: context.max })
    },
  })

  await app.register(fastifySwagger, {
    openapi: {
      openapi: '3.1.0',
      info: { title: 'Flash-sale checkout', version: '0.1.0', description: 'Holds, orders and payment webhooks that never oversell.' },
      components: {
        securitySchemes: {
          bearer: { type: 'http', scheme: 'bearer' },
          buyer: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT', description: 'Buyer token: HS256 JWT signed with BUYER_TOKEN_SECRET, sub = buyer id, exp required' },
        },
      },
    },
    transformObject: (documents) => ('openapiObject' in documents ? documentAsSent(documents.openapiObject) : documents.swaggerObject),
  })
  await app.register(fastifySwaggerUi, { routePrefix: '/docs' })
  app.addSchema(Problem)
  // The resource shapes as named components of /openapi.json (routes use the same objects).
  for (const schema of [ProductView, HoldView, OrderView]) app.addSchema(schema)

  app.setErrorHandler(errorHandler)
  app.setNotFoundHandler((_request, reply) => sendProblem(reply, 'not_found'))

  await app.register(publicRoutes, { config, services, clock, metrics })
  const metricsSource = deps.metricsSource ?? localMetricsSource(metrics.registry)
  await app.register(adminRoutes, { config, services, store, clock, metricsSource, prefix: '/api/admin' })
  await app.register(opsRoutes, { store, metrics, metricsSource })
  await app.register(dashboardRoutes)
  await app.register(stripeRoutes, { config, clock, services, observer: deps.observer, metrics })
  return app as unknown as App
}
