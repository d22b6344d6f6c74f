// Proves I5 (an acknowledged write survives a crash or a shutdown): a real server process is
// killed with SIGKILL while a mixed burst of holds, orders and payment webhooks is in flight, and
// every 201/200 it had sent is then found on the database, by a new process or by the one that
// kept serving, with the counts and the audit consistent; and a SIGTERM (one process, or WORKERS=2)
// drains: in-flight holds are answered and committed, then the process exits 0.
import { describe, expect, it } from 'vitest'
import { testWebhookSecret } from './helpers/app.js'
import { attempt, exitOf, outcomeCounts, runBurst, sum, type Outcome } from './helpers/bursts.js'
import { testEngines } from './helpers/engines.js'
import type { EngineName } from '../src/config.js'
import { countBy, request, signedWebhook, times } from './helpers/http.js'
import { pollUntil } from './helpers/lifecycle.js'
import { expectProblem } from './helpers/problem-checks.js'
import { logEvents, rowCount, startCluster, type Cluster, type ServerProcess } from './helpers/servers.js'

// The burst: a fixed number of requests, at most this many in flight, and the kill once this
// many have been answered, so the crash always lands mid-burst with requests in flight.
const burstSize = 300
const burstConcurrencyMax = 32
const killAfterAnswered = 150
// Holds made before the burst: this many become orders during it, as many others are made
// orders first and paid or failed by the burst's webhooks.
const preparedPairs = 50

interface HoldRef {
  holdId: string
  qty: number
}

interface OrderRef extends HoldRef {
  orderId: string
}

type Sent = { kind: 'hold'; qty: number } | { kind: 'order'; hold: HoldRef } | { kind: 'webhook'; key: string; order: OrderRef; status: 'success' | 'failed' }

type Tracked = Outcome & { sent: Sent; serverIndex: number; startedAtMs: number }

const expectedStatus = { hold: 201, order: 201, webhook: 200 } as const

function qtyOf(index: number): number {
  return (index % 3) + 1
}

async function postHold(server: ServerProcess, productId: number, qty: number): Promise<HoldRef> {
  const outcome = await attempt(server.baseUrl, 'POST', '/api/holds', { body: { product_id: productId, qty } })
  if (!outcome.answered || outcome.reply.status !== 201) throw new Error(`setup hold failed: ${JSON.stringify(outcome)}`)
  return { holdId: outcome.reply.body.hold_id, qty }
}

async function postOrder(server: ServerProcess, hold: HoldRef): Promise<OrderRef> {
  const outcome = await attempt(server.baseUrl, 'POST', '/api/orders', { body: { hold_id: hold.holdId } })
  if (!outcome.answered || outcome.reply.status !== 201) throw new Error(`setup order failed: ${JSON.stringify(outcome)}`)
  return { ...hold, orderId: outcome.reply.body.order_id }
}

function send(server: ServerProcess, productId: number, sent: Sent): Promise<Outcome> {
  if (sent.kind === 'hold') return attempt(server.baseUrl, 'POST', '/api/holds', { body: { product_id: productId, qty: sent.qty } })
  if (sent.kind === 'order') return attempt(server.baseUrl, 'POST', '/api/orders', { body: { hold_id: sent.hold.holdId } })
  const body = { order_id: sent.order.orderId, status: sent.status, payment_id: `pay-${sent.key}` }
  return attempt(server.baseUrl, 'POST', '/api/payments/webhook', signedWebhook(testWebhookSecret, body, { key: sent.key }))
}

