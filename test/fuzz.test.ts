// Fuzzes every route of the service's own /openapi.json with requests generated from its
// schemas, valid and invalid (wrong types, missing and extra fields, huge numbers, long and odd
// unicode strings, broken JSON and encodings, bad or missing content types, bad headers and path
// params): no answer is a 5xx, and a refused answer (4xx) leaves every table as it was.
// fast-check runs with a fixed seed (FUZZ_SEED), printed on failure; FUZZ_RUNS sets the count.
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { signPayload } from '../src/http/signature.js'
import { buildTestApp, testAdminToken, testWebhookSecret, type TestApp } from './helpers/app.js'
import { rawQuery, testEngines } from './helpers/engines.js'

const seed = Number(process.env.FUZZ_SEED ?? 20261126)
const runsPerRoute = Number(process.env.FUZZ_RUNS ?? 40)
// Real ids the generators may use, so valid requests reach the domain (not only 404s).
const knownIdsMax = 32

type JsonSchema = {
  type?: string
  properties?: Record<string, JsonSchema>
  required?: string[]
  minimum?: number
  maximum?: number
  minLength?: number
  maxLength?: number
  pattern?: string
  enum?: unknown[]
  anyOf?: JsonSchema[]
}

interface Operation {
  method: string
  path: string
  body?: JsonSchema
}

interface Known {
  productIds: number[]
  holdIds: string[]
  orderIds: string[]
}

interface FuzzRequest {
  method: string
  path: string
  headers: Record<string, string>
  body?: string | Uint8Array
}

// Values that break a field whatever its schema: wrong types, edges, huge and odd values.
const hostileValue = fc.oneof(
  fc.constantFrom(
    null,
    true,
    false,
    '5',
    '1',
    1.5,
    -1,
    0,
    [],
    {},
    [1],
    { a: 1 },
    2 ** 31,
    2 ** 53,
    -(2 ** 63),
    1e308,
    -1e308,
    Number.MAX_SAFE_INTEGER + 2,
    '',
    ' ',
    '\u0000',
    'NaN',
    '1e400',
  ),
  fc.string({ unit: 'binary', maxLength: 64 }),
  fc.string({ minLength: 1_000, maxLength: 5_000 }),
  fc.integer(),
  fc.double(),
  fc.bigInt({ min: -(10n ** 30n), max: 10n ** 30n }).map((value) => Number(value)),
  fc.constantFrom('\u{1F600}', '\uD800', 'e\u0301', '\u202E', 'ｈｏｌｄ', '\uFEFF1', '𝟙'),
)

function validValue(schema: JsonSchema, name: string, known: Known): fc.Arbitrary<unknown> {
  if (schema.anyOf) return fc.oneof(...schema.anyOf.map((inner) => validValue(inner, name, known)))
  if (schema.enum) return fc.constantFrom(...schema.enum)
  if (name === 'product_id' && known.productIds.length) return fc.oneof(fc.constantFrom(...known.productIds), fc.integer({ min: 1 }))
  if (name === 'hold_id' && known.holdIds.length) return fc.oneof(fc.constantFrom(...known.holdIds), fc.string({ minLength: 1, maxLength: 64 }))
  if (name === 'order_id' && known.orderIds.length) return fc.oneof(fc.constantFrom(...known.orderIds), fc.string({ minLength: 1, maxLength: 64 }))
  switch (schema.type) {
    case 'integer':
      return fc.integer({ min: schema.minimum ?? -(2 ** 31), max: schema.maximum ?? 2 ** 31 })
    case 'number':
      return fc.double({ min: schema.minimum ?? -1e9, max: schema.maximum ?? 1e9, noNaN: true })
    case 'boolean':
      return fc.boolean()
    case 'string': {
      const minLength = schema.minLength ?? 0
      const maxLength = schema.maxLength ?? 64
      const text = schema.pattern ? fc.stringMatching(new RegExp(schema.pattern)) : fc.string({ unit: 'grapheme', minLength, maxLength })
      return text.filter((value) => value.length >= minLength && value.length <= maxLength)
    }
    case 'object':
      return objectOf(schema, known)
    default:
      return hostileValue
  }
}

