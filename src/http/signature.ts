import { createHmac, timingSafeEqual } from 'node:crypto'

// Webhook-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>.
export function signPayload(secret: string, timestampS: number, rawBody: string): string {
  const digest = createHmac('sha256', secret).update(`${timestampS}.${rawBody}`).digest('hex')
  return `t=${timestampS},v1=${digest}`
}

// Compared in constant time; more than one v1 is allowed (secret rotation on the sender's side).
export function verifySignature(options: { secret: string; header: string | undefined; rawBody: string; now: Date; toleranceMs: number }): boolean {
  const { header } = options
  if (!header || header.length > 1024) return false
  let timestampS: number | undefined
  const candidates: string[] = []
  for (const part of header.split(',')) {
    const [name, value] = part.trim().split('=', 2)
    if (name === 't' && value && /^\d{1,12}$/.test(value)) timestampS = Number(value)
    if (name === 'v1' && value && /^[0-9a-f]{64}$/i.test(value)) candidates.push(value.toLowerCase())
  }
  if (timestampS === undefined || candidates.length === 0) return false
  // In whole seconds, as the header states them (and as Stripe's library compares): in
  // milliseconds, a timestamp exactly the tolerance in the past was always refused (now is a
  // fraction of a second past its second) and one exactly in the future accepted.
  if (Math.abs(Math.floor(options.now.getTime() / 1000) - timestampS) > Math.floor(options.toleranceMs / 1000)) return false
  const expected = Buffer.from(createHmac('sha256', options.secret).update(`${timestampS}.${options.rawBody}`).digest('hex'))
  let matched = false
  for (const candidate of candidates) {
    // Every candidate is compared, so the time taken does not depend on which one matched.
    if (timingSafeEqual(expected, Buffer.from(candidate))) matched = true
  }
  return matched
}

export function constantTimeEqual(given: string, expected: string): boolean {
  const givenBytes = Buffer.from(given)
  const expectedBytes = Buffer.from(expected)
  // Compare digests of equal length so neither the content nor the length leaks through timing.
  const a = createHmac('sha256', 'compare').update(givenBytes).digest()
  const b = createHmac('sha256', 'compare').update(expectedBytes).digest()
  return timingSafeEqual(a, b) && givenBytes.length === expectedBytes.length
}
