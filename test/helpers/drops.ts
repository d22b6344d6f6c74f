// Steps shared by the drop tests (buyers, per-buyer limits, sale windows), all over HTTP against a
// base URL, so the same step serves an in-process test app and a spawned server process: products
// with drop settings made through the admin API, holds as a buyer, and the admin audit endpoint.
import { expect } from 'vitest'
import { testAdminToken, type TestApp } from './app.js'
import { request, type Reply } from './http.js'
import { catalogueViolation } from './problem-checks.js'

export const adminHeaders = { authorization: `Bearer ${testAdminToken}` }

export interface DropSettings {
  per_buyer_limit?: number | null
  sale_starts_at?: string | null
  sale_ends_at?: string | null
}

// Creates a product through POST /api/admin/products and checks the answer shows the settings as
// sent (instants as ISO 8601 UTC), so a test whose product lacks them fails here, naming why.
export async function createDropProduct(baseUrl: string, stock: number, settings: DropSettings = {}, price = '10.00'): Promise<any> {
  const reply = await request(baseUrl, 'POST', '/api/admin/products', { body: { name: `drop ${stock}`, price, stock, ...settings }, headers: adminHeaders })
  expect(reply.status, reply.text).toBe(201)
  expect(reply.body, 'the created product shows its drop settings').toMatchObject({
    per_buyer_limit: settings.per_buyer_limit ?? null,
    sale_starts_at: settings.sale_starts_at == null ? null : new Date(settings.sale_starts_at).toISOString(),
    sale_ends_at: settings.sale_ends_at == null ? null : new Date(settings.sale_ends_at).toISOString(),
  })
  return reply.body
}

export function patchProduct(baseUrl: string, productId: number, body: unknown): Promise<Reply> {
  return request(baseUrl, 'PATCH', `/api/admin/products/${productId}`, { body, headers: adminHeaders })
}

export async function productOf(baseUrl: string, productId: number): Promise<any> {
  const reply = await request(baseUrl, 'GET', `/api/products/${productId}`)
  expect(reply.status, reply.text).toBe(200)
  return reply.body
}

export function holdAs(baseUrl: string, headers: Record<string, string>, productId: number, qty: number, extraHeaders: Record<string, string> = {}): Promise<Reply> {
  return request(baseUrl, 'POST', '/api/holds', { body: { product_id: productId, qty }, headers: { ...headers, ...extraHeaders } })
}

export function orderAs(baseUrl: string, headers: Record<string, string>, holdId: string): Promise<Reply> {
  return request(baseUrl, 'POST', '/api/orders', { body: { hold_id: holdId }, headers })
}

// An unsigned webhook call (the drop tests run without WEBHOOK_SECRET).
export function paymentOf(baseUrl: string, orderId: string, status: 'success' | 'failed', key: string): Promise<Reply> {
  return request(baseUrl, 'POST', '/api/payments/webhook', { body: { order_id: orderId, status }, headers: { 'idempotency-key': key } })
}

// The audit as an operator sees it (GET /api/admin/audit): clean, whatever facts the report adds
// (I8 among them once buyers exist).
export async function expectCleanAudit(baseUrl: string): Promise<void> {
  const reply = await request(baseUrl, 'GET', '/api/admin/audit', { headers: adminHeaders })
  expect(reply.status, reply.text).toBe(200)
  expect(reply.body).toMatchObject({ ok: true, violations: [] })
}

// A problem answer with this status and code, whose code is in the error catalogue with that
// status (codes typed as strings: the drop codes join the catalogue with the feature).
export function expectProblemCode(reply: Reply, status: number, code: string): void {
  expect({ status: reply.status, body: reply.body }, reply.text).toMatchObject({ status, body: { type: 'about:blank', status, code } })
  expect(reply.headers.get('content-type')).toMatch(/^application\/problem\+json/)
  expect(catalogueViolation(reply)).toBeUndefined()
}

// A 409 buyer_limit_reached with the numbers SPEC §8 puts in it.
export function expectLimitReached(reply: Reply, perBuyerLimit: number, buyerUnits: number): void {
  expect({ status: reply.status, body: reply.body }, reply.text).toMatchObject({
    status: 409,
    body: { type: 'about:blank', status: 409, code: 'buyer_limit_reached', per_buyer_limit: perBuyerLimit, buyer_units: buyerUnits },
  })
  expect(catalogueViolation(reply)).toBeUndefined()
}

export function isoAt(epochMs: number): string {
  return new Date(epochMs).toISOString()
}

// The test app's manual clock, as epoch ms.
export function serverNowMs(t: TestApp): number {
  return t.clock.now().getTime()
}

// Moves the manual clock to `instant` plus offsetMs (never backwards).
export function advanceTo(t: TestApp, instant: string, offsetMs = 0): void {
  const deltaMs = Date.parse(instant) + offsetMs - serverNowMs(t)
  expect(deltaMs).toBeGreaterThanOrEqual(0)
  t.clock.advanceMs(deltaMs)
}
