// Small HTTP client for tests: real requests over loopback, JSON in and out.
import { signPayload } from '../../src/http/signature.js'

export interface Reply<T = any> {
  status: number
  headers: Headers
  body: T
  text: string
}

export interface RequestOptions {
  body?: unknown
  // Sent as is (for malformed JSON or other content types).
  rawBody?: string
  headers?: Record<string, string>
}

export async function request<T = any>(baseUrl: string, method: string, path: string, options: RequestOptions = {}): Promise<Reply<T>> {
  const headers: Record<string, string> = { ...options.headers }
  let body: string | undefined
  if (options.rawBody !== undefined) body = options.rawBody
  else if (options.body !== undefined) {
    body = JSON.stringify(options.body)
    headers['content-type'] ??= 'application/json'
  }
  const response = await fetch(`${baseUrl}${path}`, { method, headers, body })
  const text = await response.text()
  let parsed: unknown = undefined
  try {
    parsed = text ? JSON.parse(text) : undefined
  } catch {
    parsed = text
  }
  return { status: response.status, headers: response.headers, body: parsed as T, text }
}

export function times<T>(count: number, fn: (index: number) => T): T[] {
  return Array.from({ length: count }, (_, index) => fn(index))
}

export function countBy<T>(items: readonly T[], key: (item: T) => string | number): Record<string, number> {
  const counts: Record<string, number> = {}
  for (const item of items) {
    const name = String(key(item))
    counts[name] = (counts[name] ?? 0) + 1
  }
  return counts
}

// Headers for a webhook call: the signature over the exact bytes sent.
export function signedWebhook(secret: string, body: unknown, options: { key?: string; timestampS?: number } = {}): RequestOptions {
  const rawBody = JSON.stringify(body)
  const timestampS = options.timestampS ?? Math.floor(Date.now() / 1000)
  const headers: Record<string, string> = { 'content-type': 'application/json', 'webhook-signature': signPayload(secret, timestampS, rawBody) }
  if (options.key !== undefined) headers['idempotency-key'] = options.key
  return { rawBody, headers }
}
