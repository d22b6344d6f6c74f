// Proves that whatever a client sends (wrong types, malformed or oversized bodies, other media
// types, odd ids, bad idempotency keys, hostile JSON) is answered with a stable problem+json code
// and never a 500, by sending it over real HTTP to an in-process server on each engine.
import { connect } from 'node:net'
import { STATUS_CODES } from 'node:http'
import { describe, expect, it } from 'vitest'
import { buildTestApp, type TestApp } from './helpers/app.js'
import { testEngines } from './helpers/engines.js'
import { adminAuthorization, catalogueViolation, expectProblem, outcomeOf, rawJson } from './helpers/problem-checks.js'

// A route that takes a JSON body, with the headers it needs to get past authentication.
interface BodyRoute {
  method: 'POST' | 'PATCH'
  path: string
  headers: Record<string, string>
}

function bodyRoutes(t: TestApp): BodyRoute[] {
  return [
    { method: 'POST', path: '/api/holds', headers: {} },
    { method: 'POST', path: '/api/orders', headers: {} },
    { method: 'POST', path: '/api/payments/webhook', headers: { 'idempotency-key': 'bad-input-key' } },
    { method: 'POST', path: '/api/admin/products', headers: adminAuthorization },
    { method: 'PATCH', path: `/api/admin/products/${t.productId}`, headers: adminAuthorization },
  ]
}

// Sends raw bytes and reads everything the server answers until it closes the connection.
function rawExchange(port: number, bytes: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => socket.write(bytes))
    const chunks: Buffer[] = []
    socket.on('data', (chunk: Buffer) => chunks.push(chunk))
    socket.on('close', () => resolve(Buffer.concat(chunks).toString('utf8')))
    // The server closes without reading the rest of what was sent, so the connection may end in
    // a reset after its answer: what arrived before it is the answer.
    socket.on('error', (error) => (chunks.length > 0 ? resolve(Buffer.concat(chunks).toString('utf8')) : reject(error)))
    socket.setTimeout(10_000, () => socket.destroy(new Error('no answer in 10 s')))
  })
}

async function holdFor(t: TestApp, qty = 1): Promise<string> {
  const reply = await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty } })
  expect(reply.status).toBe(201)
  return reply.body.hold_id as string
}

async function orderFor(t: TestApp, holdId: string): Promise<string> {
  const reply = await t.request('POST', '/api/orders', { body: { hold_id: holdId } })
  expect(reply.status).toBe(201)
  return reply.body.order_id as string
}