// Prepares holds and orders, then fires the mixed burst over `targets` (round robin) and kills
// `victim` with SIGKILL once half the burst has been answered, as a request to it is being sent.
async function burstWithCrash(cluster: Cluster, targets: readonly ServerProcess[], victim: ServerProcess) {
  const { productId } = cluster
  const prepared = await Promise.all(times(2 * preparedPairs, (index) => postHold(targets[index % targets.length]!, productId, qtyOf(index))))
  const orderable = prepared.slice(0, preparedPairs)
  const payable = await Promise.all(prepared.slice(preparedPairs).map((hold, index) => postOrder(targets[index % targets.length]!, hold)))

  // Interleaved: each group of four is an order, a webhook and two holds; holds fill the rest.
  const sents: Sent[] = []
  for (let index = 0; index < preparedPairs; index++) {
    sents.push({ kind: 'order', hold: orderable[index]! })
    sents.push({ kind: 'webhook', key: `crash-${index}`, order: payable[index]!, status: index % 2 === 0 ? 'success' : 'failed' })
    sents.push({ kind: 'hold', qty: qtyOf(sents.length) }, { kind: 'hold', qty: qtyOf(sents.length + 1) })
  }
  while (sents.length < burstSize) sents.push({ kind: 'hold', qty: qtyOf(sents.length) })

  let killedAtMs: number | undefined
  let answeredSoFar = 0
  // The kill lands as a request to the victim is being sent, once half the burst is answered: a
  // batching server answers in bursts, and waiting for an answer to trigger it could find
  // nothing of the victim's still in flight.
  const tasks = sents.map((sent, index) => async (): Promise<Tracked> => {
    const serverIndex = index % targets.length
    const startedAtMs = Date.now()
    const reply = send(targets[serverIndex]!, productId, sent)
    if (killedAtMs === undefined && targets[serverIndex] === victim && answeredSoFar >= killAfterAnswered) {
      // At once: given even one turn of the event loop, a fast server can answer it first.
      killedAtMs = Date.now()
      victim.child.kill('SIGKILL')
    }
    return { ...(await reply), sent, serverIndex, startedAtMs }
  })
  const tracked = await runBurst(tasks, burstConcurrencyMax, (_outcome, _index, answeredCount) => {
    answeredSoFar = answeredCount
  })
  expect(killedAtMs, 'the victim was killed mid-burst').toBeDefined()
  const answeredByKind = countBy(
    tracked.filter((outcome) => outcome.answered),
    (outcome) => outcome.sent.kind,
  )
  console.log(
    `[durability] ${cluster.engine} ${targets.length} process(es): ${tracked.length} requests, answered ${JSON.stringify(answeredByKind)}, unanswered ${tracked.filter((outcome) => !outcome.answered).length}`,
  )
  expect(await exitOf(victim)).toEqual({ code: null, signal: 'SIGKILL' })
  // The kill cut requests that had already been sent: the crash really landed mid-burst.
  const cut = tracked.filter((outcome) => !outcome.answered && outcome.startedAtMs <= killedAtMs!)
  expect(cut.length).toBeGreaterThan(0)
  // Nothing answered was anything but success: every request of the burst can succeed.
  for (const outcome of tracked) {
    if (outcome.answered) expect({ kind: outcome.sent.kind, status: outcome.reply.status, body: outcome.reply.body }).toMatchObject({ status: expectedStatus[outcome.sent.kind] })
  }
  return { tracked, orderable, payable, killedAtMs: killedAtMs! }
}

