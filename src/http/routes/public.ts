// The buyer- and provider-facing API (SPEC §3).
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { TSchema } from '@sinclair/typebox'
import type { FastifyRequest } from 'fastify'
import type { Config } from '../../config.js'
import type { Clock } from '../../domain/clock.js'
import { DomainError } from '../../domain/errors.js'
import { parseProductId } from '../../domain/ids.js'
import { presentHold, presentOrder, presentPayment, presentProduct } from '../present.js'
import { HoldView, OrderBody, OrderView, ProductParams, ProductView, ResourceParams, WebhookAnswer, WebhookBody, holdBody, problemResponses, type HoldBody } from '../schemas/index.js'
import type { HoldRequest } from '../../domain/holds.js'
import type { Services } from '../../domain/services.js'
import type { Metrics } from '../../observability/metrics.js'
import { BuyerTokens } from '../buyer-token.js'
import { verifySignature } from '../signature.js'
import { waitlistRoutes, type BuyerHook } from './waitlist.js'
import { buyerSecurity, idempotencyKeyOf, markReplay, qtyOf, rateLimit } from '../request-parts.js'

export interface PublicRoutesOptions {
  config: Config
  services: Services
  clock: Clock
  metrics: Metrics
}

// Everything POST /api/holds checks before the domain sees the request (the body schema has
// run already): the qty alias and the idempotency key.
export function holdRequestOf(body: HoldBody, headers: FastifyRequest['headers'], buyerId: string | null = null): HoldRequest {
  return { productId: body.product_id, qty: qtyOf(body), idempotencyKey: idempotencyKeyOf(headers, body.idempotency_key), buyerId }
}

// What POST /api/holds and POST /api/orders may refuse.
const keyedCreateProblems = problemResponses([400, 401, 404, 409, 410, 413, 415, 422, 429, 503])

// The JSON of a product view, made once however many coalesced reads answer with it.
const serializedViews = new WeakMap<object, string>()

