// The waitlist (SPEC §8): take a place in line, see it, leave it.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyReply, FastifyRequest, RequestPayload } from 'fastify'
import type { Config } from '../../config.js'
import type { Clock } from '../../domain/clock.js'
import { DomainError } from '../../domain/errors.js'
import { parseProductId } from '../../domain/ids.js'
import type { Services } from '../../domain/services.js'
import type { TicketView as Ticket } from '../../domain/waitlist.js'
import type { Metrics } from '../../observability/metrics.js'
import { presentTicket } from '../present.js'
import { ProductParams, ResourceParams, TicketView, problemResponses, waitlistBody } from '../schemas/index.js'
import { buyerSecurity, idempotencyKeyOf, markReplay, qtyOf, rateLimit } from '../request-parts.js'

// The buyer-token check of the routes that take buyers (public.ts): sets request.buyerId. A
// preParsing hook: after the rate limit (an onRequest hook), before the body is read.
export type BuyerHook = (request: FastifyRequest, reply: FastifyReply, payload: RequestPayload, done: (error?: Error | null, payload?: RequestPayload) => void) => void

export interface WaitlistRoutesOptions {
  config: Config
  services: Services
  clock: Clock
  metrics: Metrics
  identifyBuyer: BuyerHook
}

// Seconds a waiting client should let pass before asking again: the sweeper serves the line
// once per interval (requests that free units serve it sooner). Capped for long intervals.
const retryAfterMaxS = 60

function retryAfterS(sweepIntervalMs: number): number {
  return Math.max(1, Math.min(retryAfterMaxS, Math.ceil(sweepIntervalMs / 1000)))
}

export const waitlistRoutes: FastifyPluginAsyncTypebox<WaitlistRoutesOptions> = async (app, { config, services, clock, metrics, identifyBuyer }) => {
  const answer = (reply: FastifyReply, view: Ticket) => {
    if (view.status === 'waiting') reply.header('retry-after', String(retryAfterS(config.sweepIntervalMs)))
    return presentTicket(view)
  }

  app.post(
    '/api/products/:id/waitlist',
    {
      config: rateLimit(config.rateLimitHoldPerMin),
      preParsing: identifyBuyer,
      schema: {
        tags: ['waitlist'],
        security: buyerSecurity,
        params: ProductParams,
        body: waitlistBody(config.maxQtyPerHold),
        response: { 201: TicketView, ...problemResponses([400, 401, 404, 409, 410, 413, 415, 422, 429, 503]) },
      },
    },
    async (request, reply) => {
      // The body is judged before the product, as its schema was when qty had no alias.
      const qty = qtyOf(request.body)
      const productId = parseProductId(request.params.id)
      if (productId === undefined) throw new DomainError('product_not_found')
      const idempotencyKey = idempotencyKeyOf(request.headers, request.body.idempotency_key)
      const joined = await services.waitlist.join({ productId, qty, idempotencyKey, buyerId: request.buyerId }, request.log)
      markReplay(reply, metrics, 'waitlist', joined.replayed)
      return reply.code(201).send(answer(reply, joined.view))
    },
  )

  app.get(
    '/api/waitlist/:id',
    { config: rateLimit(config.rateLimitReadPerMin), schema: { tags: ['waitlist'], params: ResourceParams, response: { 200: TicketView, ...problemResponses([400, 404, 429, 503]) } } },
    async (request, reply) => answer(reply, await services.waitlist.get(request.params.id)),
  )

  app.delete(
    '/api/waitlist/:id',
    {
      config: rateLimit(config.rateLimitHoldPerMin),
      schema: { tags: ['waitlist'], params: ResourceParams, response: { 200: TicketView, ...problemResponses([400, 404, 409, 429, 503]) } },
    },
    async (request, reply) => answer(reply, await services.waitlist.leave(request.params.id, request.log)),
  )
}
