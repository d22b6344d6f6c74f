// Proves I5 across repeated crashes: a server process is killed with SIGKILL in the middle of
// mixed traffic (holds, orders, payment webhooks, releases) and started again, KILL_CYCLES times
// (20 by default; e.g. KILL_CYCLES=120 for a long run). After every cycle each acknowledged write
// is found on the database in the state its answer promised, and the audit is clean.
import pino from 'pino'
import { describe, expect, it } from 'vitest'
import { loadConfig } from '../src/config.js'
import { audit } from '../src/domain/audit.js'
import { Catalog } from '../src/domain/products.js'
import { openRuntime } from '../src/runtime.js'
import { baseEnv, testWebhookSecret } from './helpers/app.js'
import { attempt, exitOf, runBurst, type Outcome } from './helpers/bursts.js'
import { freshDatabase, testEngines } from './helpers/engines.js'
import { signedWebhook } from './helpers/http.js'
import { faultStartTimeoutMs, spawnServer, type ServerProcess } from './helpers/servers.js'

const cycles = Number(process.env.KILL_CYCLES ?? 20)
// Per cycle: this many requests, at most this many in flight, the kill once half are answered.
const requestsPerCycle = 48
const concurrencyMax = 12

type Op = { kind: 'hold' } | { kind: 'order'; holdId: string } | { kind: 'webhook'; orderId: string; key: string; status: 'success' | 'failed' } | { kind: 'release'; holdId: string }

type Tracked = Outcome & { op: Op }

const expectedStatus = { hold: 201, order: 201, webhook: 200, release: 200 } as const

function send(server: ServerProcess, productId: number, op: Op): Promise<Outcome> {
  if (op.kind === 'hold') return attempt(server.baseUrl, 'POST', '/api/holds', { body: { product_id: productId, qty: 1 } })
  if (op.kind === 'order') return attempt(server.baseUrl, 'POST', '/api/orders', { body: { hold_id: op.holdId } })
  if (op.kind === 'release') return attempt(server.baseUrl, 'DELETE', `/api/holds/${op.holdId}`)
  const body = { order_id: op.orderId, status: op.status, payment_id: `pay-${op.key}` }
  return attempt(server.baseUrl, 'POST', '/api/payments/webhook', signedWebhook(testWebhookSecret, body, { key: op.key }))
}

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: SIGKILL cycles`, () => {
    it(`killed with SIGKILL mid-traffic and restarted ${cycles} times: every acknowledged hold, order, payment and release is stored, audit clean after each`, async () => {
      const fresh = await freshDatabase(engine.name)
      const runtime = openRuntime(loadConfig(baseEnv(fresh.url)), { logger: pino({ level: 'silent' }) })
      const { store } = runtime
      let server: ServerProcess | undefined
      try {
        await store.migrate()
        const { id: productId } = await new Catalog(store, runtime.clock).create({ name: 'kill cycles', priceMinor: 1_000, currency: 'USD', stock: 1_000_000 })
        // Acknowledged holds not yet used, and acknowledged pending orders: the next cycles'
        // orders, releases and webhooks draw on them. What a kill left unanswered is not reused.
        const activeHolds: string[] = []
        const pendingOrders: string[] = []
        const totals = { acknowledged: 0, cut: 0, starts: 0 }
        for (let cycle = 0; cycle < cycles; cycle++) {
          server = await spawnServer(fresh.url, { WEBHOOK_SECRET: testWebhookSecret }, { startTimeoutMs: faultStartTimeoutMs })
          totals.starts += 1
          const ops: Op[] = []
          for (let index = 0; ops.length < requestsPerCycle; index++) {
            const turn = index % 4
            if (turn === 1 && activeHolds.length > 0) ops.push({ kind: 'order', holdId: activeHolds.shift()! })
            else if (turn === 2 && pendingOrders.length > 0) {
              ops.push({ kind: 'webhook', orderId: pendingOrders.shift()!, key: `kc-${cycle}-${index}`, status: index % 8 === 2 ? 'failed' : 'success' })
            } else if (turn === 3 && activeHolds.length > 0) ops.push({ kind: 'release', holdId: activeHolds.shift()! })
            else ops.push({ kind: 'hold' })
          }
          let answered = 0
          let killed = false
          const victim = server
          const tasks = ops.map((op) => async (): Promise<Tracked> => {
            const reply = send(victim, productId, op)
            // The kill lands as a request is being sent, once half the cycle is answered.
            if (!killed && answered >= requestsPerCycle / 2) {
              killed = true
              victim.child.kill('SIGKILL')
            }
            return { ...(await reply), op }
          })
          const tracked = await runBurst(tasks, concurrencyMax, (_outcome, _index, answeredCount) => {
            answered = answeredCount
          })
          if (!killed) victim.child.kill('SIGKILL')
          expect(await exitOf(victim)).toEqual({ code: null, signal: 'SIGKILL' })
          server = undefined

          for (const outcome of tracked) {
            if (!outcome.answered) {
              totals.cut += 1
              continue
            }
            const { op, reply } = outcome
            expect({ op, status: reply.status, body: reply.body }).toMatchObject({ status: expectedStatus[op.kind] })
            totals.acknowledged += 1
            if (op.kind === 'hold') {
              expect(await store.getHold(reply.body.hold_id)).toMatchObject({ id: reply.body.hold_id, productId, qty: 1, status: 'active' })
              activeHolds.push(reply.body.hold_id)
            } else if (op.kind === 'order') {
              expect(await store.getOrder(reply.body.order_id)).toMatchObject({ id: reply.body.order_id, holdId: op.holdId, status: 'pending' })
              expect((await store.getHold(op.holdId))?.status).toBe('converted')
              pendingOrders.push(reply.body.order_id)
            } else if (op.kind === 'release') {
              expect((await store.getHold(op.holdId))?.status).toBe('released')
            } else {
              expect((await store.getOrder(op.orderId))?.status).toBe(op.status === 'success' ? 'paid' : 'cancelled')
              expect(await store.getPaymentEvent(op.key)).toMatchObject({ state: 'processed', orderId: op.orderId })
            }
          }
          expect(await audit(store), `audit after cycle ${cycle + 1}`).toMatchObject({ ok: true, violations: [] })
        }
        console.log(`[kill-cycles] ${engine.name}: ${cycles} cycles, ${totals.acknowledged} acknowledged writes checked, ${totals.cut} requests cut by a kill`)
        // Each kill landed mid-traffic at least sometimes (otherwise this test proves nothing).
        expect(totals.cut).toBeGreaterThan(0)
      } finally {
        if (server) {
          server.child.kill('SIGKILL')
          await server.exited
        }
        await store.close()
        await fresh.drop()
      }
    }, 600_000)
  })
}
