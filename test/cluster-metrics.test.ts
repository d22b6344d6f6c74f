// Proves /metrics reports the whole service with WORKERS=3 (SPEC §6): a scripted sale is sent
// over a new connection per request, so the three workers share it, and every scrape, whichever
// worker answers it, shows each counter's exact service-wide value, the per-product gauges once
// (read from the database, never summed three times) and the dashboard the same totals.
import { request as httpRequest } from 'node:http'
import pino from 'pino'
import { describe, expect, it, onTestFinished } from 'vitest'
import { loadConfig, type EngineName } from '../src/config.js'
import { audit } from '../src/domain/audit.js'
import { openRuntime } from '../src/runtime.js'
import { baseEnv, productCreator, testAdminToken } from './helpers/app.js'
import { freshDatabase, testEngines } from './helpers/engines.js'
import { pollUntil } from './helpers/lifecycle.js'
import { faultStartTimeoutMs, logEvents, spawnServer, type ServerProcess } from './helpers/servers.js'

// `npm start` with WORKERS=n on a fresh database holding one product, killed when the test ends.
async function startWorkers(engine: EngineName, workers: number, stock: number) {
  const fresh = await freshDatabase(engine)
  const runtime = openRuntime(loadConfig(baseEnv(fresh.url)), { logger: pino({ level: 'silent' }) })
  await runtime.store.migrate()
  const productId = await productCreator(runtime.store, runtime.clock)(stock)
  let server: ServerProcess | undefined
  onTestFinished(async () => {
    server?.child.kill('SIGKILL')
    await server?.exited
    await runtime.store.close()
    await fresh.drop()
  })
  // Three workers forked after a migration take a while to boot on a loaded machine.
  server = await spawnServer(fresh.url, { WORKERS: String(workers) }, { listeningMin: workers, startTimeoutMs: faultStartTimeoutMs })
  return { server, baseUrl: server.baseUrl, productId, audit: () => audit(runtime.store) }
}

interface FreshReply {
  status: number
  text: string
  body: any
}