// Checks, through `survivor` and a store of the test's own, that nothing acknowledged was lost,
// that what was not acknowledged happened entirely or not at all, and that the counts add up.
async function expectNothingAcknowledgedLost(cluster: Cluster, survivor: ServerProcess, burst: Awaited<ReturnType<typeof burstWithCrash>>) {
  const { store } = cluster.runtime
  const { tracked, orderable, payable } = burst
  const acked = tracked.filter((outcome): outcome is Tracked & { answered: true } => outcome.answered)
  const unacked = tracked.filter((outcome) => !outcome.answered)
  expect(acked.length).toBeGreaterThanOrEqual(killAfterAnswered)

  const checks = acked.map((outcome) => async (): Promise<Outcome> => {
    const { sent, reply } = outcome
    if (sent.kind === 'hold') {
      const found = await attempt(survivor.baseUrl, 'GET', `/api/holds/${reply.body.hold_id}`)
      expect(found).toMatchObject({ answered: true, reply: { status: 200, body: { hold_id: reply.body.hold_id, product_id: cluster.productId, qty: sent.qty, status: 'active' } } })
      return found
    }
    if (sent.kind === 'order') {
      const found = await attempt(survivor.baseUrl, 'GET', `/api/orders/${reply.body.order_id}`)
      expect(found).toMatchObject({ answered: true, reply: { status: 200, body: { hold_id: sent.hold.holdId, qty: sent.hold.qty, status: 'pending' } } })
      expect((await store.getHold(sent.hold.holdId))?.status).toBe('converted')
      return found
    }
    const order = await attempt(survivor.baseUrl, 'GET', `/api/orders/${sent.order.orderId}`)
    expect(order).toMatchObject({ answered: true, reply: { status: 200, body: { status: sent.status === 'success' ? 'paid' : 'cancelled' } } })
    expect(await store.getPaymentEvent(sent.key)).toMatchObject({ state: 'processed', orderId: sent.order.orderId })
    // The provider's retry of an acknowledged webhook is the same answer again, no new effect.
    const replay = await send(survivor, cluster.productId, sent)
    expect(replay).toMatchObject({ answered: true, reply: { status: 200, body: reply.body } })
    if (replay.answered) expect(replay.reply.headers.get('idempotent-replayed')).toBe('true')
    return replay
  })
  await runBurst(checks, 16)

  // What was cut off happened entirely or not at all (the write and its record commit together).
  for (const outcome of unacked) {
    const { sent } = outcome
    if (sent.kind === 'order') expect(['active', 'converted']).toContain((await store.getHold(sent.hold.holdId))?.status)
    if (sent.kind === 'webhook') {
      const [order, event] = await Promise.all([store.getOrder(sent.order.orderId), store.getPaymentEvent(sent.key)])
      if (event) expect({ event: event.state, order: order?.status }).toEqual({ event: 'processed', order: sent.status === 'success' ? 'paid' : 'cancelled' })
      else expect(order?.status).toBe('pending')
    }
  }

  // sold is exactly the paid orders (only the prepared ones can be paid); reserved holds every
  // acknowledged hold and order, plus at most the holds whose answer the crash swallowed.
  const payableOrders = await Promise.all(payable.map((order) => store.getOrder(order.orderId)))
  const paidQty = sum(payableOrders.map((order) => (order?.status === 'paid' ? order.qty : 0)))
  const pendingQty = sum(payableOrders.map((order) => (order?.status === 'pending' ? order.qty : 0)))
  const ackedHoldQty = sum(acked.map((outcome) => (outcome.sent.kind === 'hold' ? outcome.sent.qty : 0)))
  const unackedHoldQty = sum(unacked.map((outcome) => (outcome.sent.kind === 'hold' ? outcome.sent.qty : 0)))
  const knownReservedQty = ackedHoldQty + sum(orderable.map((hold) => hold.qty)) + pendingQty
  const product = await attempt(survivor.baseUrl, 'GET', `/api/products/${cluster.productId}`)
  expect(product.answered).toBe(true)
  if (!product.answered) return
  const { stock, reserved, sold, available_stock: availableStock } = product.reply.body
  expect(sold).toBe(paidQty)
  expect(reserved).toBeGreaterThanOrEqual(knownReservedQty)
  expect(reserved).toBeLessThanOrEqual(knownReservedQty + unackedHoldQty)
  expect(availableStock).toBe(stock - reserved - sold)
  expect(await cluster.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })

  // The survivor still sells: a new hold takes units from what the crash left.
  const after = await attempt(survivor.baseUrl, 'POST', '/api/holds', { body: { product_id: cluster.productId, qty: 1 } })
  expect(after).toMatchObject({ answered: true, reply: { status: 201 } })
  expect(await cluster.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
}

// How long a drain of this small burst may take, and a request wait during it. The service's own
// limit is 10 s before it forces an exit (code 1); a drain that needs half of that is stuck.
const drainTimeoutMs = 5_000

interface Drain {
  outcomes: Outcome[]
  // Successes that reached the client after SIGTERM had been sent (counted in arrival order).
  acknowledgedAfterSignal: number
}

