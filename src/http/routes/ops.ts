// Operations: liveness, readiness, metrics and the OpenAPI document.
import type { FastifyInstance } from 'fastify'
import type { AppContext } from '../app.js'

export async function opsRoutes(app: FastifyInstance, context: AppContext): Promise<void> {
  const hidden = { hide: true }
  app.get('/health', { schema: hidden }, async () => ({ status: 'ok' }))

  app.get('/ready', { schema: hidden }, async (request, reply) => {
    try {
      await context.store.ping()
      return { status: 'ready' }
    } catch (error) {
      request.log.warn({ err: error }, 'ready.failed')
      return reply.code(503).send({ status: 'unavailable' })
    }
  })

  app.get('/metrics', { schema: hidden }, async (_request, reply) => {
    const text = await context.metrics.registry.metrics()
    return reply.type(context.metrics.registry.contentType).send(text)
  })

  app.get('/openapi.json', { schema: hidden }, async () => app.swagger())
}