function objectOf(schema: JsonSchema, known: Known): fc.Arbitrary<Record<string, unknown>> {
  const entries = Object.entries(schema.properties ?? {}).map(
    ([name, inner]) => [name, fc.oneof({ weight: 8, arbitrary: validValue(inner, name, known) }, { weight: 1, arbitrary: hostileValue })] as const,
  )
  const required = new Set(schema.required ?? [])
  return fc
    .tuple(
      fc.record(Object.fromEntries(entries), { requiredKeys: [] }),
      // Required fields are mostly present, sometimes missing; extra fields sometimes added.
      fc.subarray([...required]),
      fc.option(fc.dictionary(fc.string({ maxLength: 12 }), hostileValue, { maxKeys: 3 }), { freq: 6 }),
    )
    .chain(([record, dropped, extra]) => fc.constant(Object.fromEntries([...Object.entries(extra ?? {}), ...Object.entries(record)].filter(([name]) => !dropped.includes(name)))))
    .chain((record) => {
      // Fill in required fields the record left out, most of the time.
      const missing = [...required].filter((name) => !(name in record))
      if (missing.length === 0) return fc.constant(record)
      return fc
        .boolean()
        .chain((fill) =>
          fill
            ? fc
                .tuple(...missing.map((name) => validValue(schema.properties![name]!, name, known)))
                .map((values) => ({ ...record, ...Object.fromEntries(missing.map((name, index) => [name, values[index]])) }))
            : fc.constant(record),
        )
    })
}

// A header value fetch will send (space, visible ASCII and Latin-1's upper half, never DEL 0x7f):
// anything else it refuses itself, so the request would never reach the server.
const headerText = fc
  .string({
    unit: fc
      .integer({ min: 0x20, max: 0xff })
      .filter((code) => code !== 0x7f)
      .map((code) => String.fromCharCode(code)),
    maxLength: 300,
  })
  .filter((value) => value.trim() === value)

const rawBodies = fc.constantFrom(
  '{',
  '{"product_id":',
  '\uFEFF{"product_id": 1, "qty": 1}',
  '[]',
  'null',
  '"text"',
  '0',
  '{"product_id": 1e400, "qty": 1}',
  '{"product_id": 123456789012345678901234567890, "qty": 1}',
  '{"__proto__": {"qty": 1}, "product_id": 1}',
  '{"constructor": {"prototype": {"polluted": true}}}',
  '{"qty": 1, "qty": "2", "product_id": 1}',
  ' ',
  '',
)

function pathParam(known: Known, kind: string): fc.Arbitrary<string> {
  const real = kind === 'holds' ? known.holdIds : kind === 'orders' ? known.orderIds : known.productIds.map(String)
  return fc.oneof(
    { weight: 2, arbitrary: real.length ? fc.constantFrom(...real).map(encodeURIComponent) : fc.constant('1') },
    {
      weight: 1,
      arbitrary: fc
        .string({ unit: 'grapheme', maxLength: 80 })
        .filter((value) => value.length > 0)
        .map(encodeURIComponent),
    },
    {
      weight: 1,
      arbitrary: fc.constantFrom(
        '0',
        '-1',
        '1.5',
        '1e3',
        '0x10',
        '%20',
        '%zz',
        '%',
        '%C0%AF',
        '%00',
        '99999999999999999999999',
        '9007199254740993',
        'NaN',
        '%F0%9F%98%80',
        'a'.repeat(2_000),
        'x'.repeat(1_025),
        '1%2F2',
      ),
    },
  )
}