// Fires `count` concurrent holds at `server` and sends SIGTERM as soon as the first is answered,
// so the rest are in flight, queued in a hold batch, or not yet accepted when the drain starts.
// A server with WORKERS=2 on a fresh database, once both workers listen.
async function twoWorkers(engine: EngineName): Promise<{ cluster: Cluster; server: ServerProcess }> {
  const cluster = await startCluster(engine, { processes: 0, stock: 1_000 })
  const server = await cluster.start({ WORKERS: '2' })
  await pollUntil(
    () => logEvents([server], 'server.listening').length,
    (count) => count >= 2,
    { what: 'both workers listening' },
  )
  return { cluster, server }
}

// `signal` stops the server once the burst is under way: SIGTERM to the server's process unless given.
async function burstThenSigterm(cluster: Cluster, server: ServerProcess, count: number, signal: () => void = () => server.child.kill('SIGTERM')): Promise<Drain> {
  let signalled = false
  let acknowledgedAfterSignal = 0
  const tasks = times(count, () => () => attempt(server.baseUrl, 'POST', '/api/holds', { body: { product_id: cluster.productId, qty: 1 } }, drainTimeoutMs))
  const outcomes = await runBurst(tasks, count, (outcome) => {
    if (signalled) {
      if (outcome.answered && outcome.reply.status === 201) acknowledgedAfterSignal += 1
      return
    }
    signalled = true
    signal()
  })
  return { outcomes, acknowledgedAfterSignal }
}

