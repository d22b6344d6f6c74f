// What several route plugins read from a request the same way: the idempotency key, the
// optional buyer token's OpenAPI security, the per-route rate limit, the replay header.
import type { FastifyContextConfig, FastifyReply, FastifyRequest } from 'fastify'
import { DomainError } from '../domain/errors.js'
import type { Metrics } from '../observability/metrics.js'

// A buyer token is optional on these routes (required by a product with a per-buyer limit).
export const buyerSecurity: Array<Record<string, string[]>> = [{}, { buyer: [] }]

const idempotencyKeyPattern = /^[\x21-\x7E]{1,255}$/

// The key may come in the Idempotency-Key header or the body; if both, they must agree.
export function idempotencyKeyOf(headers: FastifyRequest['headers'], bodyKey: string | undefined): string | null {
  const header = headers['idempotency-key']
  const headerKey = Array.isArray(header) ? header[0] : header
  if (headerKey !== undefined && !idempotencyKeyPattern.test(headerKey)) {
    throw new DomainError('validation_failed', { errors: [{ field: 'Idempotency-Key', message: 'must be 1 to 255 visible ASCII characters' }], invalid_fields: ['Idempotency-Key'] })
  }
  if (headerKey !== undefined && bodyKey !== undefined && headerKey !== bodyKey) {
    throw new DomainError('validation_failed', { errors: [{ field: 'idempotency_key', message: 'differs from the Idempotency-Key header' }], invalid_fields: ['idempotency_key'] })
  }
  return headerKey ?? bodyKey ?? null
}

// `qty`, or its alias `quantity` (holds and waitlist joins take both; both given must agree).
export function qtyOf(body: { qty?: number; quantity?: number }): number {
  const qty = body.qty ?? body.quantity
  if (qty === undefined) throw new DomainError('validation_failed', { errors: [{ field: 'qty', message: "must have required property 'qty'" }], invalid_fields: ['qty'] })
  if (body.qty !== undefined && body.quantity !== undefined && body.qty !== body.quantity) {
    throw new DomainError('validation_failed', { errors: [{ field: 'quantity', message: 'differs from qty' }], invalid_fields: ['quantity'] })
  }
  return qty
}

export function markReplay(reply: FastifyReply, metrics: Metrics, scope: string, replayed: boolean): void {
  if (!replayed) return
  reply.header('idempotent-replayed', 'true')
  metrics.replays.inc({ scope })
}

export function rateLimit(perMin: number): FastifyContextConfig {
  return perMin > 0 ? { rateLimit: { max: perMin, timeWindow: 60_000 } } : { rateLimit: false as const }
}
