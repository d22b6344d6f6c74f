// The bench's load generator writes a fresh header into every request (bench/load.ts
// freshHeaderRequests): each request a server receives carries its own key, the first request
// of every connection included, with the body and the other headers intact.
import { createServer, type IncomingMessage } from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { cannon } from '../bench/load.js'

interface Received {
  key: string | undefined
  contentType: string | undefined
  body: string
}

describe('bench load generator: a fresh header each request', () => {
  const received: Received[] = []
  const server = createServer((request: IncomingMessage, response) => {
    const chunks: Buffer[] = []
    request.on('data', (chunk: Buffer) => chunks.push(chunk))
    request.on('end', () => {
      received.push({ key: request.headers['idempotency-key'] as string | undefined, contentType: request.headers['content-type'], body: Buffer.concat(chunks).toString('utf8') })
      response.writeHead(201, { 'content-type': 'application/json' }).end('{"ok":true}')
    })
  })
  let url = ''
  beforeAll(async () => {
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/api/holds`
  })
  afterAll(async () => {
    server.closeAllConnections()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  })

  it('sends every request with its own key, and the body and headers of the prepared request', async () => {
    const body = JSON.stringify({ product_id: 7, qty: 1, note: 'é' })
    const minted = new Set<string>()
    let sequence = 0
    const result = await cannon({
      label: 'fresh keys',
      url,
      connections: 8,
      durationS: 1,
      method: 'POST',
      body,
      headersPerRequest: () => {
        const key = `k-${++sequence}`
        minted.add(key)
        return { 'idempotency-key': key }
      },
    })
    const answered = result.statusCounts['201'] ?? 0
    expect(answered).toBeGreaterThan(100)
    expect(received.length).toBeGreaterThanOrEqual(answered)
    const keys = received.map((request) => request.key)
    expect(keys.every((key) => key !== undefined && minted.has(key))).toBe(true)
    expect(new Set(keys).size).toBe(keys.length)
    expect(received.every((request) => request.body === body && request.contentType === 'application/json')).toBe(true)
  })
})
