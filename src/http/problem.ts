// The one place an error becomes an HTTP answer: RFC 9457 problem details with a stable `code`.
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify'
import { STATUS_CODES, type ServerResponse } from 'node:http'
import type { Duplex } from 'node:stream'
import { AssertionError } from '../domain/assert.js'
import { DomainError, type ErrorCode } from '../domain/errors.js'

export const statusByCode = {
  product_not_found: 404,
  insufficient_stock: 409,
  hold_not_found: 404,
  hold_expired: 410,
  hold_already_used: 409,
  hold_released: 409,
  order_not_found: 404,
  amount_mismatch: 422,
  idempotency_key_reused: 422,
  idempotency_key_in_flight: 409,
  idempotency_key_required: 422,
  invalid_signature: 401,
  stock_below_committed: 409,
  validation_failed: 422,
  malformed_json: 400,
  unsupported_media_type: 415,
  payload_too_large: 413,
  not_found: 404,
  unauthorized: 401,
  rate_limited: 429,
  busy: 503,
  internal_error: 500,
  bad_request: 400,
  invalid_buyer_token: 401,
  buyer_token_required: 401,
  buyer_limit_reached: 409,
  sale_not_started: 409,
  sale_ended: 410,
  ticket_not_found: 404,
  ticket_admitted: 409,
  headers_too_large: 431,
  request_timeout: 408,
} as const satisfies Record<ErrorCode, number>

const titleByCode: Record<ErrorCode, string> = {
  product_not_found: 'Product not found',
  insufficient_stock: 'Not enough stock available',
  hold_not_found: 'Hold not found',
  hold_expired: 'Hold has expired',
  hold_already_used: 'Hold has already become an order',
  hold_released: 'Hold was released',
  order_not_found: 'Order not found',
  amount_mismatch: 'Paid amount differs from the order amount',
  idempotency_key_reused: 'Idempotency key was used with a different request',
  idempotency_key_in_flight: 'A request with this idempotency key is still being processed',
  idempotency_key_required: 'Idempotency key is required',
  invalid_signature: 'Webhook signature is missing, invalid or stale',
  stock_below_committed: 'Stock cannot fall below reserved and sold units',
  validation_failed: 'Request fields are invalid',
  malformed_json: 'Request body is not valid JSON',
  unsupported_media_type: 'Request body must be application/json',
  payload_too_large: 'Request body is too large',
  not_found: 'No such route',
  unauthorized: 'Missing or invalid credentials',
  rate_limited: 'Too many requests',
  busy: 'Service is busy, retry shortly',
  internal_error: 'Internal error',
  bad_request: 'Bad request',
  invalid_buyer_token: 'Buyer token is malformed, forged or expired',
  buyer_token_required: 'This product needs a buyer token',
  buyer_limit_reached: 'The buyer already has as many units as the product allows',
  sale_not_started: 'The sale has not started yet',
  sale_ended: 'The sale has ended',
  ticket_not_found: 'Waitlist ticket not found',
  ticket_admitted: 'The ticket was admitted: it is a hold now',
  headers_too_large: 'Request headers are too large',
  request_timeout: 'The request was not received in time',
}

export interface FieldError {
  field: string
  message: string
}

// The body of a problem answer: RFC 9457 fields and the stable code, then the details.
function problemBody(code: ErrorCode, details: Record<string, unknown>): Record<string, unknown> {
  return { type: 'about:blank', title: titleByCode[code], status: statusByCode[code], code, ...details }
}

export function sendProblem(reply: FastifyReply, code: ErrorCode, details: Record<string, unknown> = {}): FastifyReply {
  const status = statusByCode[code]
  if (code === 'busy' || code === 'rate_limited' || code === 'sale_not_started') {
    if (!reply.hasHeader('retry-after')) reply.header('retry-after', String(details.retry_after_s ?? 1))
  }
  return reply.code(status).type('application/problem+json').send(problemBody(code, details))
}

// Requests Node's HTTP parser refuses before Fastify sees them (headers over its 16 KB limit, a
// request not received within its timeout, bytes that are not HTTP) are answered on the socket.
// Fastify's own handler wrote `{"error":…,"statusCode":431}` without a code (the thirteenth
// session's probe); these are problems like every other refusal.
export function clientErrorProblem(error: Error & { code?: string }, socket: Duplex): void {
  // A reset connection has nobody to answer.
  if (error.code === 'ECONNRESET' || socket.destroyed) return
  // The parser may report a connection's error more than once: it is answered once.
  if (refusedConnections.has(socket)) return
  refusedConnections.add(socket)
  // Cleared when the connection closes, so a flood of refused connections holds no timers.
  const timer = setTimeout(() => socket.destroy(), answersWaitMaxMs).unref()
  socket.once('close', () => clearTimeout(timer))
  answerThenRefuse(socket, error)
}

