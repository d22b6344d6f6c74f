// Proves `flash-sale race` (run as a child process, as `npx flash-sale race` runs) reports a real
// sell-out exactly and exits 0 against this service on every engine, and exits 1 against tiny
// fake servers that oversell or fail their audit; misuse exits 2 and the run is time-bounded.
import { createHmac } from 'node:crypto'
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { describe, expect, it, onTestFinished } from 'vitest'
import { peakLiveUnits } from '../src/cli/race-report.js'
import { parseRaceArgs } from '../src/cli/race.js'
import { buildTestApp, testAdminToken, testWebhookSecret } from './helpers/app.js'
import { testEngines } from './helpers/engines.js'
import { runCli } from './helpers/lifecycle.js'

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: race tool`, () => {
    it('sells 10 units to 40 buyers through order and signed webhook, reports it exactly, audits clean and exits 0', async () => {
      const t = await buildTestApp(engine.name, { stock: 10, env: { WEBHOOK_SECRET: testWebhookSecret } })
      const result = await runCli(
        [
          'race',
          '--url',
          t.baseUrl,
          '--product',
          String(t.productId),
          '--buyers',
          '40',
          '--concurrency',
          '8',
          '--checkout',
          '--admin-token',
          testAdminToken,
          '--webhook-secret',
          testWebhookSecret,
        ],
        {},
      )
      expect(result.code, result.stdout + result.stderr).toBe(0)
      expect(result.stdout).toContain('before: stock 10, available 10, reserved 0, sold 0')
      expect(result.stdout).toMatch(/holds: 10 granted \(10 units\), 30 refused or failed/)
      expect(result.stdout).toContain('refused 409 insufficient_stock: 30')
      expect(result.stdout).toContain('checkout: 10 orders, 10 paid (10 units)')
      expect(result.stdout).toContain('after: stock 10, available 0, reserved 0, sold 10')
      expect(result.stdout).toMatch(/audit: ok, 1 products checked, 0 violations/)
      expect(result.stdout).toMatch(/hold latency ms: p50 [\d.]+, p90 [\d.]+, p99 [\d.]+, max [\d.]+/)
      expect(result.stdout).toContain('verdict: ok')
      // The progress bar went to stderr, and ended complete.
      expect(result.stderr).toContain('40/40 buyers, 10 holds granted')
      const product = await t.request('GET', `/api/products/${t.productId}`)
      expect(product.body).toMatchObject({ stock: 10, available_stock: 0, reserved: 0, sold: 10 })
      expect(await t.audit()).toMatchObject({ ok: true, violations: [] })
    })

    it('says it could not check, not that units were oversold, when the audit refuses a wrong --admin-token (exit 1)', async () => {
      const t = await buildTestApp(engine.name, { stock: 3 })
      const result = await runCli(['race', '--url', `${t.baseUrl}/`, '--product', String(t.productId), '--buyers', '4', '--concurrency', '4', '--admin-token', 'not-the-token'], {})
      expect(result.code, result.stdout + result.stderr).toBe(1)
      expect(result.stdout).toContain('verdict: could not check')
      expect(result.stdout).toContain('could not check: the audit answered 401 unauthorized')
      expect(result.stdout).not.toContain('OVERSOLD')
    })

    it('holds only, without a token: counts refusals and leaves the units reserved', async () => {
      const t = await buildTestApp(engine.name, { stock: 3 })
      const result = await runCli(['race', '--url', `${t.baseUrl}/`, '--product', String(t.productId), '--buyers', '12', '--concurrency', '12'], {})
      expect(result.code, result.stdout + result.stderr).toBe(0)
      expect(result.stdout).toMatch(/holds: 3 granted \(3 units\), 9 refused or failed/)
      expect(result.stdout).toContain('after: stock 3, available 0, reserved 3, sold 0')
      expect(result.stdout).not.toContain('audit:')
      expect(await t.audit()).toMatchObject({ ok: true, violations: [] })
    })
  })
}

describe('race tool against fake servers', () => {
  it('exits 1 naming the oversell when a server grants 20 holds on 5 units', async () => {
    const fake = await fakeServer({ stock: 5, grantAll: true })
    const result = await runCli(['race', '--url', fake.baseUrl, '--product', '1', '--buyers', '20', '--concurrency', '4'], {})
    expect(result.code, result.stdout + result.stderr).toBe(1)
    expect(result.stdout).toMatch(/holds: 20 granted \(20 units\), 0 refused/)
    expect(result.stdout).toContain('verdict: OVERSOLD')
    expect(result.stdout).toContain('20 units were held at once, only 5 could be (stock 5 - sold 0)')
    expect(fake.holdRequests).toBe(20)
  })

  it('exits 1 when the server sells more than its stock through checkout, even though its audit says ok', async () => {
    const fake = await fakeServer({ stock: 2, grantAll: true, auditOk: true })
    const result = await runCli(['race', '--url', fake.baseUrl, '--product', '1', '--buyers', '4', '--concurrency', '2', '--checkout', '--admin-token', 'x'], {})
    expect(result.code, result.stdout).toBe(1)
    expect(result.stdout).toContain('checkout: 4 orders, 4 paid (4 units)')
    expect(result.stdout).toContain('4 units were paid, only 2 could be')
    expect(result.stdout).toContain('audit: ok')
  })

  it('exits 1 when the audit fails though the grants were within stock', async () => {
    const fake = await fakeServer({ stock: 5, grantAll: false, auditOk: false })
    const result = await runCli(['race', '--url', fake.baseUrl, '--product', '1', '--buyers', '8', '--concurrency', '3', '--admin-token', 'secret-token'], {})
    expect(result.code, result.stdout).toBe(1)
    expect(result.stdout).toMatch(/holds: 5 granted \(5 units\), 3 refused/)
    expect(result.stdout).toContain('refused 409 insufficient_stock: 3')
    expect(result.stdout).toContain('audit: FAILED')
    expect(result.stdout).toContain('the audit reports violations')
    expect(fake.auditAuthorization).toBe('Bearer secret-token')
  })

  it('sends one valid HS256 buyer token per buyer, each for a different buyer', async () => {
    const fake = await fakeServer({ stock: 100, grantAll: false })
    const secret = 'buyer-secret'
    const result = await runCli(['race', '--url', fake.baseUrl, '--product', '1', '--buyers', '6', '--concurrency', '3', '--buyer-token-secret', secret], {})
    expect(result.code, result.stdout).toBe(0)
    expect(fake.authorizations).toHaveLength(6)
    const subjects = fake.authorizations.map((header) => {
      const [head, payload, signature] = header.replace(/^Bearer /, '').split('.')
      expect(createHmac('sha256', secret).update(`${head}.${payload}`).digest('base64url')).toBe(signature)
      expect(JSON.parse(Buffer.from(head!, 'base64url').toString())).toEqual({ alg: 'HS256', typ: 'JWT' })
      const claims = JSON.parse(Buffer.from(payload!, 'base64url').toString())
      expect(claims.exp).toBeGreaterThan(Date.now() / 1000)
      return claims.sub as string
    })
    expect(new Set(subjects).size).toBe(6)
  })

  it('stops at --max-duration-s when the target never answers, and says how many buyers were not tried', async () => {
    const fake = await fakeServer({ stock: 100, grantAll: false, hangHolds: true })
    const startedMs = Date.now()
    const result = await runCli(['race', '--url', fake.baseUrl, '--product', '1', '--buyers', '50', '--concurrency', '5', '--max-duration-s', '1'], {})
    expect(Date.now() - startedMs).toBeLessThan(15_000)
    expect(result.code, result.stdout).toBe(0)
    expect(result.stdout).toContain('refused error timeout: 5')
    expect(result.stdout).toContain('stopped at the 1 s limit: 45 buyers not tried')
    expect(fake.holdRequests).toBe(5)
  })

  it('exits 1 when the target cannot be reached, and 2 on misuse', async () => {
    const closed = await fakeServer({ stock: 1, grantAll: false })
    await closed.close()
    const unreachable = await runCli(['race', '--url', closed.baseUrl, '--product', '1', '--buyers', '1', '--concurrency', '1'], {})
    expect(unreachable.code).toBe(1)
    expect(unreachable.stderr).toContain('could not read product 1')
    const misuse = await runCli(['race', '--url', 'file:///etc/passwd', '--product', '1', '--buyers', '1', '--concurrency', '1'], {})
    expect(misuse.code).toBe(2)
    expect(misuse.stderr).toContain('--url must be http:// or https://, not file:')
  })
})

describe('race tool arguments', () => {
  it('refuses non-HTTP URLs, counts out of bounds and missing or unknown flags, each with a message naming the flag', () => {
    const misuses: Array<[string[], string]> = [
      [['--url', 'ftp://127.0.0.1/', '--product', '1', '--buyers', '1', '--concurrency', '1'], '--url must be http:// or https://'],
      [['--url', 'javascript:alert(1)', '--product', '1', '--buyers', '1', '--concurrency', '1'], '--url must be http:// or https://'],
      [['--url', 'not a url', '--product', '1', '--buyers', '1', '--concurrency', '1'], 'is not a URL'],
      [['--url', 'http://user:pw@127.0.0.1:1', '--product', '1', '--buyers', '1', '--concurrency', '1'], 'must not carry credentials'],
      [['--url', 'http://127.0.0.1:1', '--product', '1', '--buyers', '0', '--concurrency', '1'], '--buyers must be an integer from 1 to 100000'],
      [['--url', 'http://127.0.0.1:1', '--product', '1', '--buyers', '100001', '--concurrency', '1'], '--buyers must be an integer from 1 to 100000'],
      [['--url', 'http://127.0.0.1:1', '--product', '1', '--buyers', '5', '--concurrency', '1.5'], '--concurrency must be an integer'],
      [['--url', 'http://127.0.0.1:1', '--product', '1', '--buyers', '5', '--concurrency', '1001'], '--concurrency must be an integer from 1 to 1000'],
      [['--url', 'http://127.0.0.1:1', '--product', '0', '--buyers', '5', '--concurrency', '1'], '--product must be an integer'],
      [['--url', 'http://127.0.0.1:1', '--product', '1', '--buyers', '5', '--concurrency', '1', '--max-duration-s', '3601'], '--max-duration-s must be an integer from 1 to 3600'],
      [['--url', 'http://127.0.0.1:1', '--buyers', '5', '--concurrency', '1'], 'race needs --product'],
      [['--product', '1', '--buyers', '5', '--concurrency', '1'], 'race needs --url'],
    ]
    for (const [args, message] of misuses) expect(() => parseRaceArgs(args, {}), args.join(' ')).toThrow(message)
    expect(() => parseRaceArgs(['--url', 'http://127.0.0.1:1', '--bogus'], {})).toThrow(/Unknown option '--bogus'/)
  })

  it('takes the webhook secret from the environment unless given, and caps concurrency at the number of buyers', () => {
    const options = parseRaceArgs(['--url', 'https://shop.example/', '--product', '7', '--buyers', '3', '--concurrency', '50'], { WEBHOOK_SECRET: 'from-env' })
    expect(options).toMatchObject({ baseUrl: 'https://shop.example', productId: 7, buyers: 3, concurrency: 3, checkout: false, webhookSecret: 'from-env', maxDurationMs: 120_000 })
    expect(parseRaceArgs(['--url', 'http://a', '--product', '1', '--buyers', '1', '--concurrency', '1', '--webhook-secret', 'flag'], { WEBHOOK_SECRET: 'env' }).webhookSecret).toBe(
      'flag',
    )
  })
})

describe('peakLiveUnits', () => {
  it("counts units held at one instant by the server's own times: back-to-back holds never overlap, overlapping ones add up", () => {
    const sequential = [0, 1, 2, 3].map((index) => ({ qty: 1, createdAtMs: 1000 * index, untilMs: 1000 * (index + 1) }))
    expect(peakLiveUnits(sequential)).toBe(1)
    const overlapping = [...sequential, { qty: 2, createdAtMs: 1500, untilMs: Number.POSITIVE_INFINITY }]
    expect(peakLiveUnits(overlapping)).toBe(3)
    expect(peakLiveUnits([])).toBe(0)
  })
})

interface FakeServer {
  baseUrl: string
  holdRequests: number
  authorizations: string[]
  auditAuthorization: string | undefined
  close(): Promise<void>
}

// A tiny server speaking just enough of the API. With grantAll it grants every hold and always
// reports its full stock available (a broken target that oversells); otherwise it counts right.
async function fakeServer(options: { stock: number; grantAll: boolean; auditOk?: boolean; hangHolds?: boolean }): Promise<FakeServer> {
  let reserved = 0
  let sold = 0
  let sequence = 0
  const hanging: ServerResponse[] = []
  const state: FakeServer = { baseUrl: '', holdRequests: 0, authorizations: [], auditAuthorization: undefined, close: async () => {} }
  const json = (response: ServerResponse, status: number, body: unknown): void => {
    response.writeHead(status, { 'content-type': status >= 400 ? 'application/problem+json' : 'application/json' }).end(JSON.stringify(body))
  }
  const handle = async (request: IncomingMessage, response: ServerResponse): Promise<void> => {
    let raw = ''
    for await (const chunk of request) raw += chunk
    const body = raw ? JSON.parse(raw) : undefined
    const nowIso = new Date().toISOString()
    const laterIso = new Date(Date.now() + 120_000).toISOString()
    if (request.method === 'GET' && request.url === '/api/products/1') {
      const counts = options.grantAll ? { reserved: 0, sold: 0 } : { reserved, sold }
      return json(response, 200, { id: 1, stock: options.stock, available_stock: options.stock - counts.reserved - counts.sold, ...counts })
    }
    if (request.method === 'POST' && request.url === '/api/holds') {
      state.holdRequests += 1
      if (request.headers.authorization) state.authorizations.push(request.headers.authorization)
      if (options.hangHolds) {
        hanging.push(response)
        return
      }
      if (!options.grantAll && reserved + sold + body.qty > options.stock) return json(response, 409, { status: 409, code: 'insufficient_stock' })
      reserved += body.qty
      sequence += 1
      return json(response, 201, { hold_id: `hold_${sequence}`, product_id: 1, qty: body.qty, status: 'active', created_at: nowIso, expires_at: laterIso })
    }
    if (request.method === 'POST' && request.url === '/api/orders') {
      return json(response, 201, {
        order_id: body.hold_id.replace('hold', 'ord'),
        hold_id: body.hold_id,
        qty: 1,
        amount: '1.00',
        status: 'pending',
        created_at: nowIso,
        expires_at: laterIso,
      })
    }
    if (request.method === 'POST' && request.url === '/api/payments/webhook') {
      sold += 1
      return json(response, 200, { status: 'processed', order_id: body.order_id, order_status: 'paid', outcome: 'paid' })
    }
    if (request.method === 'GET' && request.url === '/api/admin/audit') {
      state.auditAuthorization = request.headers.authorization
      return json(response, 200, {
        ok: options.auditOk ?? true,
        checked_products: 1,
        violations: options.auditOk === false ? [{ invariant: 'I1', product_id: 1, message: 'made up' }] : [],
      })
    }
    return json(response, 404, { status: 404, code: 'not_found' })
  }
  const server: Server = createServer((request, response) => void handle(request, response))
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const address = server.address()
  state.baseUrl = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`
  let closed = false
  state.close = async () => {
    if (closed) return
    closed = true
    for (const response of hanging) response.destroy()
    server.closeAllConnections()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  }
  onTestFinished(() => state.close())
  return state
}
