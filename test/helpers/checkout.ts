// Buyer and payment-provider steps shared by the webhook and idempotency tests: each step checks
// its own status, so a test reads as the story it tells and a broken step names itself.
import { expect } from 'vitest'
import type { AuditReport } from '../../src/domain/audit.js'
import { testWebhookSecret, type TestApp } from './app.js'
import { request, signedWebhook, type Reply } from './http.js'

export const webhookEnv = { WEBHOOK_SECRET: testWebhookSecret }

export interface StockCounts {
  stock: number
  available_stock: number
  reserved: number
  sold: number
}

// Anything that serves the API: an in-process test app or a spawned server's base URL.
type Target = TestApp | string

function send<T = any>(target: Target, method: string, path: string, options: Parameters<typeof request>[3] = {}): Promise<Reply<T>> {
  return typeof target === 'string' ? request<T>(target, method, path, options) : target.request<T>(method, path, options)
}

export function isReplay(reply: Reply): boolean {
  return reply.headers.get('idempotent-replayed') === 'true'
}

export async function holdOf(target: Target, productId: number, qty: number): Promise<string> {
  const reply = await send(target, 'POST', '/api/holds', { body: { product_id: productId, qty } })
  expect(reply.status, reply.text).toBe(201)
  return reply.body.hold_id as string
}

export async function orderOf(target: Target, holdId: string): Promise<any> {
  const reply = await send(target, 'POST', '/api/orders', { body: { hold_id: holdId } })
  expect(reply.status, reply.text).toBe(201)
  return reply.body
}

// A hold of qty units turned into a pending order.
export async function pendingOrder(target: Target, productId: number, qty: number): Promise<{ holdId: string; orderId: string }> {
  const holdId = await holdOf(target, productId, qty)
  const order = await orderOf(target, holdId)
  expect(order.status).toBe('pending')
  return { holdId, orderId: order.order_id as string }
}

export async function getOrder(target: Target, orderId: string): Promise<any> {
  const reply = await send(target, 'GET', `/api/orders/${orderId}`)
  expect(reply.status, reply.text).toBe(200)
  return reply.body
}

export async function stockOf(target: Target, productId: number): Promise<StockCounts> {
  const reply = await send(target, 'GET', `/api/products/${productId}`)
  expect(reply.status, reply.text).toBe(200)
  const { stock, available_stock, reserved, sold } = reply.body
  return { stock, available_stock, reserved, sold }
}

// A webhook call signed with the server's own clock (the signature's tolerance is measured
// against it), so a test that advances the manual clock still sends a fresh signature.
export function webhook(t: TestApp, body: unknown, key: string, options: { timestampS?: number; secret?: string } = {}): Promise<Reply> {
  const timestampS = options.timestampS ?? serverTimestampS(t)
  return t.request('POST', '/api/payments/webhook', signedWebhook(options.secret ?? testWebhookSecret, body, { key, timestampS }))
}

export function serverTimestampS(t: TestApp): number {
  return Math.floor(t.clock.now().getTime() / 1000)
}

export function processed(fields: { hold_id: string; order_id: string | null; order_status: string | null; outcome: string }) {
  return { status: 'processed', ...fields }
}

export function accepted(holdId: string) {
  return { status: 'accepted', hold_id: holdId, order_id: null, order_status: null, outcome: null }
}

export const cleanAudit: Partial<AuditReport> = { ok: true, violations: [] }
