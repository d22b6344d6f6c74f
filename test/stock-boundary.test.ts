// Proves the stock boundary under real concurrency (I6): many simultaneous HTTP hold requests, in
// process and across {1, many} server processes sharing one database, sell exactly the stock and
// never one unit more, also when PostgreSQL lock timeouts force retries; the audit is clean after
// every burst.
import { describe, expect, it } from 'vitest'
import { buildTestApp } from './helpers/app.js'
import { sum } from './helpers/bursts.js'
import { stockOf } from './helpers/checkout.js'
import { testEngines } from './helpers/engines.js'
import { countBy, request, times } from './helpers/http.js'
import { metricValue } from './helpers/lifecycle.js'
import { expectProblem } from './helpers/problem-checks.js'
import { logEvents, processCounts, rowCount, serverFor, startCluster } from './helpers/servers.js'

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: stock boundary`, () => {
    it('sells the last unit to exactly one of 50 concurrent buyers', async () => {
      const t = await buildTestApp(engine.name, { stock: 1 })
      const replies = await Promise.all(times(50, () => t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 1 } })))
      expect(countBy(replies, (reply) => reply.status)).toEqual({ 201: 1, 409: 49 })
      for (const reply of replies.filter((reply) => reply.status === 409)) {
        expect(reply.body).toMatchObject({ code: 'insufficient_stock', available_stock: 0 })
        expect(reply.headers.get('content-type')).toContain('application/problem+json')
      }
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    for (const processes of processCounts(engine.name)) {
      it(`200 concurrent holds for 40 units over ${processes} process(es): exactly 40 granted, each its own units, 160 refused insufficient_stock (batched path)`, async () => {
        const cluster = await startCluster(engine.name, { processes, stock: 40 })
        const { servers } = cluster
        const startedAtMs = Date.now()
        const replies = await Promise.all(times(200, (index) => request(serverFor(servers, index).baseUrl, 'POST', '/api/holds', { body: { product_id: cluster.productId, qty: 1 } })))
        const wallMs = Date.now() - startedAtMs
        const counts = countBy(replies, (reply) => reply.status)
        console.log(`[boundary] ${engine.name} ${processes} process(es): 200 requests ${JSON.stringify(counts)} tx.retry=${logEvents(servers, 'tx.retry').length} in ${wallMs} ms`)
        expect(counts).toEqual({ 201: 40, 409: 160 })
        for (const reply of replies.filter((reply) => reply.status === 409)) expectProblem(reply, 409, 'insufficient_stock')
        const holdIds = replies.filter((reply) => reply.status === 201).map((reply) => reply.body.hold_id as string)
        expect(new Set(holdIds).size).toBe(40)
        expect(await rowCount(cluster, 'holds', cluster.productId)).toBe(40)
        // Every request went through the batch path; the burst was served in fewer transactions
        // than requests, except by one SQLite process: it runs each transaction within one turn
        // of its event loop, and once its statements were prepared once a transaction could end
        // before the next request was read, so each formed its own batch (seen once in CI).
        // batched-keys.test.ts proves batching there by counting statements per batch.
        const metrics = await Promise.all(servers.map(async (server) => (await request(server.baseUrl, 'GET', '/metrics')).text))
        expect(sum(metrics.map((text) => metricValue(text, 'flash_sale_hold_batch_size_sum')))).toBe(200)
        const batchCount = sum(metrics.map((text) => metricValue(text, 'flash_sale_hold_batch_size_count')))
        if (engine.name !== 'sqlite' || processes > 1) expect(batchCount).toBeLessThan(200)
        expect(await stockOf(servers[0]!.baseUrl, cluster.productId)).toEqual({ stock: 40, available_stock: 0, reserved: 40, sold: 0 })
        expect(await cluster.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
      })
    }

    const processes = processCounts(engine.name)[1]!
    // Hold batches store their keys before locking the product and delete those of refused
    // requests (keyed-batches.ts): copies of one key racing in several processes must still end
    // as one answer, with no deadlock and no 5xx but a 503 the client retries.
    it(`40 keys for 30 units, each key sent by every one of ${processes} processes at once: each key one hold or one refusal, exactly 30 holds`, async () => {
      const cluster = await startCluster(engine.name, { processes, stock: 30 })
      const keys = times(40, (index) => `shared-key-${index}`)
      const send = async (key: string, server: number) => {
        for (let attempt = 1; ; attempt++) {
          const reply = await request(cluster.servers[server]!.baseUrl, 'POST', '/api/holds', { body: { product_id: cluster.productId, qty: 1 }, headers: { 'idempotency-key': key } })
          if (reply.status !== 503 || attempt === 5) return reply
        }
      }
      // Every process gets every key, each in its own order, so batches overlap in many ways.
      const sends = keys.flatMap((key, index) => times(processes, (server) => ({ key, server, order: (index * (server + 1) * 7919) % 997 })))
      sends.sort((a, b) => a.order - b.order)
      const replies = await Promise.all(sends.map(({ key, server }) => send(key, server).then((reply) => ({ key, reply }))))
      const statuses = countBy(replies, ({ reply }) => reply.status)
      console.log(
        `[shared keys] ${engine.name} ${processes} processes: ${replies.length} requests ${JSON.stringify(statuses)} tx.retry=${logEvents(cluster.servers, 'tx.retry').length} tx.busy=${logEvents(cluster.servers, 'tx.busy').length}`,
      )
      for (const { reply } of replies) if (reply.status !== 201) expectProblem(reply, 409, 'insufficient_stock')
      let granted = 0
      for (const key of keys) {
        const answers = replies.filter((each) => each.key === key).map((each) => each.reply)
        expect(new Set(answers.map((reply) => reply.status)).size, key).toBe(1)
        if (answers[0]!.status !== 201) continue
        granted++
        expect(new Set(answers.map((reply) => reply.body.hold_id)).size, key).toBe(1)
        expect(
          answers.filter((reply) => reply.headers.get('idempotent-replayed') !== 'true'),
          key,
        ).toHaveLength(1)
      }
      expect(granted).toBe(30)
      expect(await rowCount(cluster, 'holds', cluster.productId)).toBe(30)
      expect(await stockOf(cluster.servers[0]!.baseUrl, cluster.productId)).toEqual({ stock: 30, available_stock: 0, reserved: 30, sold: 0 })
      expect(await cluster.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    // Keys reused after their TTL: every batch that meets one's expired row reads its keys and
    // frees that row in a transaction of its own before the batch's (keyed-batches.ts), racing
    // the same keys in the other processes, one of which reads first from the start. Each key
    // must still end as one new hold, replayed by the other processes, with no deadlock. (This
    // did not provoke the deadlock the separate transaction removes in runs of the older code:
    // that takes two batches meeting in one precise order; batched-keys.test.ts checks the
    // statement order instead.)
    it(`keys reused after their TTL, sent with new keys to every one of ${processes} processes, one of them reading first: one new hold per key, replayed by the others`, async () => {
      // About 1.8 s: long enough for the first holds to be stored, short enough to wait out;
      // the sweeper would delete the expired keys before they are reused, so it stays idle.
      const idempotencyTtlMs = 1_800
      const cluster = await startCluster(engine.name, { processes, stock: 10_000, env: { IDEMPOTENCY_TTL_HOURS: String(idempotencyTtlMs / 3_600_000), SWEEP_INTERVAL_MS: '3600000' } })
      const hold = (server: number, key: string) =>
        request(cluster.servers[server]!.baseUrl, 'POST', '/api/holds', { body: { product_id: cluster.productId, qty: 1 }, headers: { 'idempotency-key': key } })
      // Reused and new keys alternate in sorted order, so every batch holds both kinds.
      const reused = times(30, (index) => `key-${String(index).padStart(3, '0')}-a`)
      const fresh = times(30, (index) => `key-${String(index).padStart(3, '0')}-b`)
      for (const reply of await Promise.all(reused.map((key, index) => hold(index % processes, key)))) expect(reply.status).toBe(201)
      await new Promise((resolve) => setTimeout(resolve, idempotencyTtlMs + 200))
      // A live key sent to the first process a second time: its next batches read first.
      expect((await hold(0, 'live-key')).status).toBe(201)
      expect((await hold(0, 'live-key')).headers.get('idempotent-replayed')).toBe('true')
      const sends = [...reused, ...fresh].flatMap((key, index) => times(processes, (server) => ({ key, server, order: (index * (server + 1) * 7919) % 997 })))
      sends.sort((a, b) => a.order - b.order)
      const replies = await Promise.all(sends.map(({ key, server }) => hold(server, key).then((reply) => ({ key, reply }))))
      const retries = logEvents(cluster.servers, 'tx.retry')
      console.log(
        `[reused keys] ${engine.name} ${processes} processes: ${replies.length} requests ${JSON.stringify(countBy(replies, ({ reply }) => reply.status))} tx.retry=${retries.length} tx.busy=${JSON.stringify(logEvents(cluster.servers, 'tx.busy'))}`,
      )
      // On MySQL/MariaDB two inserts of a key that meet its deleted, not yet purged row (just
      // freed) can deadlock: each takes InnoDB's shared lock on it, then both want the exclusive
      // one. Detected at once and retried, and not about lock order, so only PostgreSQL is held
      // to none. SQLite has one writer at a time.
      if (engine.name === 'postgres') expect(retries.filter((line) => /deadlock/i.test(JSON.stringify(line)))).toEqual([])
      for (const key of [...reused, ...fresh]) {
        const answers = replies.filter((each) => each.key === key).map((each) => each.reply)
        expect(
          answers.map((reply) => reply.status),
          key,
        ).toEqual(times(processes, () => 201))
        expect(new Set(answers.map((reply) => reply.body.hold_id)).size, key).toBe(1)
      }
      expect(await rowCount(cluster, 'holds', cluster.productId)).toBe(reused.length * 2 + fresh.length + 1)
      expect(await cluster.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it(`mixed quantities over ${processes} processes: never oversold, refusals only when short`, async () => {
      const cluster = await startCluster(engine.name, { processes, stock: 50, env: { MAX_QTY_PER_HOLD: '5' } })
      const quantities = times(200, (index) => (index % 5) + 1)
      const replies = await Promise.all(
        quantities.map((qty, index) => request(cluster.servers[index % processes]!.baseUrl, 'POST', '/api/holds', { body: { product_id: cluster.productId, qty } })),
      )
      expect(replies.every((reply) => reply.status === 201 || reply.status === 409)).toBe(true)
      const grantedQty = replies.reduce((sum, reply, index) => sum + (reply.status === 201 ? quantities[index]! : 0), 0)
      expect(grantedQty).toBeLessThanOrEqual(50)
      // Each refusal reported what was left then; a refusal means the request did not fit.
      for (const [index, reply] of replies.entries()) {
        if (reply.status === 409) expect(reply.body.available_stock).toBeLessThan(quantities[index]!)
      }
      // With quantities 1..5 and 200 requests, the sale ends only when fewer than 1 unit is left
      // for the 1-unit requests that come last in some process: everything sellable sold.
      const product = await request(cluster.servers[0]!.baseUrl, 'GET', `/api/products/${cluster.productId}`)
      expect(product.body.available_stock).toBe(50 - grantedQty)
      expect(product.body.reserved).toBe(grantedQty)
      expect(await cluster.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it.skipIf(engine.name !== 'postgres')(
      '3 processes hammering one product under lock_timeout=5ms: lock timeouts are retried, never a 500, holds and orders still succeed and every answer matches the rows',
      async () => {
        const cluster = await startCluster(engine.name, { processes: 0, stock: 60 })
        // The schema moves from ?schema= into options, where lock_timeout can join it.
        const url = new URL(cluster.databaseUrl)
        const schema = url.searchParams.get('schema')!
        url.searchParams.delete('schema')
        url.searchParams.set('options', `-c search_path=${schema} -c lock_timeout=5ms`)
        // One at a time: the migrator's lock is a row lock too, and would time out between starters.
        for (let index = 0; index < 3; index++) await cluster.start({ DATABASE_URL: url.toString() })
        const { servers, productId } = cluster
        const startedAtMs = Date.now()
        const holds = await Promise.all(times(150, (index) => request(serverFor(servers, index).baseUrl, 'POST', '/api/holds', { body: { product_id: productId, qty: 1 } })))
        const granted = holds.filter((reply) => reply.status === 201)
        // Orders are served one transaction each: the burst queues on the product row lock.
        const orders = await Promise.all(granted.map((hold, index) => request(serverFor(servers, index).baseUrl, 'POST', '/api/orders', { body: { hold_id: hold.body.hold_id } })))
        const wallMs = Date.now() - startedAtMs
        const retries = logEvents(servers, 'tx.retry')
        const holdCounts = countBy(holds, (reply) => reply.status)
        const orderCounts = countBy(orders, (reply) => reply.status)
        console.log(
          `[retries] postgres 3 processes lock_timeout=5ms: holds ${JSON.stringify(holdCounts)}, orders ${JSON.stringify(orderCounts)}, tx.retry=${retries.length} tx.busy=${logEvents(servers, 'tx.busy').length} wall_ms=${wallMs}`,
        )
        expect(retries.length).toBeGreaterThan(0)
        // A start-up migration retried because another test's schema was dropped while the
        // migrator read the catalogue (kysely-store.ts) is not what this test is about.
        const reasons = [...new Set(retries.filter((line) => line.label !== 'migrate').map((line) => String(line.reason)))]
        console.log(`[retries] reasons: ${reasons.join(' | ')}`)
        // Lock timeouts above all; under load a deadlock or serialization failure between the
        // sweeper and a batch may be among them, retried the same way.
        expect(reasons.some((reason) => reason.startsWith('55P03'))).toBe(true)
        expect(reasons.filter((reason) => !/^(55P03|40P01|40001)\b/.test(reason))).toEqual([])
        // Only success, a refusal for stock, or busy; every request answered once.
        expect(Object.keys(holdCounts).every((status) => ['201', '409', '503'].includes(status))).toBe(true)
        expect(Object.keys(orderCounts).every((status) => ['201', '503'].includes(status))).toBe(true)
        expect((holdCounts[201] ?? 0) + (holdCounts[409] ?? 0) + (holdCounts[503] ?? 0)).toBe(150)
        for (const reply of [...holds, ...orders].filter((reply) => reply.status === 503)) {
          expectProblem(reply, 503, 'busy')
          expect(Number(reply.headers.get('retry-after'))).toBeGreaterThan(0)
        }
        // Retries make the work go through: holds and orders succeed, not only 503s.
        const ordered = orderCounts[201] ?? 0
        expect(granted.length).toBeGreaterThan(0)
        expect(ordered).toBeGreaterThan(0)
        // A refusal for stock only when the stock was gone.
        expect(granted.length).toBeLessThanOrEqual(60)
        if (holdCounts[409]) expect(granted.length).toBe(60)
        for (const reply of holds.filter((reply) => reply.status === 409)) expectProblem(reply, 409, 'insufficient_stock')
        // Every answer matches the rows: a hold per 201, an order per 201, each ordered hold converted.
        expect(await rowCount(cluster, 'holds', productId)).toBe(granted.length)
        expect(await rowCount(cluster, 'orders', productId)).toBe(ordered)
        const holdStatuses = countBy(await Promise.all(granted.map((hold) => cluster.runtime.store.getHold(hold.body.hold_id))), (hold) => hold?.status ?? 'missing')
        expect(holdStatuses).toEqual({ ...(ordered > 0 ? { converted: ordered } : {}), ...(granted.length > ordered ? { active: granted.length - ordered } : {}) })
        expect(await stockOf(servers[0]!.baseUrl, productId)).toEqual({ stock: 60, available_stock: 60 - granted.length, reserved: granted.length, sold: 0 })
        expect(await cluster.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
      },
    )
  })
}