// Bytes the parser refuses after requests it took whole on the same connection (pipelined):
// those requests are carried out, and HTTP/1.1 pairs answers with requests in order, so a
// problem written at once was read as the first one's answer (a hold granted but seen refused;
// the thirteenth session's second probe). Their answers go out first, in order, then the
// problem, the answer to the refused bytes. A request whose own body the parser refused (a bad
// chunk) was never taken: the problem is its answer, at once.
function answerThenRefuse(socket: Duplex, error: Error & { code?: string }): void {
  if (socket.destroyed) return
  const response = (socket as Duplex & { _httpMessage?: ServerResponse | null })._httpMessage
  if (response && !response.writableFinished && response.req.complete) {
    // Node's own 'finish' listener, added first, hands the connection to the next answer.
    response.once('finish', () => answerThenRefuse(socket, error))
    return
  }
  const code: ErrorCode = error.code === 'HPE_HEADER_OVERFLOW' ? 'headers_too_large' : error.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 'request_timeout' : 'bad_request'
  const status = statusByCode[code]
  const body = JSON.stringify(problemBody(code, {}))
  if (socket.writable) {
    socket.write(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nConnection: close\r\nContent-Type: application/problem+json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
    )
  }
  // A request whose own body was refused may still be answered when its body stream fails: the
  // connection goes at once, as Node's own handler does, so nothing is written after the
  // problem. Otherwise FIN after it: a destroy with unread bytes can reset the connection and
  // drop what is still unsent, the earlier answers included.
  if (response) socket.destroy(error)
  else socket.end()
}

// Connections whose refused bytes are being answered.
const refusedConnections = new WeakSet<Duplex>()
// How long such a connection may stay open: its earlier answers, then the client closing it.
const answersWaitMaxMs = 30_000

// Ajv's instancePath ("/qty") or missingProperty names the field; the body root is "body".
export function fieldErrors(error: FastifyError): FieldError[] {
  return (error.validation ?? []).map((issue) => {
    const missing = (issue.params as { missingProperty?: string } | undefined)?.missingProperty
    const path = issue.instancePath.replace(/^\//, '').replaceAll('/', '.')
    const field = missing ? (path ? `${path}.${missing}` : missing) : path || (error.validationContext ?? 'body')
    return { field, message: issue.message ?? 'is invalid' }
  })
}

// The longest id a route is matched with. A longer one matches no route, and names no stored
// row either (ids are far shorter): it is answered as that resource's not-found (overlongIdCode).
export const idCharsRoutedMax = 1024

// The public routes ending in an id, with the code their handlers answer for an unknown one.
const overlongIdRoutes: ReadonlyArray<[RegExp, ErrorCode]> = [
  [/^\/api\/holds\/[^/]+$/, 'hold_not_found'],
  [/^\/api\/orders\/[^/]+$/, 'order_not_found'],
  [/^\/api\/waitlist\/[^/]+$/, 'ticket_not_found'],
  [/^\/api\/products\/[^/]+(\/waitlist)?$/, 'product_not_found'],
]

// What an unknown id of that route is answered, for a URL whose id was too long to be routed.
function overlongIdCode(url: string): ErrorCode | undefined {
  const path = url.split('?', 1)[0]!
  const id = path.split('/')[3]
  if (id === undefined || id.length <= idCharsRoutedMax) return undefined
  return overlongIdRoutes.find(([pattern]) => pattern.test(path))?.[1]
}

const frameworkCodes: Record<string, ErrorCode> = {
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'unsupported_media_type',
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'bad_request',
  FST_ERR_CTP_BODY_TOO_LARGE: 'payload_too_large',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'malformed_json',
  FST_ERR_CTP_INVALID_JSON_BODY: 'malformed_json',
  FST_ERR_BAD_URL: 'bad_request',
}

export function errorHandler(error: FastifyError | DomainError | Error, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  if (error instanceof DomainError) {
    if (error.code === 'busy') request.log.warn({ err: error.message }, 'request.busy')
    if (statusByCode[error.code] >= 500 && error.code !== 'busy') request.log.error({ err: error }, 'request.failed')
    return sendProblem(reply, error.code, error.details)
  }
  const fastifyError = error as FastifyError
  if (fastifyError.validation) {
    const errors = fieldErrors(fastifyError)
    return sendProblem(reply, 'validation_failed', { errors, invalid_fields: [...new Set(errors.map((entry) => entry.field))] })
  }
  // An id longer than any id we issue names nothing.
  if (fastifyError.code === 'FST_ERR_MAX_PARAM_LENGTH') return sendProblem(reply, overlongIdCode(request.url) ?? 'not_found')
  const mapped = fastifyError.code ? frameworkCodes[fastifyError.code] : undefined
  if (mapped) return sendProblem(reply, mapped)
  if (!(error instanceof AssertionError) && typeof fastifyError.statusCode === 'number' && fastifyError.statusCode >= 400 && fastifyError.statusCode < 500) {
    return sendProblem(reply, fastifyError.statusCode === 404 ? 'not_found' : fastifyError.statusCode === 415 ? 'unsupported_media_type' : 'bad_request')
  }
  // Anything else is our bug: logged with the request id, answered without internals.
  request.log.error({ err: error }, 'request.failed')
  return sendProblem(reply, 'internal_error')
}
