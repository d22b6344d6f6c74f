// The buyer- and provider-facing API (SPEC §3).
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { DomainError } from '../../domain/errors.js'
import { parseProductId } from '../../domain/ids.js'
import { presentHold, presentOrder, presentPayment, presentProduct } from '../present.js'
import {
  HoldView,
  OrderBody,
  OrderView,
  ProductParams,
  ProductView,
  ResourceParams,
  WebhookAnswer,
  WebhookBody,
  holdBody,
  problemResponses,
  type HoldBody,
} from '../schemas/index.js'
import { verifySignature } from '../signature.js'
import type { AppContext } from '../app.js'

const idempotencyKeyPattern = /^[\x21-\x7E]{1,255}$/

// The key may come in the Idempotency-Key header or the body; if both, they must agree.
function idempotencyKeyOf(request: FastifyRequest, bodyKey: string | undefined): string | null {
  const header = request.headers['idempotency-key']
  const headerKey = Array.isArray(header) ? header[0] : header
  if (headerKey !== undefined && !idempotencyKeyPattern.test(headerKey)) {
    throw new DomainError('validation_failed', { errors: [{ field: 'Idempotency-Key', message: 'must be 1 to 255 visible ASCII characters' }], invalid_fields: ['Idempotency-Key'] })
  }
  if (headerKey !== undefined && bodyKey !== undefined && headerKey !== bodyKey) {
    throw new DomainError('validation_failed', { errors: [{ field: 'idempotency_key', message: 'differs from the Idempotency-Key header' }], invalid_fields: ['idempotency_key'] })
  }
  return headerKey ?? bodyKey ?? null
}

function markReplay(reply: FastifyReply, context: AppContext, scope: string, replayed: boolean): void {
  if (!replayed) return
  reply.header('idempotent-replayed', 'true')
  context.metrics.replays.inc({ scope })
}

function rateLimit(perMin: number) {
  return perMin > 0 ? { rateLimit: { max: perMin, timeWindow: 60_000 } } : { rateLimit: false as const }
}

// The JSON of a product view, made once however many coalesced reads answer with it.
const serializedViews = new WeakMap<object, string>()

