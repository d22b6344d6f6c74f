// Proves the operational surface works as SPEC §3 Operations, §6 and §7 describe: per-route rate
// limits (and 0 for off), health and readiness, Prometheus metrics that count what happened, and
// an OpenAPI document and UI built from the validating schemas, over real HTTP on each engine.
import { Writable } from 'node:stream'
import pino from 'pino'
import { describe, expect, it } from 'vitest'
import { dashboardProductsMax } from '../src/http/routes/admin-dashboard.js'
import { buildTestApp, type TestApp } from './helpers/app.js'
import { asBuyer, buyerEnv } from './helpers/buyer-tokens.js'
import { testEngines } from './helpers/engines.js'
import { countBy, times } from './helpers/http.js'
import { expectProblem } from './helpers/problem-checks.js'

// The value of the sample `name{labels...}` whose labels include all of `labels`; undefined if
// no such sample was exposed.
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    const match = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (!match || match[1] !== name) continue
    const found = Object.fromEntries([...(match[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((pair) => [pair[1], pair[2]]))
    if (Object.entries(labels).every(([key, value]) => found[key] === value)) return Number(match[3])
  }
  return undefined
}

// The codes a problem answer may carry, as SPEC §3 names them; a new code is added here by hand.
const clientErrorCodes = [
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
]

// Every value a JSON schema pins down (`const`, `enum`), however the schema nests them.
function literalsOf(schema: unknown): unknown[] {
  if (Array.isArray(schema)) return schema.flatMap(literalsOf)
  if (typeof schema !== 'object' || schema === null) return []
  const own = schema as Record<string, unknown>
  return [...('const' in own ? [own.const] : []), ...(Array.isArray(own.enum) ? own.enum : []), ...Object.values(own).flatMap(literalsOf)]
}

async function scrape(t: TestApp): Promise<string> {
  const reply = await t.request('GET', '/metrics')
  expect(reply.status).toBe(200)
  return reply.text
}

async function hold(t: TestApp, qty: number, headers: Record<string, string> = {}) {
  return t.request('POST', '/api/holds', { body: { product_id: t.productId, qty }, headers })
}

// An info-level logger whose JSON lines the test reads back.
function capturedLog(): { lines: Array<Record<string, unknown>>; logger: pino.Logger } {
  const lines: Array<Record<string, unknown>> = []
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line.trim() !== '') lines.push(JSON.parse(line) as Record<string, unknown>)
      done()
    },
  })
  return { lines, logger: pino({ level: 'info' }, sink) }
}

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: operations`, () => {
    describe('rate limits', () => {
      it('answers the 4th hold in a minute with 429 rate_limited and Retry-After when RATE_LIMIT_HOLD_PER_MIN=3', async () => {
        const t = await buildTestApp(engine.name, { env: { RATE_LIMIT_HOLD_PER_MIN: '3' } })
        for (let index = 0; index < 3; index++) expect((await hold(t, 1)).status).toBe(201)
        const limited = await hold(t, 1)
        expectProblem(limited, 429, 'rate_limited')
        const retryAfterS = Number(limited.headers.get('retry-after'))
        expect(Number.isInteger(retryAfterS)).toBe(true)
        expect(retryAfterS).toBeGreaterThanOrEqual(1)
        expect(retryAfterS).toBeLessThanOrEqual(60)
        // The refused request reserved nothing, and reads are limited separately (off here).
        const product = await t.request('GET', `/api/products/${t.productId}`)
        expect(product.status).toBe(200)
        expect(product.body.available_stock).toBe(97)
        expect(sample(await scrape(t), 'flash_sale_rate_limited_total', { route: '/api/holds' })).toBe(1)
        expect((await t.audit()).ok).toBe(true)
      })

      it('counts holds with a forged buyer token against the limit too: 401 until it is used up, then 429', async () => {
        const t = await buildTestApp(engine.name, { env: { RATE_LIMIT_HOLD_PER_MIN: '3', ...buyerEnv } })
        const forged = { authorization: 'Bearer not-a-jwt' }
        for (let index = 0; index < 3; index++)
          expectProblem(await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 1 }, headers: forged }), 401, 'invalid_buyer_token')
        expectProblem(await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 1 }, headers: forged }), 429, 'rate_limited')
        expectProblem(await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 1 }, headers: await asBuyer('alice') }), 429, 'rate_limited')
        expect((await t.audit()).ok).toBe(true)
      })

      it('lets exactly RATE_LIMIT_HOLD_PER_MIN of 10 concurrent holds through', async () => {
        const t = await buildTestApp(engine.name, { env: { RATE_LIMIT_HOLD_PER_MIN: '3' } })
        const replies = await Promise.all(times(10, () => hold(t, 1)))
        expect(countBy(replies, (reply) => reply.status)).toEqual({ 201: 3, 429: 7 })
        const product = await t.request('GET', `/api/products/${t.productId}`)
        expect(product.body.available_stock).toBe(97)
        expect((await t.audit()).ok).toBe(true)
      })

      it('limits orders and reads by their own variables, each route counted apart', async () => {
        const t = await buildTestApp(engine.name, { env: { RATE_LIMIT_ORDER_PER_MIN: '1', RATE_LIMIT_READ_PER_MIN: '2', RATE_LIMIT_HOLD_PER_MIN: '0' } })
        const first = await hold(t, 1)
        const second = await hold(t, 1)
        expect((await t.request('POST', '/api/orders', { body: { hold_id: first.body.hold_id } })).status).toBe(201)
        expectProblem(await t.request('POST', '/api/orders', { body: { hold_id: second.body.hold_id } }), 429, 'rate_limited')
        expect(t.events.filter((event) => event.name === 'order.created')).toHaveLength(1)
        const reads = []
        for (let index = 0; index < 3; index++) reads.push((await t.request('GET', `/api/products/${t.productId}`)).status)
        expect(reads).toEqual([200, 200, 429])
        // Holds are not limited (0) even though reads and orders are used up.
        expect((await hold(t, 1)).status).toBe(201)
        expect((await t.audit()).ok).toBe(true)
      })

      it('turns every limit off with 0', async () => {
        const t = await buildTestApp(engine.name, { env: { RATE_LIMIT_HOLD_PER_MIN: '0', RATE_LIMIT_ORDER_PER_MIN: '0', RATE_LIMIT_READ_PER_MIN: '0' } })
        const holds = await Promise.all(times(25, () => hold(t, 1)))
        expect(countBy(holds, (reply) => reply.status)).toEqual({ 201: 25 })
        const orders = await Promise.all(holds.slice(0, 5).map((reply) => t.request('POST', '/api/orders', { body: { hold_id: reply.body.hold_id } })))
        expect(countBy(orders, (reply) => reply.status)).toEqual({ 201: 5 })
        const reads = await Promise.all(times(25, () => t.request('GET', `/api/products/${t.productId}`)))
        expect(countBy(reads, (reply) => reply.status)).toEqual({ 200: 25 })
        expect(reads.at(-1)!.body.available_stock).toBe(75)
        expect((await t.audit()).ok).toBe(true)
      })
    })

    describe('health and readiness', () => {
      it('answers /health and /ready with 200 while the database is reachable', async () => {
        const t = await buildTestApp(engine.name)
        expect((await t.request('GET', '/health')).status).toBe(200)
        const ready = await t.request('GET', '/ready')
        expect(ready.status).toBe(200)
      })

      it('answers /ready with 503 once the database is closed, while /health stays 200', async () => {
        const t = await buildTestApp(engine.name)
        expect((await t.request('GET', '/ready')).status).toBe(200)
        await t.runtime.store.close()
        expect((await t.request('GET', '/ready')).status).toBe(503)
        expect((await t.request('GET', '/health')).status).toBe(200)
      })
    })

    describe('metrics', () => {
      it('serves Prometheus text with every metric family SPEC §6 names', async () => {
        const t = await buildTestApp(engine.name)
        const reply = await t.request('GET', '/metrics')
        expect(reply.status).toBe(200)
        expect(reply.headers.get('content-type')).toMatch(/^text\/plain/)
        const families = [
          ['flash_sale_events_total', 'counter'],
          ['flash_sale_http_request_duration_seconds', 'histogram'],
          ['flash_sale_product_available', 'gauge'],
          ['flash_sale_product_reserved', 'gauge'],
          ['flash_sale_product_sold', 'gauge'],
          ['flash_sale_sweeper_lag_seconds', 'gauge'],
          ['flash_sale_tx_retries_total', 'counter'],
          ['flash_sale_keyed_batch_reruns_total', 'counter'],
          ['flash_sale_idempotent_replays_total', 'counter'],
          ['flash_sale_rate_limited_total', 'counter'],
        ]
        for (const [name, type] of families) expect.soft(reply.text, name).toContain(`# TYPE ${name} ${type}\n`)
      })

      it('counts each named event once: holds created and refused, orders, payments, replays', async () => {
        const t = await buildTestApp(engine.name, { stock: 5 })
        const first = await hold(t, 3, { 'idempotency-key': 'metrics-hold' })
        expect(first.status).toBe(201)
        const replay = await hold(t, 3, { 'idempotency-key': 'metrics-hold' })
        expect(replay.headers.get('idempotent-replayed')).toBe('true')
        expect((await hold(t, 3)).status).toBe(409)
        const order = await t.request('POST', '/api/orders', { body: { hold_id: first.body.hold_id } })
        expect(order.status).toBe(201)
        const payment = await t.request('POST', '/api/payments/webhook', { body: { order_id: order.body.order_id, status: 'success' }, headers: { 'idempotency-key': 'metrics-pay' } })
        expect(payment.status).toBe(200)
        const text = await scrape(t)
        expect({
          created: sample(text, 'flash_sale_events_total', { event: 'hold.created' }),
          rejected: sample(text, 'flash_sale_events_total', { event: 'hold.rejected' }),
          rejectedForStock: sample(text, 'flash_sale_holds_rejected_total', { reason: 'insufficient_stock' }),
          orders: sample(text, 'flash_sale_events_total', { event: 'order.created' }),
          payments: sample(text, 'flash_sale_events_total', { event: 'payment.applied' }),
          replays: sample(text, 'flash_sale_idempotent_replays_total', { scope: 'holds' }),
          // The replay's batch met the stored key at its insert, then ran again reading it.
          reruns: sample(text, 'flash_sale_keyed_batch_reruns_total', { label: 'holds.create', cause: 'key_stored' }),
        }).toEqual({ created: 1, rejected: 1, rejectedForStock: 1, orders: 1, payments: 1, replays: 1, reruns: 1 })
        expect((await t.audit()).ok).toBe(true)
      })

      it('counts an expired hold once in hold.expired however many sweeps run', async () => {
        const t = await buildTestApp(engine.name, { stock: 10 })
        expect((await hold(t, 4)).status).toBe(201)
        t.clock.advanceMs(t.config.holdTtlMs + 1)
        await t.sweep()
        await t.sweep()
        expect(sample(await scrape(t), 'flash_sale_events_total', { event: 'hold.expired' })).toBe(1)
        expect((await t.request('GET', `/api/products/${t.productId}`)).body.available_stock).toBe(10)
        expect((await t.audit()).ok).toBe(true)
      })

      it('records request latency per route and status in a histogram', async () => {
        const t = await buildTestApp(engine.name, { stock: 2 })
        expect((await hold(t, 2)).status).toBe(201)
        expect((await hold(t, 1)).status).toBe(409)
        expect((await hold(t, 1)).status).toBe(409)
        expect((await t.request('GET', `/api/products/${t.productId}`)).status).toBe(200)
        // Refused before routing: a URL that cannot be decoded.
        expect((await t.request('GET', '/api/holds/%zz')).status).toBe(400)
        expect((await t.request('GET', '/api/holds/%zz')).status).toBe(400)
        const text = await scrape(t)
        const histogram = 'flash_sale_http_request_duration_seconds'
        expect(sample(text, `${histogram}_count`, { method: 'GET', route: 'unmatched', status_code: '400' })).toBe(2)
        const created = { method: 'POST', route: '/api/holds', status_code: '201' }
        const refused = { method: 'POST', route: '/api/holds', status_code: '409' }
        const read = { method: 'GET', route: '/api/products/:id', status_code: '200' }
        expect(sample(text, `${histogram}_count`, created)).toBe(1)
        expect(sample(text, `${histogram}_count`, refused)).toBe(2)
        expect(sample(text, `${histogram}_count`, read)).toBe(1)
        expect(sample(text, `${histogram}_bucket`, { ...refused, le: '+Inf' })).toBe(2)
        expect(sample(text, `${histogram}_sum`, refused)).toBeGreaterThan(0)
        expect((await t.audit()).ok).toBe(true)
      })

      it('shows per-product available, reserved and sold gauges as of the scrape', async () => {
        const t = await buildTestApp(engine.name, { stock: 10 })
        const labels = { product_id: String(t.productId) }
        const gauges = async () => {
          const text = await scrape(t)
          return {
            available: sample(text, 'flash_sale_product_available', labels),
            reserved: sample(text, 'flash_sale_product_reserved', labels),
            sold: sample(text, 'flash_sale_product_sold', labels),
          }
        }
        const held = await hold(t, 3)
        expect(await gauges()).toEqual({ available: 7, reserved: 3, sold: 0 })
        const order = await t.request('POST', '/api/orders', { body: { hold_id: held.body.hold_id } })
        await t.request('POST', '/api/payments/webhook', { body: { order_id: order.body.order_id, status: 'success' }, headers: { 'idempotency-key': 'gauge-pay' } })
        expect(await gauges()).toEqual({ available: 7, reserved: 0, sold: 3 })
        expect((await hold(t, 2)).status).toBe(201)
        expect(await gauges()).toEqual({ available: 5, reserved: 2, sold: 3 })
        expect((await t.audit()).ok).toBe(true)
      })
    })

    describe('request ids', () => {
      it('names each request without an X-Request-Id by an id no other process or restart gives, and keeps one sent', async () => {
        const { lines, logger } = capturedLog()
        // Two apps, as two workers (or a restart) are: Fastify's own ids were req-1, req-2, ...
        // in each of them.
        for (let app = 0; app < 2; app++) {
          const t = await buildTestApp(engine.name, { stock: 10, logger })
          expect((await hold(t, 1)).status).toBe(201)
          expect((await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 1 }, headers: { 'x-request-id': 'client-chosen-1' } })).status).toBe(201)
        }
        const ids = lines.filter((line) => line.event === 'hold.created').map((line) => line.request_id)
        expect(ids).toHaveLength(4)
        expect(ids.filter((id) => id === 'client-chosen-1')).toHaveLength(2)
        const generated = ids.filter((id) => id !== 'client-chosen-1')
        expect(new Set(generated).size).toBe(2)
        for (const id of generated) expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-z]+$/)
      })

      // The use cases pass the asking request's log along by hand (no AsyncLocalStorage): each
      // event must still land on the line of the request that caused it, batched or not.
      it('logs every event a request causes with that request id, and the events no request caused without one', async () => {
        const { lines, logger } = capturedLog()
        const t = await buildTestApp(engine.name, { stock: 2, logger })
        const send = (id: string, method: string, path: string, body?: unknown, headers: Record<string, string> = {}) =>
          t.request(method, path, { body, headers: { 'x-request-id': id, ...headers } })
        const holdBody = { product_id: t.productId, qty: 1 }
        const kept = await send('r-hold', 'POST', '/api/holds', holdBody, { 'idempotency-key': 'log-hold' })
        expect(kept.status).toBe(201)
        expect((await send('r-unknown', 'POST', '/api/holds', { product_id: 999_999, qty: 1 })).status).toBe(404)
        const released = await send('r-hold-2', 'POST', '/api/holds', holdBody)
        expect((await send('r-release', 'DELETE', `/api/holds/${released.body.hold_id}`)).status).toBe(200)
        expect((await send('r-hold-3', 'POST', '/api/holds', holdBody)).status).toBe(201)
        expect((await send('r-refused', 'POST', '/api/holds', holdBody)).status).toBe(409)
        const joined = await send('r-join', 'POST', `/api/products/${t.productId}/waitlist`, { qty: 1 })
        expect(joined.status).toBe(201)
        expect((await send('r-leave', 'DELETE', `/api/waitlist/${joined.body.ticket_id}`)).status).toBe(200)
        expect((await send('r-join-2', 'POST', `/api/products/${t.productId}/waitlist`, { qty: 1 })).status).toBe(201)
        const order = await send('r-order', 'POST', '/api/orders', { hold_id: kept.body.hold_id })
        expect(order.status).toBe(201)
        const payment = { order_id: order.body.order_id, status: 'success' }
        expect((await send('r-pay', 'POST', '/api/payments/webhook', payment, { 'idempotency-key': 'log-pay' })).status).toBe(200)
        expect((await send('r-pay-again', 'POST', '/api/payments/webhook', payment, { 'idempotency-key': 'log-pay' })).status).toBe(200)
        // A unit more: the admin's change admits the second ticket.
        expect((await t.admin('PATCH', `/api/admin/products/${t.productId}`, { add_stock: 1 })).status).toBe(200)
        t.clock.advanceMs(t.config.holdTtlMs + 1)
        await t.sweep()

        const idsOf = (event: string) => lines.filter((line) => line.event === event).map((line) => line.request_id)
        expect(idsOf('hold.rejected')).toEqual(['r-unknown', 'r-refused'])
        expect(idsOf('hold.released')).toEqual(['r-release'])
        expect(idsOf('waitlist.joined')).toEqual(['r-join', 'r-join-2'])
        expect(idsOf('waitlist.left')).toEqual(['r-leave'])
        expect(idsOf('order.created')).toEqual(['r-order'])
        expect(idsOf('payment.applied')).toEqual(['r-pay'])
        expect(idsOf('payment.duplicate')).toEqual(['r-pay-again'])
        // The admin's request: its id is the one Fastify gave it, not another request's.
        const admitted = lines.filter((line) => line.event === 'waitlist.admitted')
        expect(admitted).toHaveLength(1)
        const adminId = admitted[0]!.request_id
        expect(adminId).toMatch(/^[0-9a-f]{8}-[0-9a-z]+$/)
        // Its admission is a hold made by that request.
        expect(idsOf('hold.created')).toEqual(['r-hold', 'r-hold-2', 'r-hold-3', adminId])
        // The sweeper's expiries belong to no request.
        const expired = lines.filter((line) => line.event === 'hold.expired')
        expect(expired.length).toBeGreaterThan(0)
        for (const line of expired) expect(line.request_id).toBeUndefined()
      })

      // What a request's batch does beyond the request itself (the units it frees admit tickets,
      // the lapsed holds it reclaims) was caused by that request when it was alone in the batch
      // (the sixth probe of the twelfth session found these lines without an id).
      it("logs what a request's batch does on the way (admissions, a sell-out, reclaimed holds) with that request id when it was alone", async () => {
        const { lines, logger } = capturedLog()
        const t = await buildTestApp(engine.name, { stock: 1, logger })
        const send = (id: string, method: string, path: string, body?: unknown, headers: Record<string, string> = {}) =>
          t.request(method, path, { body, headers: { 'x-request-id': id, ...headers } })
        const orderWithWaitingTicket = async (productId: number, prefix: string): Promise<string> => {
          const held = await send(`${prefix}-hold`, 'POST', '/api/holds', { product_id: productId, qty: 1 })
          const order = await send(`${prefix}-order`, 'POST', '/api/orders', { hold_id: held.body.hold_id })
          expect(order.status).toBe(201)
          const joined = await send(`${prefix}-join`, 'POST', `/api/products/${productId}/waitlist`, { qty: 1 })
          expect(joined.body.status).toBe('waiting')
          return order.body.order_id as string
        }
        const failed = await orderWithWaitingTicket(t.productId, 'a')
        expect((await send('a-fail', 'POST', '/api/payments/webhook', { order_id: failed, status: 'failed' }, { 'idempotency-key': 'a-fail' })).status).toBe(200)
        const soldOut = await t.createProduct(1)
        const paid = await orderWithWaitingTicket(soldOut, 'b')
        expect((await send('b-pay', 'POST', '/api/payments/webhook', { order_id: paid, status: 'success' }, { 'idempotency-key': 'b-pay' })).status).toBe(200)
        const roomy = await t.createProduct(3)
        expect((await send('c-join', 'POST', `/api/products/${roomy}/waitlist`, { qty: 1 })).body.status).toBe('admitted')
        const lapsing = await t.createProduct(1)
        expect((await send('d-hold', 'POST', '/api/holds', { product_id: lapsing, qty: 1 })).status).toBe(201)
        t.clock.advanceMs(t.config.holdTtlMs + 1)
        expect((await send('d-reclaim', 'POST', '/api/holds', { product_id: lapsing, qty: 1 })).status).toBe(201)

        const idsOf = (productId: number, event: string) => lines.filter((line) => line.productId === productId && line.event === event).map((line) => line.request_id)
        expect(idsOf(t.productId, 'order.cancelled')).toEqual(['a-fail'])
        expect(idsOf(t.productId, 'waitlist.admitted')).toEqual(['a-fail'])
        expect(idsOf(t.productId, 'hold.created')).toEqual(['a-hold', 'a-fail'])
        expect(idsOf(soldOut, 'waitlist.closed')).toEqual(['b-pay'])
        expect(idsOf(roomy, 'waitlist.admitted')).toEqual(['c-join'])
        expect(idsOf(roomy, 'hold.created')).toEqual(['c-join'])
        expect(idsOf(lapsing, 'hold.expired')).toEqual(['d-reclaim'])
        expect(idsOf(lapsing, 'hold.created')).toEqual(['d-hold', 'd-reclaim'])
      })
    })

    describe('dashboard', () => {
      it(`lists the newest ${dashboardProductsMax} products, newest first, when there are more: the drop going on now is never the one left out`, async () => {
        const t = await buildTestApp(engine.name, { stock: 10 })
        const created: number[] = [t.productId]
        for (let index = 0; index < dashboardProductsMax; index++) created.push(await t.createProduct(5))
        const dashboard = await t.admin('GET', '/api/admin/dashboard')
        expect(dashboard.status, dashboard.text).toBe(200)
        expect(dashboard.body.products_truncated).toBe(true)
        expect(dashboard.body.products.map((product: { id: number }) => product.id)).toEqual(created.slice(1).reverse())
      })

      it('gives the service-wide sweeper lag over every product, also one the dashboard does not list', async () => {
        const t = await buildTestApp(engine.name, { stock: 10, env: { HOLD_TTL_SECONDS: '60' } })
        expect((await hold(t, 1)).status).toBe(201)
        for (let index = 0; index < dashboardProductsMax; index++) await t.createProduct(5)
        // The hold lapsed 30 s ago and no sweep ran.
        t.clock.advanceMs(90_000)
        const dashboard = await t.admin('GET', '/api/admin/dashboard')
        expect(dashboard.body.products.map((product: { id: number }) => product.id)).not.toContain(t.productId)
        expect(dashboard.body.sweeper_lag_seconds).toBeCloseTo(30, 0)
        expect(sample(await scrape(t), 'flash_sale_sweeper_lag_seconds')).toBeCloseTo(30, 0)
      })
    })

    describe('OpenAPI', () => {
      it('documents every API route of SPEC §3 with its methods', async () => {
        const t = await buildTestApp(engine.name)
        const reply = await t.request('GET', '/openapi.json')
        expect(reply.status).toBe(200)
        expect(reply.body.openapi).toMatch(/^3\./)
        const expected: Record<string, string[]> = {
          '/api/products/{id}': ['get'],
          '/api/holds': ['post'],
          '/api/holds/{id}': ['get', 'delete'],
          '/api/orders': ['post'],
          '/api/orders/{id}': ['get'],
          '/api/payments/webhook': ['post'],
          '/api/admin/products': ['post'],
          '/api/admin/products/{id}': ['patch'],
          '/api/admin/audit': ['get'],
        }
        for (const [path, methods] of Object.entries(expected)) {
          expect.soft(Object.keys(reply.body.paths?.[path] ?? {}).sort(), path).toEqual(expect.arrayContaining(methods))
        }
      })

      it('names every error code a client can meet in the document, as the Problem schema code', async () => {
        const t = await buildTestApp(engine.name)
        const document = (await t.request('GET', '/openapi.json')).body
        const problem = Object.values(document.components.schemas as Record<string, any>).find((schema) => schema.title === 'Problem')
        expect(problem).toBeDefined()
        // Compared with a list written out here rather than read from the source, so a code
        // dropped from (or added to) the catalogue that generates the schema shows as a difference.
        expect(literalsOf(problem.properties.code).sort()).toEqual([...clientErrorCodes].sort())
      })

      it('documents errors as application/problem+json, as they are sent, with the statuses the outage and body checks give, and the Idempotency-Key header of keyed creates', async () => {
        const t = await buildTestApp(engine.name)
        const document = (await t.request('GET', '/openapi.json')).body
        for (const [path, operations] of Object.entries(document.paths as Record<string, Record<string, { responses: Record<string, { content?: Record<string, unknown> }> }>>)) {
          for (const [method, operation] of Object.entries(operations)) {
            for (const [status, response] of Object.entries(operation.responses)) {
              if (Number(status) >= 400 && response.content) expect.soft(Object.keys(response.content), `${method} ${path} ${status}`).toEqual(['application/problem+json'])
            }
          }
        }
        const statusesOf = (path: string, method: string) => Object.keys(document.paths[path][method].responses)
        for (const path of ['/api/holds/{id}', '/api/orders/{id}']) expect(statusesOf(path, 'get')).toEqual(expect.arrayContaining(['400', '503']))
        expect(statusesOf('/api/admin/products', 'post')).toEqual(expect.arrayContaining(['413', '503']))
        expect(statusesOf('/api/admin/products/{id}', 'patch')).toEqual(expect.arrayContaining(['413', '503']))
        expect(statusesOf('/api/admin/audit', 'get')).toContain('503')
        for (const path of ['/api/holds', '/api/orders', '/api/products/{id}/waitlist']) {
          expect(document.paths[path].post.parameters, path).toEqual(expect.arrayContaining([expect.objectContaining({ name: 'Idempotency-Key', in: 'header' })]))
        }
        // And as sent: a problem answer's media type.
        const missing = await t.request('GET', '/api/holds/hold_missing')
        expect(missing.headers.get('content-type')).toMatch(/^application\/problem\+json/)
      })

      it('documents a request with the schema that validates it: MAX_QTY_PER_HOLD=7 shows as qty maximum 7', async () => {
        const t = await buildTestApp(engine.name, { env: { MAX_QTY_PER_HOLD: '7' } })
        const document = (await t.request('GET', '/openapi.json')).body
        const schema = document.paths['/api/holds'].post.requestBody.content['application/json'].schema
        expect(schema.properties.qty).toMatchObject({ type: 'integer', minimum: 1, maximum: 7 })
        expect(schema.properties.product_id).toMatchObject({ type: 'integer' })
        expect((await hold(t, 7)).status).toBe(201)
        expectProblem(await hold(t, 8), 422, 'validation_failed')
        expect((await t.audit()).ok).toBe(true)
      })

      it('marks admin operations as needing the bearer token and public ones as open', async () => {
        const t = await buildTestApp(engine.name)
        const document = (await t.request('GET', '/openapi.json')).body
        expect(document.components.securitySchemes.bearer).toMatchObject({ type: 'http', scheme: 'bearer' })
        expect(document.components.securitySchemes.buyer).toMatchObject({ type: 'http', scheme: 'bearer', bearerFormat: 'JWT' })
        const buyerOperations = ['post /api/holds', 'post /api/orders', 'post /api/products/{id}/waitlist']
        for (const [path, methods] of Object.entries(document.paths as Record<string, Record<string, { security?: unknown }>>)) {
          for (const [method, operation] of Object.entries(methods)) {
            const label = `${method} ${path}`
            if (path.startsWith('/api/admin/')) expect.soft(operation.security, label).toEqual([{ bearer: [] }])
            // A buyer token is optional on these (required only by a product with a per-buyer limit).
            else if (buyerOperations.includes(label)) expect.soft(operation.security, label).toEqual([{}, { buyer: [] }])
            else expect.soft(operation.security, label).toBeUndefined()
          }
        }
      })

      it('serves the OpenAPI UI at /docs (200, or a redirect to it)', async () => {
        const t = await buildTestApp(engine.name)
        const first = await fetch(`${t.baseUrl}/docs`, { redirect: 'manual' })
        await first.arrayBuffer()
        if (first.status >= 300 && first.status < 400) expect(first.headers.get('location')).toMatch(/docs/)
        else expect(first.status).toBe(200)
        const page = await t.request('GET', '/docs')
        expect(page.status).toBe(200)
        expect(page.headers.get('content-type')).toMatch(/^text\/html/)
        expect(page.text).toMatch(/swagger/i)
      })
    })
  })
}
