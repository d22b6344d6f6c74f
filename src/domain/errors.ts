// The error-code catalogue. Append-only: a code is never renamed, reused or given a new meaning,
// because clients branch on it. http/problem.ts maps each code to a status; a code missing there
// fails to compile.
export const errorCodes = [
  'product_not_found',
  'insufficient_stock',
  'hold_not_found',
  'hold_expired',
  'hold_already_used',
  'hold_released',
  'order_not_found',
  'amount_mismatch',
  'idempotency_key_reused',
  'idempotency_key_in_flight',
  'idempotency_key_required',
  'invalid_signature',
  'stock_below_committed',
  'validation_failed',
  'malformed_json',
  'unsupported_media_type',
  'payload_too_large',
  'not_found',
  'unauthorized',
  'rate_limited',
  'busy',
  'internal_error',
  'bad_request',
  'invalid_buyer_token',
  'buyer_token_required',
  'buyer_limit_reached',
  'sale_not_started',
  'sale_ended',
  'ticket_not_found',
  'ticket_admitted',
  'headers_too_large',
  'request_timeout',
] as const

export type ErrorCode = (typeof errorCodes)[number]

export type ErrorDetails = Record<string, unknown>

// An expected failure (no stock, an expired hold, bad input). Broken invariants are not
// DomainErrors: they are assertion failures, so the transaction that found them rolls back.
export class DomainError extends Error {
  override name = 'DomainError'
  constructor(
    readonly code: ErrorCode,
    readonly details: ErrorDetails = {},
    message?: string,
  ) {
    super(message ?? code)
  }
}