// After a drain: every answer was a success or a refusal that changed nothing, holds were still
// answered after the signal, and the rows hold exactly the acknowledged holds (nothing committed
// was left unanswered, nothing answered was lost).
async function expectDrained(cluster: Cluster, drain: Drain, holdsBefore: number): Promise<void> {
  const { outcomes, acknowledgedAfterSignal } = drain
  const answered = outcomes.filter((outcome): outcome is Outcome & { answered: true } => outcome.answered)
  const errors = countBy(
    outcomes.filter((outcome) => !outcome.answered),
    (outcome) => (outcome.answered ? '' : outcome.error),
  )
  console.log(`[drain] ${cluster.engine} ${JSON.stringify(outcomeCounts(outcomes))} ${JSON.stringify(errors)}, acknowledged after SIGTERM: ${acknowledgedAfterSignal}`)
  // Nobody is left waiting: each request is answered or refused within the drain's time.
  expect(errors.timeout ?? 0).toBe(0)
  for (const outcome of answered) expect([201, 503]).toContain(outcome.reply.status)
  // A request that reaches a draining server may be turned away, but as SPEC's errors are:
  // problem details with a code, and a Retry-After saying when to come back (elsewhere).
  for (const outcome of answered.filter((outcome) => outcome.reply.status === 503)) {
    expectProblem(outcome.reply, 503, 'busy')
    expect(outcome.reply.headers.get('retry-after')).toMatch(/^\d+$/)
  }
  const acknowledged = answered.filter((outcome) => outcome.reply.status === 201)
  expect(acknowledgedAfterSignal).toBeGreaterThan(0)
  expect(await rowCount(cluster, 'holds', cluster.productId)).toBe(holdsBefore + acknowledged.length)
  for (const outcome of acknowledged) expect(await cluster.runtime.store.getHold(outcome.reply.body.hold_id)).toMatchObject({ status: 'active', qty: 1 })
  expect(await cluster.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
}

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: durability across a crash or a drain`, () => {
    it('a process killed with SIGKILL mid-burst and started again on the same database has lost no acknowledged hold, order or payment', async () => {
      const cluster = await startCluster(engine.name, { processes: 1, stock: 1_000, env: { WEBHOOK_SECRET: testWebhookSecret } })
      const victim = cluster.servers[0]!
      const burst = await burstWithCrash(cluster, [victim], victim)
      const restarted = await cluster.start()
      await expectNothingAcknowledgedLost(cluster, restarted, burst)
    })

    it('with 2 processes, one killed with SIGKILL mid-burst: the other keeps serving and every acknowledged write survives', async () => {
      const cluster = await startCluster(engine.name, { processes: 2, stock: 1_000, env: { WEBHOOK_SECRET: testWebhookSecret } })
      const [victim, survivor] = [cluster.servers[0]!, cluster.servers[1]!]
      const burst = await burstWithCrash(cluster, [victim, survivor], victim)
      // The survivor answered every request it was sent, also those after the crash.
      const toSurvivor = burst.tracked.filter((outcome) => outcome.serverIndex === 1)
      expect(toSurvivor.filter((outcome) => !outcome.answered)).toEqual([])
      expect(toSurvivor.length).toBe(burstSize / 2)
      expect(toSurvivor.filter((outcome) => outcome.startedAtMs > burst.killedAtMs).length).toBeGreaterThan(0)
      await expectNothingAcknowledgedLost(cluster, survivor, burst)
    })

    it('WORKERS=2 runs two worker processes on one port and both serve holds; SIGTERM drains them: in-flight holds answered and committed, exit 0', async () => {
      const { cluster, server } = await twoWorkers(engine.name)
      const listening = logEvents([server], 'server.listening')
      expect(logEvents([server], 'server.started')).toEqual([expect.objectContaining({ workers: 2, pid: server.child.pid })])
      expect(listening).toHaveLength(2)
      expect(listening.map((line) => line.port)).toEqual([Number(new URL(server.baseUrl).port), Number(new URL(server.baseUrl).port)])
      const workerPids = new Set(listening.map((line) => line.pid))
      expect(workerPids.size).toBe(2)
      expect(workerPids.has(server.child.pid)).toBe(false)

      const warmup = await Promise.all(times(100, () => request(server.baseUrl, 'POST', '/api/holds', { body: { product_id: cluster.productId, qty: 1 } })))
      expect(countBy(warmup, (reply) => reply.status)).toEqual({ 201: 100 })
      await pollUntil(
        () => logEvents([server], 'hold.created').length,
        (count) => count >= 100,
        { what: 'a hold.created line per hold' },
      )
      // Both workers took a share of the connections on the one port.
      expect(new Set(logEvents([server], 'hold.created').map((line) => line.pid))).toEqual(workerPids)

      const drain = await burstThenSigterm(cluster, server, 150)
      const exit = await exitOf(server, drainTimeoutMs).catch((error: Error) => error.message)
      await expectDrained(cluster, drain, 100)
      // Last, so the checks above report even when the drain does not finish in time.
      expect(new Set(logEvents([server], 'server.closed').map((line) => line.pid))).toEqual(workerPids)
      expect(exit).toEqual({ code: 0, signal: null })
    })

    // Ctrl-C in a terminal, and systemd's default stop, signal every process of the group at
    // once. A worker took the primary's SIGTERM, after its own SIGINT, for a second signal and
    // exited mid-drain (1 each, in-flight holds unanswered) while the primary exited 0.
    it('WORKERS=2 stopped by SIGINT to every process at once (Ctrl-C) drains as one signal to the primary does: in-flight holds answered and committed, exit 0', async () => {
      const { cluster, server } = await twoWorkers(engine.name)
      const workerPids = logEvents([server], 'server.listening').map((line) => line.pid!)
      const drain = await burstThenSigterm(cluster, server, 150, () => {
        for (const pid of [server.child.pid!, ...workerPids]) process.kill(pid, 'SIGINT')
      })
      const exit = await exitOf(server, drainTimeoutMs).catch((error: Error) => error.message)
      await expectDrained(cluster, drain, 0)
      expect(logEvents([server], 'server.forced_exit')).toEqual([])
      expect(new Set(logEvents([server], 'server.closed').map((line) => line.pid))).toEqual(new Set(workerPids))
      expect(exit).toEqual({ code: 0, signal: null })
    })

    it('a single process on SIGTERM answers and commits its in-flight holds, then exits 0', async () => {
      const cluster = await startCluster(engine.name, { processes: 1, stock: 1_000 })
      const server = cluster.servers[0]!
      const drain = await burstThenSigterm(cluster, server, 150)
      const exit = await exitOf(server, drainTimeoutMs).catch((error: Error) => error.message)
      await expectDrained(cluster, drain, 0)
      // Last, so the checks above report even when the drain does not finish in time.
      expect(logEvents([server], 'server.closed')).toHaveLength(1)
      expect(exit).toEqual({ code: 0, signal: null })
    })
  })
}