function requests(operation: Operation, known: Known): fc.Arbitrary<FuzzRequest> {
  const kind = operation.path.split('/')[2] === 'admin' ? 'products' : operation.path.split('/')[2]!
  const path = operation.path.includes('{id}') ? pathParam(known, kind).map((id) => operation.path.replace('{id}', id)) : fc.constant(operation.path)
  const body: fc.Arbitrary<string | Uint8Array | undefined> = operation.body
    ? fc.oneof(
        { weight: 6, arbitrary: objectOf(operation.body, known).map((value) => JSON.stringify(value)) },
        { weight: 1, arbitrary: rawBodies },
        { weight: 1, arbitrary: fc.uint8Array({ maxLength: 64 }) },
        { weight: 1, arbitrary: fc.jsonValue().map((value) => JSON.stringify(value)) },
      )
    : fc
        .option(
          fc.oneof(
            rawBodies,
            fc.jsonValue().map((value) => JSON.stringify(value)),
          ),
          { freq: 3 },
        )
        .map((value) => value ?? undefined)
  const contentType = fc.option(
    fc.oneof(
      { weight: 14, arbitrary: fc.constant('application/json') },
      {
        weight: 2,
        arbitrary: fc.constantFrom(
          'application/json; charset=utf-8',
          'application/json; charset=utf-16',
          'APPLICATION/JSON',
          'text/plain',
          'application/x-www-form-urlencoded',
          'multipart/form-data; boundary=x',
          'application/problem+json',
          'application/json;;;',
          '*/*',
          'application/json; charset=latin1',
        ),
      },
      { weight: 1, arbitrary: headerText },
    ),
    { freq: 8 },
  )
  const authorization = fc.oneof(
    { weight: 3, arbitrary: fc.constant(`Bearer ${testAdminToken}`) },
    { weight: 1, arbitrary: fc.constantFrom('Bearer', 'Bearer ', `bearer ${testAdminToken}`, `Bearer ${testAdminToken}x`, 'Basic YWRtaW46YWRtaW4=') },
    { weight: 1, arbitrary: headerText.map((value) => `Bearer ${value}`) },
  )
  const idempotencyKey = fc.option(fc.oneof(fc.stringMatching(/^[\x21-\x7E]{1,40}$/), headerText, fc.constant('k'.repeat(300))), { freq: 2 })
  const signature = fc.oneof(
    { weight: 4, arbitrary: fc.constant('valid') },
    { weight: 1, arbitrary: fc.oneof(headerText, fc.constantFrom('t=0,v1=00', 't=99999999999999999999,v1=zz', 'v1=', 't=,v1=', 't=1,t=2,v1=ab')) },
  )
  const extraHeader = fc.option(fc.tuple(fc.constantFrom('x-request-id', 'x-forwarded-for', 'accept', 'accept-encoding', 'content-encoding', 'transfer-encoding-x'), headerText), {
    freq: 3,
  })
  return fc.record({ path, body, contentType, authorization, idempotencyKey, signature, extraHeader }).map((parts) => {
    const headers: Record<string, string> = {}
    if (parts.contentType !== null) headers['content-type'] = parts.contentType
    if (operation.path.startsWith('/api/admin')) headers.authorization = parts.authorization
    if (parts.idempotencyKey !== null) headers['idempotency-key'] = parts.idempotencyKey
    if (operation.path === '/api/payments/webhook') {
      const raw = typeof parts.body === 'string' ? parts.body : parts.body ? Buffer.from(parts.body).toString('utf8') : ''
      headers['webhook-signature'] = parts.signature === 'valid' ? signPayload(testWebhookSecret, Math.floor(Date.now() / 1000), raw) : parts.signature
    }
    if (parts.extraHeader) headers[parts.extraHeader[0]] = parts.extraHeader[1]
    const methodTakesBody = operation.method !== 'GET'
    return { method: operation.method, path: parts.path, headers, ...(methodTakesBody && parts.body !== undefined ? { body: parts.body } : {}) }
  })
}

