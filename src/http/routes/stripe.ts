// POST /api/payments/stripe (SPEC §3): Stripe's own webhook events, for shops that take payments
// through Stripe. Registered only when STRIPE_WEBHOOK_SECRET is set (404 otherwise, like any
// unknown route). The signature is checked over the raw bytes before anything else; the event
// then goes through the same payment use case as the generic webhook, so every rule of it
// (early, late, duplicate, amount) holds here too.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import type { FastifyRequest } from 'fastify'
import type Stripe from 'stripe'
import type { Config } from '../../config.js'
import type { Clock } from '../../domain/clock.js'
import type { Observer } from '../../domain/events.js'
import { formatAmount, isSupportedCurrency } from '../../domain/money.js'
import type { Services } from '../../domain/services.js'
import type { Metrics } from '../../observability/metrics.js'
import { presentPayment } from '../present.js'
import { problemResponses, WebhookAnswer } from '../schemas/index.js'

const IgnoredAnswer = Type.Object({
  status: Type.Literal('ignored'),
  event_id: Type.String(),
  event_type: Type.String(),
})

export interface StripeRoutesOptions {
  config: Config
  clock: Clock
  services: Services
  observer: Observer
  metrics: Metrics
}

export const stripeRoutes: FastifyPluginAsyncTypebox<StripeRoutesOptions> = async (app, { config, clock, services, observer, metrics }) => {
  const secret = config.stripeWebhookSecret
  if (!secret) return
  // Loaded only when Stripe is configured: the package adds to every process's start-up.
  const { translateStripeEvent, verifyStripeEvent } = await import('../stripe-events.js')
  const verified = new WeakMap<FastifyRequest, Stripe.Event>()

  app.post(
    '/api/payments/stripe',
    {
      // Stripe's deliveries are authenticated by their signature, and are not rate-limited.
      config: { rateLimit: false },
      schema: {
        tags: ['payments'],
        summary: 'Stripe webhook events (payment_intent.succeeded, payment_intent.payment_failed)',
        headers: { type: 'object', properties: { 'stripe-signature': { type: 'string' } } },
        response: { 200: Type.Union([WebhookAnswer, IgnoredAnswer]), 202: WebhookAnswer, ...problemResponses([400, 401, 404, 413, 415, 422, 503]) },
      },
      preValidation: async (request) => {
        const header = request.headers['stripe-signature']
        const event = verifyStripeEvent({
          rawBody: request.rawBody ?? '',
          header: Array.isArray(header) ? header[0] : header,
          secret,
          now: clock.now(),
          toleranceMs: config.webhookToleranceMs,
        })
        verified.set(request, event)
      },
    },
    async (request, reply) => {
      const event = verified.get(request)!
      const translation = translateStripeEvent(event)
      if (translation.kind === 'ignored') {
        // Answered 200 so Stripe does not retry it; the log line and counter record it.
        observer.emit({ name: 'payment.ignored', key: translation.idempotencyKey, eventType: translation.eventType, reason: translation.reason }, request.log)
        return reply.code(200).send({ status: 'ignored', event_id: translation.idempotencyKey, event_type: translation.eventType })
      }
      const { payment } = translation
      // The amount in the event's own currency; the use case refuses a currency that is not the
      // order's before it reads the amount.
      const amount =
        payment.amountMinor === null
          ? null
          : payment.currency && isSupportedCurrency(payment.currency)
            ? formatAmount(payment.amountMinor, payment.currency)
            : String(payment.amountMinor)
      const answer = await services.payments.receive(
        {
          idempotencyKey: payment.idempotencyKey,
          orderId: payment.orderId,
          holdId: payment.holdId,
          status: payment.status,
          paymentId: payment.paymentId,
          amount,
          currency: payment.currency,
        },
        request.log,
      )
      if (answer.replayed) {
        reply.header('idempotent-replayed', 'true')
        metrics.replays.inc({ scope: 'payments' })
      }
      return reply.code(answer.body.state === 'accepted' ? 202 : 200).send(presentPayment(answer.body))
    },
  )
}