export const publicRoutes: FastifyPluginAsyncTypebox<PublicRoutesOptions> = async (app, { config, services, clock, metrics }) => {
  // The buyer token is checked before anything else of the request (its body, its product, its
  // idempotency key), only the rate limit comes first: a bad token is 401 whatever else is wrong.
  // Without BUYER_TOKEN_SECRET the service takes no buyers and an Authorization header on public
  // routes means nothing.
  app.decorateRequest('buyerId', null)
  const buyerTokens = config.buyerTokenSecret ? new BuyerTokens(config.buyerTokenSecret, clock) : undefined
  // A callback hook, not an async one: no promise for every hold (app.ts says why). It runs
  // once the rate limit let the request through, so a flood of forged tokens counts against its
  // sender's allowance like any other request (checked first, it never did: the twelfth
  // session's probe), and before the body is read.
  const buyerHook =
    (onRefused?: (error: Error) => void): BuyerHook =>
    (request, _reply, payload, done) => {
      try {
        request.buyerId = buyerTokens ? buyerTokens.buyerOf(request.headers.authorization) : null
      } catch (error) {
        onRefused?.(error as Error)
        done(error as Error)
        return
      }
      done(null, payload)
    }
  const identifyBuyer = buyerHook()
  await app.register(waitlistRoutes, { config, services, clock, metrics, identifyBuyer })
  // A hold refused for its token is a hold refusal like the others (flash_sale_holds_rejected_total,
  // the dashboard's hold_refusals): a shop's token secret out of step with the service's refuses
  // every buyer, and the refusals must show where the drop is watched. Refused before its body is
  // read, it names no product. Counted without a log line: the request's own line says 401.
  const identifyHoldBuyer = buyerHook((error) => {
    metrics.holdsRejected.inc({ reason: error instanceof DomainError ? error.code : 'invalid_buyer_token', product_id: '' })
    metrics.events.inc({ event: 'hold.rejected' })
  })

  // Holds and orders are created the same way: keyed, a buyer token optional (checked first),
  // 201 with the view, the same refusals; the generics keep body and reply typed per route.
  const keyedCreate = <Body extends TSchema, View extends TSchema>(tag: 'holds' | 'orders', perMin: number, body: Body, view: View) => ({
    config: rateLimit(perMin),
    preParsing: tag === 'holds' ? identifyHoldBuyer : identifyBuyer,
    schema: { tags: [tag], security: buyerSecurity, body, response: { 201: view, ...keyedCreateProblems } },
  })
  // GET of one hold or order by its id.
  const readById = <View extends TSchema>(tag: 'holds' | 'orders', view: View) => ({
    config: rateLimit(config.rateLimitReadPerMin),
    schema: { tags: [tag], params: ResourceParams, response: { 200: view, ...problemResponses([400, 404, 429, 503]) } },
  })
  app.get(
    '/api/products/:id',
    {
      config: rateLimit(config.rateLimitReadPerMin),
      schema: { tags: ['products'], params: ProductParams, response: { 200: ProductView, ...problemResponses([400, 404, 429, 503]) } },
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
      // A string is sent as it is; the type provider only knows the object form of the schema.
      return reply.type('application/json; charset=utf-8').send(body as never)
    },
  )

  const holdBodySchema = holdBody(config.maxQtyPerHold)
  app.post('/api/holds', keyedCreate('holds', config.rateLimitHoldPerMin, holdBodySchema, HoldView), async (request, reply) => {
    const answer = await services.holds.create(holdRequestOf(request.body, request.headers, request.buyerId), request.log)
    markReplay(reply, metrics, 'holds', answer.replayed)
    return reply.code(201).send(presentHold(answer.hold, clock.now(), answer.replayed))
  })

  // The bench's ceiling: everything POST /api/holds does before the domain (content type, JSON,
  // the same body schema, the key header, the rate limit), then an answer without the database.
  if (config.benchCeilingRoute) {
    app.post('/bench/hold-ceiling', { config: rateLimit(config.rateLimitHoldPerMin), schema: { hide: true, body: holdBodySchema } }, async (request) => {
      const { productId, qty } = holdRequestOf(request.body, request.headers)
      return { product_id: productId, qty }
    })
  }

  app.get('/api/holds/:id', readById('holds', HoldView), async (request) => presentHold(await services.holds.get(request.params.id), clock.now()))

  app.delete(
    '/api/holds/:id',
    { config: rateLimit(config.rateLimitHoldPerMin), schema: { tags: ['holds'], params: ResourceParams, response: { 200: HoldView, ...problemResponses([404, 409, 410, 429, 503]) } } },
    async (request) => presentHold(await services.holds.release(request.params.id, request.log), clock.now()),
  )

  // An order takes its hold's buyer whoever sends it (the hold id is the capability); a token
  // sent with it must still be valid.
  app.post('/api/orders', keyedCreate('orders', config.rateLimitOrderPerMin, OrderBody, OrderView), async (request, reply) => {
    const idempotencyKey = idempotencyKeyOf(request.headers, request.body.idempotency_key)
    const answer = await services.orders.create({ holdId: request.body.hold_id, idempotencyKey }, request.log)
    markReplay(reply, metrics, 'orders', answer.replayed)
    return reply.code(201).send(presentOrder(answer.order, clock.now(), answer.replayed))
  })

  app.get('/api/orders/:id', readById('orders', OrderView), async (request) => presentOrder(await services.orders.get(request.params.id), clock.now()))

  app.post(
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
      const idempotencyKey = idempotencyKeyOf(request.headers, body.idempotency_key)
      if (idempotencyKey === null) throw new DomainError('idempotency_key_required')
      const answer = await services.payments.receive(
        {
          idempotencyKey,
          orderId: body.order_id ?? null,
          holdId: body.hold_id ?? null,
          status: body.status,
          paymentId: body.payment_id ?? null,
          amount: body.amount ?? null,
        },
        request.log,
      )
      markReplay(reply, metrics, 'payments', answer.replayed)
      return reply.code(answer.body.state === 'accepted' ? 202 : 200).send(presentPayment(answer.body))
    },
  )
}