// One request on a connection of its own: the cluster's round-robin hands each to the next worker.
function freshRequest(baseUrl: string, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<FreshReply> {
  const payload = body === undefined ? undefined : JSON.stringify(body)
  return new Promise((resolve, reject) => {
    const request = httpRequest(
      `${baseUrl}${path}`,
      { method, agent: false, headers: { ...(payload === undefined ? {} : { 'content-type': 'application/json' }), connection: 'close', ...headers } },
      (response) => {
        let text = ''
        response.setEncoding('utf8')
        response.on('data', (chunk: string) => (text += chunk))
        response.on('end', () => {
          let parsed: unknown
          try {
            parsed = JSON.parse(text)
          } catch {
            parsed = undefined
          }
          resolve({ status: response.statusCode ?? 0, text, body: parsed })
        })
      },
    )
    request.on('error', reject)
    request.end(payload)
  })
}

// The sum of every sample of `name` whose labels include `labels`; the count of such samples too.
function samples(metricsText: string, name: string, labels: Record<string, string> = {}): { sum: number; count: number } {
  let sum = 0
  let count = 0
  for (const line of metricsText.split('\n')) {
    const match = /^([a-zA-Z_:][\w:]*)(\{(.*)\})? (\S+)$/.exec(line)
    if (!match || match[1] !== name) continue
    const present = Object.fromEntries([...(match[3] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((pair) => [pair[1], pair[2]]))
    if (!Object.entries(labels).every(([label, value]) => present[label] === value)) continue
    sum += Number(match[4])
    count += 1
  }
  return { sum, count }
}

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: service-wide metrics`, () => {
    it('with WORKERS=3 every scrape shows the exact counters of a sale spread over all three workers, and product gauges once', async () => {
      const workers = await startWorkers(engine.name, 3, 5)
      const product = workers.productId
      const base = workers.baseUrl
      const post = (path: string, body: unknown, headers: Record<string, string> = {}) => freshRequest(base, 'POST', path, body, headers)

      // Eight buyers for five units, one request after another so each lands on the next worker.
      const holds: FreshReply[] = []
      for (let index = 0; index < 8; index++) holds.push(await post('/api/holds', { product_id: product, qty: 1 }))
      const holdIds = holds.filter((reply) => reply.status === 201).map((reply) => reply.body.hold_id as string)
      expect(holds.map((reply) => reply.status).sort()).toEqual([201, 201, 201, 201, 201, 409, 409, 409])

      const orderIds: string[] = []
      for (const holdId of holdIds.slice(0, 4)) {
        const order = await post('/api/orders', { hold_id: holdId })
        expect(order.status, order.text).toBe(201)
        orderIds.push(order.body.order_id)
      }
      for (const [index, orderId] of orderIds.slice(0, 3).entries()) {
        expect((await post('/api/payments/webhook', { order_id: orderId, status: 'success' }, { 'idempotency-key': `pay-${index}` })).body.outcome).toBe('paid')
      }
      expect((await post('/api/payments/webhook', { order_id: orderIds[3], status: 'failed' }, { 'idempotency-key': 'pay-failed' })).body.outcome).toBe('cancelled')
      // Two replays of a key, then the freed unit goes to someone else and a late success for
      // the cancelled order can only be refunded.
      for (let replay = 0; replay < 2; replay++)
        expect((await post('/api/payments/webhook', { order_id: orderIds[0], status: 'success' }, { 'idempotency-key': 'pay-0' })).status).toBe(200)
      expect((await post('/api/holds', { product_id: product, qty: 1 })).status).toBe(201)
      expect((await post('/api/payments/webhook', { order_id: orderIds[3], status: 'success' }, { 'idempotency-key': 'pay-late' })).body.outcome).toBe('refund_required')

      // The sale really was spread: more than one worker logged a hold.
      await pollUntil(
        async () => logEvents([workers.server], 'hold.created').length,
        (count) => count >= 6,
        { what: 'a hold.created line per hold' },
      )
      expect(new Set(logEvents([workers.server], 'hold.created').map((line) => line.pid)).size).toBeGreaterThan(1)

      // Holds were granted by more than one worker, so no worker's own counter reaches 6: a
      // scrape showing 6 summed the workers, whichever of them answered it.
      for (let scrape = 0; scrape < 6; scrape++) {
        const reply = await freshRequest(base, 'GET', '/metrics')
        expect(reply.status).toBe(200)
        const text = reply.text
        const counts = {
          processes: samples(text, 'flash_sale_metrics_processes').sum,
          holdsCreated: samples(text, 'flash_sale_events_total', { event: 'hold.created' }).sum,
          holdsCreatedForProduct: samples(text, 'flash_sale_product_holds_created_total', { product_id: String(product) }).sum,
          rejected: samples(text, 'flash_sale_holds_rejected_total', { reason: 'insufficient_stock' }).sum,
          ordersCreated: samples(text, 'flash_sale_events_total', { event: 'order.created' }).sum,
          paymentsApplied: samples(text, 'flash_sale_events_total', { event: 'payment.applied' }).sum,
          replays: samples(text, 'flash_sale_idempotent_replays_total', { scope: 'payments' }).sum,
          refunds: samples(text, 'flash_sale_refund_required_total').sum,
          refundsForProduct: samples(text, 'flash_sale_refund_required_total', { product_id: String(product) }).sum,
          holdLatencyCount: samples(text, 'flash_sale_http_request_duration_seconds_count', { method: 'POST', route: '/api/holds' }).sum,
          available: samples(text, 'flash_sale_product_available', { product_id: String(product) }),
          reserved: samples(text, 'flash_sale_product_reserved', { product_id: String(product) }),
          sold: samples(text, 'flash_sale_product_sold', { product_id: String(product) }),
          sweeperLag: samples(text, 'flash_sale_sweeper_lag_seconds'),
        }
        expect(counts, `scrape ${scrape}`).toEqual({
          processes: 3,
          holdsCreated: 6,
          holdsCreatedForProduct: 6,
          rejected: 3,
          ordersCreated: 4,
          paymentsApplied: 4,
          replays: 2,
          refunds: 1,
          refundsForProduct: 1,
          holdLatencyCount: 9,
          available: { sum: 0, count: 1 },
          reserved: { sum: 2, count: 1 },
          sold: { sum: 3, count: 1 },
          sweeperLag: { sum: 0, count: 1 },
        })
      }

      const dashboard = await freshRequest(base, 'GET', '/api/admin/dashboard', undefined, { authorization: `Bearer ${testAdminToken}` })
      expect(dashboard.status).toBe(200)
      expect(dashboard.body).toMatchObject({
        processes: 3,
        totals: { holds_created: 6, hold_refusals: { insufficient_stock: 3 }, refunds_required: 1, payments_applied: 4 },
        products: [{ id: product, stock: 5, available_stock: 0, reserved: 2, sold: 3, holds_created: 6, hold_refusals: { insufficient_stock: 3 }, refunds_required: 1 }],
      })
      expect(await workers.audit()).toMatchObject({ ok: true, violations: [] })
    })
  })
}