export async function publicRoutes(app: FastifyInstance, context: AppContext): Promise<void> {
  const { config, services, clock } = context

  app.get<{ Params: { id: string } }>(
    '/api/products/:id',
    {
      config: rateLimit(config.rateLimitReadPerMin),
      schema: { tags: ['products'], params: ProductParams, response: { 200: ProductView, ...problemResponses([404, 429]) } },
    },
    async (request, reply) => {
      const productId = parseProductId(request.params.id)
      const product = productId === undefined ? undefined : await services.reader.read(productId)
      if (!product) throw new DomainError('product_not_found')
      // Reads that shared one query share one view object: serialise it once for all of them.
      let body = serializedViews.get(product)
      if (body === undefined) {
        body = JSON.stringify(presentProduct(product))
        serializedViews.set(product, body)
      }
      return reply.type('application/json; charset=utf-8').send(body)
    },
  )

  app.post<{ Body: HoldBody }>(
    '/api/holds',
    {
      config: rateLimit(config.rateLimitHoldPerMin),
      schema: { tags: ['holds'], body: holdBody(config.maxQtyPerHold), response: { 201: HoldView, ...problemResponses([400, 404, 409, 413, 415, 422, 429, 503]) } },
    },
    async (request, reply) => {
      const { body } = request
      const qty = body.qty ?? body.quantity
      if (qty === undefined) throw new DomainError('validation_failed', { errors: [{ field: 'qty', message: "must have required property 'qty'" }], invalid_fields: ['qty'] })
      if (body.qty !== undefined && body.quantity !== undefined && body.qty !== body.quantity) {
        throw new DomainError('validation_failed', { errors: [{ field: 'quantity', message: 'differs from qty' }], invalid_fields: ['quantity'] })
      }
      const idempotencyKey = idempotencyKeyOf(request, body.idempotency_key)
      try {
        const answer = await services.holds.create({ productId: body.product_id, qty, idempotencyKey })
        markReplay(reply, context, 'holds', answer.replayed)
        return reply.code(201).send(presentHold(answer.hold, clock.now()))
      } catch (error) {
        if (error instanceof DomainError && error.code === 'product_not_found') {
          context.observer.emit({ name: 'hold.rejected', productId: body.product_id, qty, reason: error.code })
        }
        throw error
      }
    },
  )

  app.get<{ Params: { id: string } }>(
    '/api/holds/:id',
    { config: rateLimit(config.rateLimitReadPerMin), schema: { tags: ['holds'], params: ResourceParams, response: { 200: HoldView, ...problemResponses([404, 429]) } } },
    async (request) => presentHold(await services.holds.get(request.params.id), clock.now()),
  )

  app.delete<{ Params: { id: string } }>(
    '/api/holds/:id',
    { config: rateLimit(config.rateLimitHoldPerMin), schema: { tags: ['holds'], params: ResourceParams, response: { 200: HoldView, ...problemResponses([404, 409, 410, 429, 503]) } } },
    async (request) => presentHold(await services.holds.release(request.params.id), clock.now()),
  )

  app.post<{ Body: OrderBody }>(
    '/api/orders',
    {
      config: rateLimit(config.rateLimitOrderPerMin),
      schema: { tags: ['orders'], body: OrderBody, response: { 201: OrderView, ...problemResponses([400, 404, 409, 410, 413, 415, 422, 429, 503]) } },
    },
    async (request, reply) => {
      const idempotencyKey = idempotencyKeyOf(request, request.body.idempotency_key)
      const answer = await services.orders.create({ holdId: request.body.hold_id, idempotencyKey })
      markReplay(reply, context, 'orders', answer.replayed)
      return reply.code(201).send(presentOrder(answer.order, clock.now()))
    },
  )

  app.get<{ Params: { id: string } }>(
    '/api/orders/:id',
    { config: rateLimit(config.rateLimitReadPerMin), schema: { tags: ['orders'], params: ResourceParams, response: { 200: OrderView, ...problemResponses([404, 429]) } } },
    async (request) => presentOrder(await services.orders.get(request.params.id), clock.now()),
  )

  app.post<{ Body: WebhookBody }>(
    '/api/payments/webhook',
    {
      config: { rateLimit: false },
      schema: {
        tags: ['payments'],
        body: WebhookBody,
        headers: { type: 'object', properties: { 'webhook-signature': { type: 'string' }, 'idempotency-key': { type: 'string' } } },
        response: { 200: WebhookAnswer, 202: WebhookAnswer, ...problemResponses([400, 401, 404, 413, 415, 422, 503]) },
      },
      // The signature is checked on the raw bytes before the body is validated or used.
      preValidation: async (request) => {
        if (!config.webhookSecret) return
        const header = request.headers['webhook-signature']
        const valid = verifySignature({
          secret: config.webhookSecret,
          header: Array.isArray(header) ? header[0] : header,
          rawBody: request.rawBody ?? '',
          now: clock.now(),
          toleranceMs: config.webhookToleranceMs,
        })
        if (!valid) throw new DomainError('invalid_signature')
      },
    },
    async (request, reply) => {
      const { body } = request
      if (body.order_id === undefined && body.hold_id === undefined) {
        throw new DomainError('validation_failed', { errors: [{ field: 'order_id', message: 'order_id or hold_id is required' }], invalid_fields: ['order_id', 'hold_id'] })
      }
      const idempotencyKey = idempotencyKeyOf(request, body.idempotency_key)
      if (idempotencyKey === null) throw new DomainError('idempotency_key_required')
      const answer = await services.payments.receive({
        idempotencyKey,
        orderId: body.order_id ?? null,
        holdId: body.hold_id ?? null,
        status: body.status,
        paymentId: body.payment_id ?? null,
        amount: body.amount ?? null,
      })
      markReplay(reply, context, 'payments', answer.replayed)
      return reply.code(answer.statusCode).send(presentPayment(answer.body))
    },
  )
}
