// Stripe's webhook events, verified and translated into the service's own payment request, so a
// shop taking payments through Stripe writes no translation (SPEC §3 POST /api/payments/stripe).
// Verification and event types come from the official `stripe` package; what an event does is
// decided by the same payment use case as the generic webhook (early, late, duplicate, amount).
import Stripe from 'stripe'
import { DomainError } from '../domain/errors.js'

export interface StripePayment {
  // The event id (evt_…): Stripe's retries of one event carry it again.
  idempotencyKey: string
  orderId: string | null
  holdId: string | null
  status: 'success' | 'failed'
  // The PaymentIntent (pi_…).
  paymentId: string
  amountMinor: number | null
  // ISO 4217, upper case (Stripe sends lower case).
  currency: string | null
}

export type StripeTranslation = { kind: 'payment'; payment: StripePayment } | { kind: 'ignored'; idempotencyKey: string; eventType: string; reason: string }

const statusByEventType: Record<string, StripePayment['status'] | undefined> = {
  'payment_intent.succeeded': 'success',
  'payment_intent.payment_failed': 'failed',
}

// Ids and keys are stored in columns of at most this many characters.
const idLengthMax = 255
const visibleAscii = /^[\x21-\x7E]{1,255}$/

// Checks the Stripe-Signature header over the raw bytes with the official library (its
// tolerance against our clock, so tests that move the clock sign accordingly), and refuses a
// timestamp from the future beyond the same tolerance, as the generic webhook does.
export function verifyStripeEvent(options: { rawBody: string; header: string | undefined; secret: string; now: Date; toleranceMs: number }): Stripe.Event {
  const { header } = options
  if (!header || header.length > 4096) throw new DomainError('invalid_signature')
  const timestampS = Number(/(?:^|,)\s*t=(\d{1,12})(?:,|$)/.exec(header)?.[1])
  if (!Number.isFinite(timestampS) || timestampS - Math.floor(options.now.getTime() / 1000) > Math.floor(options.toleranceMs / 1000)) throw new DomainError('invalid_signature')
  try {
    return Stripe.webhooks.constructEvent(options.rawBody, header, options.secret, Math.floor(options.toleranceMs / 1000), undefined, options.now.getTime())
  } catch {
    throw new DomainError('invalid_signature')
  }
}

export function translateStripeEvent(event: Stripe.Event): StripeTranslation {
  // A signed body may still be any JSON (null, an array): only an object with an id is an event.
  const idempotencyKey = typeof event === 'object' && event !== null && typeof event.id === 'string' ? event.id : ''
  if (!visibleAscii.test(idempotencyKey)) {
    throw new DomainError('validation_failed', { errors: [{ field: 'id', message: 'must be 1-255 visible ASCII characters' }], invalid_fields: ['id'] })
  }
  const eventType = String(event.type)
  const status = statusByEventType[eventType]
  if (!status) return { kind: 'ignored', idempotencyKey, eventType, reason: 'event_type' }
  const object: unknown = (event.data as { object?: unknown } | null | undefined)?.object
  if (typeof object !== 'object' || object === null || Array.isArray(object)) {
    throw new DomainError('validation_failed', { errors: [{ field: 'data.object', message: 'must be the PaymentIntent' }], invalid_fields: ['data.object'] })
  }
  const intent = object as Partial<Stripe.PaymentIntent>
  // An amount that is there but not whole minor units cannot match the order's: refused, never
  // taken for no amount (which skips the check).
  for (const field of ['amount', 'amount_received'] as const) {
    const value: unknown = intent[field]
    if (value !== undefined && value !== null && !(Number.isSafeInteger(value) && (value as number) >= 0)) {
      throw new DomainError('validation_failed', { errors: [{ field: `data.object.${field}`, message: 'must be whole minor units' }], invalid_fields: [`data.object.${field}`] })
    }
  }
  const metadata = typeof intent.metadata === 'object' && intent.metadata !== null ? intent.metadata : {}
  const orderId = textOrNull(metadata.order_id)
  // Both kept: where both are named the order must be made from that hold (checked as on the
  // generic webhook; a black-box probe found the hold ignored here and the order paid).
  const holdId = textOrNull(metadata.hold_id)
  if (orderId === null && holdId === null) return { kind: 'ignored', idempotencyKey, eventType, reason: 'no_order_or_hold' }
  // A success is judged on what was received; a failure names what was attempted.
  const amount = status === 'success' ? (intent.amount_received ?? intent.amount) : intent.amount
  // Stripe always states the amounts; a success stating none would be paid unchecked (the fifth
  // probe: both null answered 200 paid).
  if (status === 'success' && (amount === undefined || amount === null)) {
    throw new DomainError('validation_failed', {
      errors: [{ field: 'data.object.amount_received', message: 'a succeeded PaymentIntent states the amount received' }],
      invalid_fields: ['data.object.amount_received'],
    })
  }
  return {
    kind: 'payment',
    payment: {
      idempotencyKey,
      orderId,
      holdId,
      status,
      // Stripe's ids are visible ASCII; anything else (a NUL, which PostgreSQL refuses in text and
      // which failed the whole batch with a 500) is not kept: the event id stands in.
      paymentId: typeof intent.id === 'string' && visibleAscii.test(intent.id) ? intent.id : idempotencyKey,
      amountMinor: amount ?? null,
      currency: typeof intent.currency === 'string' ? intent.currency.toUpperCase() : null,
    },
  }
}

function textOrNull(value: unknown): string | null {
  return typeof value === 'string' && value.length > 0 && value.length <= idLengthMax ? value : null
}