async function availableStock(t: TestApp): Promise<number> {
  const reply = await t.request('GET', `/api/products/${t.productId}`)
  expect(reply.status).toBe(200)
  return reply.body.available_stock as number
}

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: bad input`, () => {
    it('answers an error as application/problem+json with type, title, status and code', async () => {
      const t = await buildTestApp(engine.name)
      const reply = await t.request('GET', '/api/products/424242')
      expect(reply.headers.get('content-type')).toMatch(/^application\/problem\+json/)
      expect(reply.body).toEqual({ type: 'about:blank', title: expect.any(String), status: 404, code: 'product_not_found' })
    })

    it('answers every product id that names no product with 404 product_not_found, on read and on restock', async () => {
      const t = await buildTestApp(engine.name)
      const ids = [
        'abc',
        '0',
        '-1',
        '1.5',
        '1e3',
        '01',
        '+1',
        '%20',
        '%F0%9F%92%A5',
        '424242',
        '2147483648',
        '9007199254740993',
        '9999999999999999',
        '99999999999999999999',
        '9'.repeat(40),
      ]
      for (const id of ids) {
        const read = await t.request('GET', `/api/products/${id}`)
        expect.soft({ id, route: 'GET', ...outcomeOf(read) }).toEqual({ id, route: 'GET', status: 404, code: 'product_not_found' })
        const restock = await t.admin('PATCH', `/api/admin/products/${id}`, { add_stock: 1 })
        expect.soft({ id, route: 'PATCH', ...outcomeOf(restock) }).toEqual({ id, route: 'PATCH', status: 404, code: 'product_not_found' })
      }
      expect(await availableStock(t)).toBe(100)
      expect((await t.audit()).ok).toBe(true)
    })

    it('refuses a hold for a product_id that names no product with 404 product_not_found, whatever its size', async () => {
      const t = await buildTestApp(engine.name)
      for (const productId of [424_242, 2_147_483_648, Number.MAX_SAFE_INTEGER, 1e300]) {
        const reply = await t.request('POST', '/api/holds', { body: { product_id: productId, qty: 1 } })
        expect.soft({ productId, ...outcomeOf(reply) }).toEqual({ productId, status: 404, code: 'product_not_found' })
      }
      expect(await availableStock(t)).toBe(100)
      expect((await t.audit()).ok).toBe(true)
    })

    it('answers hold and order ids that name nothing with 404 hold_not_found / order_not_found', async () => {
      const t = await buildTestApp(engine.name)
      const holdId = await holdFor(t)
      const orderId = await orderFor(t, holdId)
      // A real id of the other kind is still unknown here: ids are not interchangeable.
      const unknownHoldIds = ['nope', 'hold_AAAAAAAAAAAAAAAA', orderId, '%F0%9F%92%A5', 'a%00b']
      for (const id of unknownHoldIds) {
        for (const method of ['GET', 'DELETE']) {
          const reply = await t.request(method, `/api/holds/${id}`)
          expect.soft({ id, method, ...outcomeOf(reply) }).toEqual({ id, method, status: 404, code: 'hold_not_found' })
        }
        const order = await t.request('POST', '/api/orders', { body: { hold_id: decodeURIComponent(id) } })
        expect.soft({ id, method: 'POST /api/orders', ...outcomeOf(order) }).toEqual({ id, method: 'POST /api/orders', status: 404, code: 'hold_not_found' })
      }
      for (const id of ['nope', 'ord_AAAAAAAAAAAAAAAA', holdId, '%F0%9F%92%A5', 'a%00b']) {
        const reply = await t.request('GET', `/api/orders/${id}`)
        expect.soft({ id, ...outcomeOf(reply) }).toEqual({ id, status: 404, code: 'order_not_found' })
      }
      const byOrder = await t.request('POST', '/api/payments/webhook', { body: { order_id: 'nope', status: 'success' }, headers: { 'idempotency-key': 'unknown-order' } })
      expectProblem(byOrder, 404, 'order_not_found')
      const byHold = await t.request('POST', '/api/payments/webhook', { body: { hold_id: 'nope', status: 'success' }, headers: { 'idempotency-key': 'unknown-hold' } })
      expectProblem(byHold, 404, 'hold_not_found')
      // The real hold and order were untouched by all of it.
      expect((await t.request('GET', `/api/holds/${holdId}`)).body.status).toBe('converted')
      expect((await t.request('GET', `/api/orders/${orderId}`)).body.status).toBe('pending')
      expect((await t.audit()).ok).toBe(true)
    })

    it('answers an overlong hold or order id with a problem, never a framework error body', async () => {
      const t = await buildTestApp(engine.name)
      // SPEC §3 says unknown ids are 404; a length limit on ids may instead call the id an
      // invalid field (422). Either is a problem with a catalogue code; a bare framework
      // answer is not.
      for (const length of [65, 101, 300]) {
        const id = 'x'.repeat(length)
        for (const [method, path, notFound] of [
          ['GET', `/api/holds/${id}`, 'hold_not_found'],
          ['DELETE', `/api/holds/${id}`, 'hold_not_found'],
          ['GET', `/api/orders/${id}`, 'order_not_found'],
        ] as const) {
          const reply = await t.request(method, path)
          const label = `${method} ${path.split('/')[2]} id of ${length} chars`
          expect
            .soft([
              { label, status: 404, code: notFound },
              { label, status: 422, code: 'validation_failed' },
            ])
            .toContainEqual({ label, ...outcomeOf(reply) })
          expect.soft(catalogueViolation(reply), label).toBeUndefined()
        }
      }
      // Past the longest id the router matches, every route ending in an id still answers its
      // resource's not-found, as its handler does for an id of routable length.
      for (const length of [1024, 1025, 5000]) {
        const id = 'x'.repeat(length)
        for (const [method, path, notFound] of [
          ['GET', `/api/holds/${id}`, 'hold_not_found'],
          ['DELETE', `/api/holds/${id}`, 'hold_not_found'],
          ['GET', `/api/orders/${id}?x=1`, 'order_not_found'],
          ['GET', `/api/waitlist/${id}`, 'ticket_not_found'],
          ['DELETE', `/api/waitlist/${id}`, 'ticket_not_found'],
          ['GET', `/api/products/${'9'.repeat(length)}`, 'product_not_found'],
        ] as const) {
          const reply = await t.request(method, path)
          expect
            .soft({ label: `${method} ${path.split('/')[2]} id of ${length} chars`, ...outcomeOf(reply) })
            .toEqual({ label: `${method} ${path.split('/')[2]} id of ${length} chars`, status: 404, code: notFound })
        }
      }
      // Nothing else is taken for an id.
      expect(outcomeOf(await t.request('GET', `/api/holds/${'x'.repeat(2000)}/more`))).toEqual({ status: 404, code: 'not_found' })
    })

    it('answers a path with broken percent-encoding with a problem, never a framework error body', async () => {
      const t = await buildTestApp(engine.name)
      for (const path of ['/api/holds/%zz', '/api/orders/%E0%A4%A', `/api/products/%`]) {
        const reply = await t.request('GET', path)
        expect.soft(reply.status, path).toBeLessThan(500)
        expect.soft(catalogueViolation(reply), path).toBeUndefined()
      }
    })

    it('answers what the HTTP parser refuses (headers over 16 KB, bytes that are not HTTP) with a problem, not a framework body', async () => {
      const t = await buildTestApp(engine.name)
      const { port } = new URL(t.baseUrl)
      const huge = 'a'.repeat(20_000)
      const cases = [
        {
          what: 'a 20 KB Authorization header',
          bytes: `POST /api/holds HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${huge}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}`,
          status: 431,
          code: 'headers_too_large',
        },
        { what: 'a 20 KB header on a read', bytes: `GET /api/products/${t.productId} HTTP/1.1\r\nHost: x\r\nX-Big: ${huge}\r\n\r\n`, status: 431, code: 'headers_too_large' },
        { what: 'bytes that are not HTTP', bytes: 'HELLO THERE\r\n\r\n', status: 400, code: 'bad_request' },
      ]
      for (const { what, bytes, status, code } of cases) {
        const answer = await rawExchange(Number(port), bytes)
        const [head = '', body = ''] = answer.split('\r\n\r\n')
        expect.soft(head.split('\r\n')[0], what).toBe(`HTTP/1.1 ${status} ${STATUS_CODES[status]}`)
        expect.soft(head.toLowerCase(), what).toContain('content-type: application/problem+json')
        expect.soft(JSON.parse(body), what).toMatchObject({ type: 'about:blank', status, code })
      }
      // The server goes on answering.
      expect((await t.request('GET', `/api/products/${t.productId}`)).status).toBe(200)
    })

    it('answers a request followed on its connection by bytes the parser refuses with its own answer first, then the problem', async () => {
      const t = await buildTestApp(engine.name)
      const { port } = new URL(t.baseUrl)
      const holdBody = JSON.stringify({ product_id: t.productId, qty: 2 })
      const holdRequest = (key: string) =>
        `POST /api/holds HTTP/1.1\r\nHost: x\r\nIdempotency-Key: ${key}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(holdBody)}\r\n\r\n${holdBody}`
      const refused = [
        { what: 'bytes that are not HTTP', bytes: '\u0000\u0001\u0002garbage\r\n\r\n', status: 400 },
        { what: 'a 20 KB header', bytes: `GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`, status: 431 },
      ]
      for (const [index, { what, bytes, status }] of refused.entries()) {
        const key = `pipelined-${index}`
        const answer = await rawExchange(Number(port), holdRequest(key) + bytes)
        // The hold's answer first (HTTP/1.1 pairs it with the first request), then the problem.
        expect.soft(answer.match(/HTTP\/1\.1 \d{3}/g), what).toEqual(['HTTP/1.1 201', `HTTP/1.1 ${status}`])
        const holdId = /"hold_id":"([^"]+)"/.exec(answer)?.[1]
        expect.soft(holdId, what).toBeDefined()
        // And it is the hold the service made: the key replays it.
        const replay = await t.request('POST', '/api/holds', { body: JSON.parse(holdBody), headers: { 'idempotency-key': key } })
        expect.soft({ status: replay.status, holdId: replay.body.hold_id }, what).toEqual({ status: 201, holdId })
      }
      const health = await rawExchange(Number(port), 'GET /health HTTP/1.1\r\nHost: x\r\n\r\n\u0000junk\r\n\r\n')
      expect(health.match(/HTTP\/1\.1 \d{3}/g)).toEqual(['HTTP/1.1 200', 'HTTP/1.1 400'])
      // A request whose own body the parser refuses (a bad chunk) was never taken: its answer is
      // the problem, at once, and nothing of it is written.
      const heldBefore = (await t.request('GET', `/api/products/${t.productId}`)).body.reserved
      const badChunk = await rawExchange(Number(port), 'POST /api/holds HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\nZZZ\r\n\r\n')
      expect(badChunk.match(/HTTP\/1\.1 \d{3}/g)).toEqual(['HTTP/1.1 400'])
      expect((await t.request('GET', `/api/products/${t.productId}`)).body.reserved).toBe(heldBefore)
      expect(await t.audit()).toMatchObject({ ok: true, violations: [] })
    })

    it('refuses wrong JSON types field by field with 422 validation_failed naming the field', async () => {
      const t = await buildTestApp(engine.name)
      const holdId = await holdFor(t)
      const webhookHeaders = { 'idempotency-key': 'types-key' }
      const cases: Array<{ path: string; body: unknown; field: string; headers?: Record<string, string> }> = [
        ...['1', true, null, 1.5, 0, -1, [1]].map((product_id) => ({ path: '/api/holds', body: { product_id, qty: 1 }, field: 'product_id' })),
        { path: '/api/holds', body: { qty: 1 }, field: 'product_id' },
        ...['5', true, null, 1.5, 0, -1, 11, [1], {}].map((qty) => ({ path: '/api/holds', body: { product_id: t.productId, qty }, field: 'qty' })),
        { path: '/api/holds', body: { product_id: t.productId }, field: 'qty' },
        ...['2', true, null, 1.5, 0, 11].map((quantity) => ({ path: '/api/holds', body: { product_id: t.productId, quantity }, field: 'quantity' })),
        { path: '/api/holds', body: { product_id: t.productId, qty: 2, quantity: 3 }, field: 'quantity' },
        ...[5, null, true, '', [], {}].map((hold_id) => ({ path: '/api/orders', body: { hold_id }, field: 'hold_id' })),
        { path: '/api/orders', body: {}, field: 'hold_id' },
        ...['maybe', 1, null, 'SUCCESS'].map((status) => ({ path: '/api/payments/webhook', body: { order_id: 'ord_x', status }, field: 'status', headers: webhookHeaders })),
        { path: '/api/payments/webhook', body: { order_id: 'ord_x' }, field: 'status', headers: webhookHeaders },
        ...[5, null, ''].map((order_id) => ({ path: '/api/payments/webhook', body: { order_id, status: 'success' }, field: 'order_id', headers: webhookHeaders })),
        ...[true, -1, null, {}].map((amount) => ({ path: '/api/payments/webhook', body: { order_id: 'ord_x', status: 'success', amount }, field: 'amount', headers: webhookHeaders })),
        { path: '/api/payments/webhook', body: { order_id: 'ord_x', status: 'success', payment_id: 5 }, field: 'payment_id', headers: webhookHeaders },
      ]
      for (const { path, body, field, headers } of cases) {
        const reply = await t.request('POST', path, { body, headers: headers ?? {} })
        const label = `${path} ${JSON.stringify(body)}`
        expect.soft({ label, ...outcomeOf(reply) }).toEqual({ label, status: 422, code: 'validation_failed' })
        expect.soft(reply.body?.invalid_fields, label).toContain(field)
        const errors = (reply.body?.errors ?? []) as Array<{ field: unknown; message: unknown }>
        expect.soft(errors.length, label).toBeGreaterThan(0)
        for (const error of errors) {
          expect.soft(typeof error.field === 'string' && typeof error.message === 'string', `${label}: ${JSON.stringify(error)}`).toBe(true)
          expect.soft(reply.body.invalid_fields, label).toContain(error.field)
        }
      }
      // Nothing was reserved by any refused request (only the hold made above).
      expect(await availableStock(t)).toBe(99)
      expect((await t.request('GET', `/api/holds/${holdId}`)).body.status).toBe('active')
      expect((await t.audit()).ok).toBe(true)
    })

    it('lists every invalid field of one request, not only the first', async () => {
      const t = await buildTestApp(engine.name)
      const reply = await t.request('POST', '/api/holds', { body: { product_id: '1', qty: '2' } })
      expectProblem(reply, 422, 'validation_failed')
      expect(reply.body.invalid_fields).toEqual(expect.arrayContaining(['product_id', 'qty']))
      expect(reply.body.errors.map((error: { field: string }) => error.field)).toEqual(expect.arrayContaining(['product_id', 'qty']))
    })

    it('accepts quantity as an alias of qty, and both when they agree', async () => {
      const t = await buildTestApp(engine.name)
      const alias = await t.request('POST', '/api/holds', { body: { product_id: t.productId, quantity: 3 } })
      expect(alias.status).toBe(201)
      expect(alias.body).toMatchObject({ product_id: t.productId, qty: 3, status: 'active' })
      const both = await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 2, quantity: 2 } })
      expect(both.status).toBe(201)
      expect(both.body.qty).toBe(2)
      expect(await availableStock(t)).toBe(95)
      expect((await t.audit()).ok).toBe(true)
    })

    it('holds exactly MAX_QTY_PER_HOLD units and refuses one more with 422 naming qty', async () => {
      const t = await buildTestApp(engine.name, { env: { MAX_QTY_PER_HOLD: '4' } })
      const atLimit = await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 4 } })
      expect(atLimit.status).toBe(201)
      expect(atLimit.body.qty).toBe(4)
      const overLimit = await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 5 } })
      expectProblem(overLimit, 422, 'validation_failed')
      expect(overLimit.body.invalid_fields).toEqual(['qty'])
      const aliasOverLimit = await t.request('POST', '/api/holds', { body: { product_id: t.productId, quantity: 5 } })
      expectProblem(aliasOverLimit, 422, 'validation_failed')
      expect(await availableStock(t)).toBe(96)
      expect((await t.audit()).ok).toBe(true)
    })

    it('answers malformed JSON on every body route with 400 malformed_json', async () => {
      const t = await buildTestApp(engine.name)
      const bodies = ['{', '{"product_id": 1,', "{'qty': 1}", 'nul', '{"a":1}}', '[1,]', 'NaN', '{"a":undefined}', '', '   ']
      for (const route of bodyRoutes(t)) {
        for (const rawBody of bodies) {
          const reply = await t.request(route.method, route.path, rawJson(rawBody, route.headers))
          const label = `${route.method} ${route.path} ${JSON.stringify(rawBody)}`
          expect.soft({ label, ...outcomeOf(reply) }).toEqual({ label, status: 400, code: 'malformed_json' })
          expect.soft(reply.headers.get('content-type'), label).toMatch(/^application\/problem\+json/)
        }
      }
      expect(await availableStock(t)).toBe(100)
    })

    it('answers a body that is not application/json with 415 unsupported_media_type, on every body route', async () => {
      const t = await buildTestApp(engine.name)
      const contentTypes = ['text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/xml', 'application/vnd.api+json', 'text/json']
      for (const route of bodyRoutes(t)) {
        for (const contentType of contentTypes) {
          const reply = await t.request(route.method, route.path, {
            rawBody: JSON.stringify({ product_id: t.productId, qty: 1 }),
            headers: { ...route.headers, 'content-type': contentType },
          })
          const label = `${route.method} ${route.path} as ${contentType}`
          expect.soft({ label, ...outcomeOf(reply) }).toEqual({ label, status: 415, code: 'unsupported_media_type' })
        }
      }
      expect(await availableStock(t)).toBe(100)
    })

    it('accepts application/json with a charset parameter', async () => {
      const t = await buildTestApp(engine.name)
      const reply = await t.request('POST', '/api/holds', {
        rawBody: JSON.stringify({ product_id: t.productId, qty: 1 }),
        headers: { 'content-type': 'application/json; charset=utf-8' },
      })
      expect(reply.status).toBe(201)
      expect(await availableStock(t)).toBe(99)
      expect((await t.audit()).ok).toBe(true)
    })

    it('takes a body of exactly BODY_BYTES_MAX (default 16384) and refuses one byte more with 413 payload_too_large', async () => {
      const t = await buildTestApp(engine.name)
      expect(t.config.bodyBytesMax).toBe(16_384)
      const json = JSON.stringify({ product_id: t.productId, qty: 1 })
      // JSON allows trailing whitespace, so padding changes the size and nothing else.
      const atLimit = await t.request('POST', '/api/holds', rawJson(json.padEnd(16_384, ' ')))
      expect(atLimit.status).toBe(201)
      const overLimit = await t.request('POST', '/api/holds', rawJson(json.padEnd(16_385, ' ')))
      expectProblem(overLimit, 413, 'payload_too_large')
      const megabyte = await t.request('POST', '/api/payments/webhook', rawJson(JSON.stringify({ order_id: 'x'.repeat(1_000_000), status: 'success' }), { 'idempotency-key': 'big' }))
      expectProblem(megabyte, 413, 'payload_too_large')
      expect(await availableStock(t)).toBe(99)
      expect((await t.audit()).ok).toBe(true)
    })

    it('applies a lowered BODY_BYTES_MAX to every body route', async () => {
      const t = await buildTestApp(engine.name, { env: { BODY_BYTES_MAX: '1024' } })
      const json = JSON.stringify({ product_id: t.productId, qty: 1 })
      expect((await t.request('POST', '/api/holds', rawJson(json.padEnd(1024, ' ')))).status).toBe(201)
      for (const route of bodyRoutes(t)) {
        const reply = await t.request(route.method, route.path, rawJson('{}'.padEnd(1025, ' '), route.headers))
        const label = `${route.method} ${route.path}`
        expect.soft({ label, ...outcomeOf(reply) }).toEqual({ label, status: 413, code: 'payload_too_large' })
      }
      expect(await availableStock(t)).toBe(99)
      expect((await t.audit()).ok).toBe(true)
    })

    it('answers unknown routes and unrouted methods with 404 not_found', async () => {
      const t = await buildTestApp(engine.name)
      const routes = [
        ['GET', '/api/nope'],
        ['GET', '/api'],
        ['GET', '/api/products'],
        ['POST', '/api/hold'],
        ['PUT', '/api/holds'],
        ['DELETE', `/api/products/${t.productId}`],
        ['PATCH', '/api/orders/anything'],
        ['POST', '/api/admin/nope'],
        ['GET', '/nope'],
      ] as const
      for (const [method, path] of routes) {
        const reply = await t.request(method, path)
        const label = `${method} ${path}`
        expect.soft({ label, ...outcomeOf(reply) }).toEqual({ label, status: 404, code: 'not_found' })
        expect.soft(reply.headers.get('content-type'), label).toMatch(/^application\/problem\+json/)
      }
    })

    it('refuses an Idempotency-Key over 255 characters or with non-printable characters with 422, changing nothing', async () => {
      const t = await buildTestApp(engine.name)
      const holdId = await holdFor(t)
      const orderHoldId = await holdFor(t)
      const orderId = await orderFor(t, orderHoldId)
      const keys = ['k'.repeat(256), 'has space', 'tab\tinside', 'caf\u00e9', 'c1\u0085control', '']
      const requests = [
        { path: '/api/holds', body: { product_id: t.productId, qty: 1 } },
        { path: '/api/orders', body: { hold_id: holdId } },
        { path: '/api/payments/webhook', body: { order_id: orderId, status: 'success' } },
      ]
      for (const key of keys) {
        for (const { path, body } of requests) {
          const reply = await t.request('POST', path, { body, headers: { 'idempotency-key': key } })
          const label = `${path} key ${JSON.stringify(key.slice(0, 20))} (${key.length} chars)`
          expect.soft({ label, ...outcomeOf(reply) }).toEqual({ label, status: 422, code: 'validation_failed' })
          expect.soft(reply.body?.invalid_fields, label).toEqual(['Idempotency-Key'])
        }
      }
      // Nothing happened: no new hold, the hold was not converted, the order was not paid.
      expect(await availableStock(t)).toBe(98)
      expect((await t.request('GET', `/api/holds/${holdId}`)).body.status).toBe('active')
      expect((await t.request('GET', `/api/orders/${orderId}`)).body.status).toBe('pending')
      expect((await t.audit()).ok).toBe(true)
    })

    it('accepts an Idempotency-Key of exactly 255 visible characters and replays with it', async () => {
      const t = await buildTestApp(engine.name)
      const key = 'K'.repeat(254) + '~'
      const first = await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 2 }, headers: { 'idempotency-key': key } })
      expect(first.status).toBe(201)
      const again = await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 2 }, headers: { 'idempotency-key': key } })
      expect(again.status).toBe(201)
      expect(again.body.hold_id).toBe(first.body.hold_id)
      expect(again.headers.get('idempotent-replayed')).toBe('true')
      expect(await availableStock(t)).toBe(98)
      expect((await t.audit()).ok).toBe(true)
    })

    it('refuses a body idempotency_key that differs from the header with 422, changing nothing', async () => {
      const t = await buildTestApp(engine.name)
      const reply = await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 1, idempotency_key: 'body-key' }, headers: { 'idempotency-key': 'header-key' } })
      expectProblem(reply, 422, 'validation_failed')
      expect(reply.body.invalid_fields).toEqual(['idempotency_key'])
      expect(await availableStock(t)).toBe(100)
    })

    it('never answers 500 to odd bodies on any body route, and answers the same code again on a retry', async () => {
      const t = await buildTestApp(engine.name)
      const orderHoldId = await holdFor(t)
      const orderId = await orderFor(t, orderHoldId)
      const holdId = await holdFor(t)
      let keySeq = 0
      // Each route's valid body; every field in turn is replaced by each odd value below.
      const routes: Array<BodyRoute & { base: () => Record<string, unknown> }> = [
        { method: 'POST', path: '/api/holds', headers: {}, base: () => ({ product_id: t.productId, qty: 1, quantity: 1, idempotency_key: `fuzz-${++keySeq}` }) },
        { method: 'POST', path: '/api/orders', headers: {}, base: () => ({ hold_id: holdId, idempotency_key: `fuzz-${++keySeq}` }) },
        {
          method: 'POST',
          path: '/api/payments/webhook',
          headers: {},
          base: () => ({ order_id: orderId, hold_id: orderHoldId, status: 'success', payment_id: 'pay_1', amount: '99.99', idempotency_key: `fuzz-${++keySeq}` }),
        },
        { method: 'POST', path: '/api/admin/products', headers: adminAuthorization, base: () => ({ name: 'fuzz', price: '1.00', currency: 'USD', stock: 1 }) },
        { method: 'PATCH', path: `/api/admin/products/${t.productId}`, headers: adminAuthorization, base: () => ({ add_stock: 1 }) },
      ]
      // JSON texts, inserted verbatim so -0, 1e308, 30-digit integers and escapes reach the parser.
      const oddValues = [
        '"5"',
        'true',
        'false',
        'null',
        '1.5',
        '0',
        '-0',
        '-1',
        '2147483648',
        '9007199254740993',
        '123456789012345678901234567890',
        '1e308',
        '-1e308',
        '5e-324',
        '""',
        '"💥 ünïcödé ‮"',
        '"\\ud800"',
        '"a\\u0000b"',
        JSON.stringify('x'.repeat(10_000)),
        '[]',
        '[1,2]',
        '{}',
        '{"a":{"b":{"c":[1,{"d":null}]}}}',
        '{"$gt":0}',
        '{"__proto__":{"polluted":"yes"}}',
      ]
      const oddBodies = [
        '[]',
        '[{}]',
        '"text"',
        '42',
        'true',
        'null',
        '{}',
        '{"__proto__":{"polluted":"yes"}}',
        '{"constructor":{"prototype":{"polluted":"yes"}}}',
        '{"a":1,"a":2}',
        '['.repeat(2000) + ']'.repeat(2000),
        '{"a":'.repeat(1000) + '1' + '}'.repeat(1000),
      ]
      const failures: string[] = []
      let requestCount = 0
      const probe = async (route: BodyRoute, text: string): Promise<void> => {
        const label = `${route.method} ${route.path} ${text.length > 120 ? `${text.slice(0, 120)}… (${text.length} chars)` : text}`
        const reply = await t.request(route.method, route.path, rawJson(text, route.headers))
        requestCount += 1
        if (reply.status >= 500) return void failures.push(`${label} -> ${reply.status} ${reply.text.slice(0, 200)}`)
        if (reply.status < 400) return
        const violation = catalogueViolation(reply)
        if (violation) return void failures.push(`${label} -> ${reply.status}: ${violation}`)
        // A refusal changed nothing, so the same request again is refused the same way.
        const again = await t.request(route.method, route.path, rawJson(text, route.headers))
        requestCount += 1
        if (again.status !== reply.status || again.body?.code !== reply.body.code) {
          failures.push(`${label} -> ${reply.status} ${reply.body.code}, then ${again.status} ${again.body?.code}`)
        }
      }
      for (const route of routes) {
        for (const field of Object.keys(route.base())) {
          for (const odd of oddValues) {
            const text = JSON.stringify({ ...route.base(), [field]: '\u0000ODD\u0000' }).replace('"\\u0000ODD\\u0000"', odd)
            await probe(route, text)
          }
        }
        for (const text of oddBodies) await probe(route, text)
        // Prototype keys next to an otherwise valid body.
        const valid = JSON.stringify(route.base()).slice(0, -1)
        await probe(route, `${valid},"__proto__":{"polluted":"yes"}}`)
        await probe(route, `${valid},"constructor":{"prototype":{"polluted":"yes"}}}`)
      }
      expect(requestCount).toBeGreaterThan(500)
      expect(failures).toEqual([])
      // The server runs in this process: a polluted prototype would show here.
      expect(({} as Record<string, unknown>).polluted).toBeUndefined()
      expect((await t.audit()).ok).toBe(true)
    })
  })
}