// Everything a request could change: each table's rows, and the counts the audit reads.
async function fingerprint(t: TestApp): Promise<string> {
  // One query (one connection) per fingerprint: a connection per table was slow on a loaded machine.
  const tables = ['products', 'holds', 'orders', 'payment_events', 'idempotency_keys', 'expiry_buckets']
  const counts = tables.map((table) => `(select count(*) from ${table}) as ${table}`).join(', ')
  const statuses = ['active', 'converted', 'expired', 'released'].map((status) => `(select count(*) from holds where status = '${status}') as holds_${status}`).join(', ')
  const [row] = await rawQuery(t.engine, t.databaseUrl, `select ${counts}, ${statuses}`)
  const numbers = Object.fromEntries(Object.entries(row as Record<string, unknown>).map(([name, value]) => [name, Number(value)]))
  return JSON.stringify({ numbers, facts: await t.runtime.store.auditFacts() })
}

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: fuzzing every route of /openapi.json`, () => {
    it(`${runsPerRoute} generated requests per route (seed ${seed}): never a 5xx, and a refused request changes nothing`, async () => {
      const t = await buildTestApp(engine.name, { stock: 50, env: { WEBHOOK_SECRET: testWebhookSecret } })
      const document = (await t.request('GET', '/openapi.json')).body as {
        paths: Record<string, Record<string, { requestBody?: { content?: Record<string, { schema: JsonSchema }> } }>>
      }
      const operations: Operation[] = Object.entries(document.paths).flatMap(([path, methods]) =>
        Object.entries(methods).map(([method, operation]) => ({ method: method.toUpperCase(), path, body: operation.requestBody?.content?.['application/json']?.schema })),
      )
      // Every route the service documents is fuzzed (a new route joins without a test change).
      expect(operations.length).toBeGreaterThanOrEqual(10)

      const known: Known = { productIds: [t.productId], holdIds: [], orderIds: [] }
      for (let index = 0; index < 6; index++) {
        const hold = await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 1 } })
        known.holdIds.push(hold.body.hold_id)
        if (index % 2 === 0) known.orderIds.push((await t.request('POST', '/api/orders', { body: { hold_id: hold.body.hold_id } })).body.order_id)
      }

      const summary: Record<string, Record<number, number>> = {}
      for (const operation of operations) {
        const route = `${operation.method} ${operation.path}`
        summary[route] = {}
        let before = await fingerprint(t)
        await fc.assert(
          fc.asyncProperty(requests(operation, known), async (request) => {
            const response = await fetch(`${t.baseUrl}${request.path}`, {
              method: request.method,
              headers: request.headers,
              ...(request.body !== undefined ? { body: request.body as BodyInit } : {}),
            })
            const text = await response.text()
            summary[route]![response.status] = (summary[route]![response.status] ?? 0) + 1
            expect(response.status, `${route} answered ${response.status}: ${text.slice(0, 300)}`).toBeLessThan(500)
            const after = await fingerprint(t)
            if (response.status >= 400) expect(after, `${route} refused with ${response.status} yet changed the tables: ${text.slice(0, 300)}`).toBe(before)
            if (response.status < 300) {
              const body = JSON.parse(text || '{}') as { hold_id?: string; order_id?: string; id?: number }
              if (body.hold_id && known.holdIds.length < knownIdsMax && !known.holdIds.includes(body.hold_id)) known.holdIds.push(body.hold_id)
              if (body.order_id && known.orderIds.length < knownIdsMax && !known.orderIds.includes(body.order_id)) known.orderIds.push(body.order_id)
            }
            before = after
          }),
          { seed, numRuns: runsPerRoute, endOnFailure: true },
        )
      }
      console.log(`[fuzz] ${engine.name} (seed ${seed}): ${JSON.stringify(summary)}`)
      expect(await t.audit()).toMatchObject({ ok: true, violations: [] })
    }, 600_000)
  })
}
