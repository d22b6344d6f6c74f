// Proves SPEC §4 at scale on every engine: with 100,000 lapsed holds waiting to be swept, a
// product read costs what it costs on a product with 100 times fewer lapsed over the same
// seconds (timed side by side, median of many): the backlog's size does not matter. The
// availability it reports counts those units as free, and the sweeper catches up in bounded time,
// serving a small product in its first pass despite the big backlog. The expiry buckets never
// drift from the rows (the audit checks them).
import { describe, expect, it } from 'vitest'
import { newHoldIds } from '../src/domain/ids.js'
import type { Hold } from '../src/domain/store.js'
import { sweepOnce, sweepUntilCaughtUp } from '../src/jobs/sweeper.js'
import { buildTestApp, type TestApp } from './helpers/app.js'
import { rawQuery, testEngines } from './helpers/engines.js'

const backlogHoldCount = 100_000
// As a sale at ~10,000 holds/s leaves them: expiries spread over 10 s.
const backlogSpreadMs = 10_000
const insertChunkRows = 2_000
const readPairs = 600
const sameSpreadHoldCount = 1_000

// Inserts lapsed-to-be holds straight through the store, as the hold path writes them (their
// units reserved on the product), many per transaction.
async function insertHolds(t: TestApp, productId: number, count: number, firstExpiresAtMs: number, spreadMs: number): Promise<void> {
  const now = t.clock.now()
  for (let start = 0; start < count; start += insertChunkRows) {
    const rows = Math.min(insertChunkRows, count - start)
    const ids = newHoldIds(rows, now)
    const holds: Hold[] = ids.map((id, index) => ({
      id,
      productId,
      qty: 1,
      status: 'active',
      expiresAt: new Date(firstExpiresAtMs + Math.floor(((start + index) * spreadMs) / count)),
      createdAt: now,
      buyerId: null,
    }))
    await t.runtime.store.transaction({ label: 'test.backlog' }, async (tx) => {
      await tx.lockProduct(productId)
      await tx.insertHolds(holds)
      await tx.applyProductDelta(productId, { reserved: rows, sold: 0, stock: 0 })
    })
  }
}

function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)]!
}

// One read of each product in turn, `readPairs` times: each pair is timed back to back, so
// whatever else the machine does (other test files run beside this one) falls on both alike.
// Returns the median µs of each, and the median of the per-pair ratios (first / second).
async function readCosts(t: TestApp, [firstId, secondId]: readonly [number, number]): Promise<{ firstUs: number; secondUs: number; ratio: number }> {
  const timeUs = async (productId: number): Promise<number> => {
    const startedNs = process.hrtime.bigint()
    await t.runtime.store.productSnapshot(productId, t.clock.now())
    return Number(process.hrtime.bigint() - startedNs) / 1_000
  }
  const firstUs: number[] = []
  const secondUs: number[] = []
  const ratios: number[] = []
  for (let pair = 0; pair < readPairs; pair++) {
    // Alternating which goes first, so neither always reads a warmer cache.
    const [a, b] = pair % 2 === 0 ? [await timeUs(firstId), await timeUs(secondId)] : [await timeUs(secondId), await timeUs(firstId)].reverse()
    firstUs.push(a!)
    secondUs.push(b!)
    ratios.push(a! / b!)
  }
  return { firstUs: median(firstUs), secondUs: median(secondUs), ratio: median(ratios) }
}

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: expiry at scale`, () => {
    it('with 100,000 lapsed holds unswept a read costs what a hundredth of them over the same seconds costs, and the sweeper catches up fairly', { timeout: 300_000 }, async () => {
      const t = await buildTestApp(engine.name, { stock: backlogHoldCount })
      const backlogProductId = t.productId
      const cleanProductId = await t.createProduct(backlogHoldCount)
      const smallProductId = await t.createProduct(100)
      const sameSpreadProductId = await t.createProduct(sameSpreadHoldCount)
      const firstExpiresAtMs = t.clock.now().getTime() + 1_000
      await insertHolds(t, backlogProductId, backlogHoldCount, firstExpiresAtMs, backlogSpreadMs)
      // As many expiry buckets as the backlog, a hundredth of its rows.
      await insertHolds(t, sameSpreadProductId, sameSpreadHoldCount, firstExpiresAtMs, backlogSpreadMs)
      await insertHolds(t, smallProductId, 10, firstExpiresAtMs, 1_000)
      // The clean product has as many live holds, none lapsed: only lapsed rows may not cost.
      await insertHolds(t, cleanProductId, 1_000, firstExpiresAtMs + 3_600_000, 1_000)

      // Halfway through the expiries, at an instant inside a bucket: exactly the holds whose
      // expires_at has come count as available, the rest not yet.
      t.clock.advanceMs(1_000 + backlogSpreadMs / 2 + 27)
      const nowMs = t.clock.now().getTime()
      let lapsedCount = 0
      for (let index = 0; index < backlogHoldCount; index++) if (firstExpiresAtMs + Math.floor((index * backlogSpreadMs) / backlogHoldCount) <= nowMs) lapsedCount += 1
      expect(lapsedCount).toBeGreaterThan(backlogHoldCount / 2)
      expect((await t.request('GET', `/api/products/${backlogProductId}`)).body).toMatchObject({ available_stock: lapsedCount, reserved: backlogHoldCount })

      t.clock.advanceMs(backlogSpreadMs)
      expect((await t.request('GET', `/api/products/${backlogProductId}`)).body).toMatchObject({ available_stock: backlogHoldCount, reserved: backlogHoldCount })
      expect((await t.request('GET', `/api/products/${cleanProductId}`)).body).toMatchObject({ available_stock: backlogHoldCount - 1_000, reserved: 1_000 })
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 4, violations: [] })

      // The gauges read the same snapshot; the lag is how long the oldest lapsed hold has waited.
      const before = (await t.request('GET', '/metrics')).text
      expect(before).toContain(`flash_sale_product_available{product_id="${backlogProductId}"} ${backlogHoldCount}`)
      expect(before).toMatch(new RegExp(`^flash_sale_sweeper_lag_seconds ${(t.clock.now().getTime() - firstExpiresAtMs) / 1000}$`, 'm'))

      // Against the same spread, not a clean product: a read sums the product's lapsed expiry
      // buckets, a few rows whatever their holds. Once SQLite's statements were prepared once, a
      // read cost 14 µs and those few rows 6 µs more, a ratio of 1.4 to a clean product that says
      // nothing about the backlog.
      const { firstUs: backlogUs, secondUs: sameSpreadUs, ratio } = await readCosts(t, [backlogProductId, sameSpreadProductId])
      const { secondUs: cleanUs } = await readCosts(t, [backlogProductId, cleanProductId])
      console.log(
        `${engine.name}: product read with ${backlogHoldCount} lapsed holds ${backlogUs.toFixed(0)} µs, with ${sameSpreadHoldCount} over the same ${backlogSpreadMs} ms ${sameSpreadUs.toFixed(0)} µs (medians of ${readPairs}; median ratio ${ratio.toFixed(2)}); clean ${cleanUs.toFixed(0)} µs`,
      )
      expect(ratio).toBeLessThanOrEqual(1.25)

      // One pass serves every product: the small one is done at once, the big one takes its share.
      const first = await sweepOnce(t.runtime.store, t.runtime.observer, t.clock, t.config.sweepBatchMax)
      expect(first.expiredCount).toBe(t.config.sweepBatchMax)
      expect((await t.runtime.store.oldestLapsedByProduct(t.clock.now(), 10)).find((lag) => lag.productId === smallProductId)?.oldestLapsedAt).toBeNull()

      const startedMs = Date.now()
      const passCount = await sweepUntilCaughtUp({ store: t.runtime.store, observer: t.runtime.observer, clock: t.clock, batchMax: t.config.sweepBatchMax })
      const sweptMs = Date.now() - startedMs
      console.log(
        `${engine.name}: swept ${backlogHoldCount} lapsed holds in ${passCount + 1} passes of ${t.config.sweepBatchMax}, ${sweptMs} ms (${Math.round((backlogHoldCount / sweptMs) * 1000)} rows/s)`,
      )
      // Full passes back to back until caught up: no pass is wasted, none waits for a timer.
      expect(passCount).toBeLessThanOrEqual(Math.ceil((backlogHoldCount + sameSpreadHoldCount + 10) / t.config.sweepBatchMax) + 1)
      // Bounded time, with room for a loaded machine: measured alone 15-64k rows/s (PostgreSQL,
      // SQLite), 10k under load, so a minute means something is badly wrong.
      expect(sweptMs).toBeLessThan(60_000)
      expect(await t.runtime.store.productsWithLapsedRows(t.clock.now(), 10)).toEqual([])
      expect((await t.request('GET', `/api/products/${backlogProductId}`)).body).toMatchObject({ available_stock: backlogHoldCount, reserved: 0 })
      const metrics = (await t.request('GET', '/metrics')).text
      expect(metrics).toMatch(/^flash_sale_sweeper_lag_seconds 0$/m)
      expect(metrics).toContain(`flash_sale_product_available{product_id="${backlogProductId}"} ${backlogHoldCount}`)
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 4, violations: [] })
    })

    it('the audit reports an expiry bucket that disagrees with its rows, and a clean book after holds, an order and a release', async () => {
      const t = await buildTestApp(engine.name, { stock: 10, env: { HOLD_TTL_SECONDS: '1' } })
      const holds = await Promise.all([1, 2, 3].map(async (qty) => (await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty } })).body as { hold_id: string }))
      expect((await t.request('POST', '/api/orders', { body: { hold_id: holds[0]!.hold_id } })).status).toBe(201)
      expect((await t.request('DELETE', `/api/holds/${holds[1]!.hold_id}`)).status).toBe(200)
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
      const [bucket] = (await rawQuery(t.engine, t.databaseUrl, `select bucket, qty from expiry_buckets where product_id = ${t.productId} order by bucket`)) as Array<{
        bucket: number
        qty: number
      }>
      // The live hold of 3 units (its bucket first: the hold TTL is shorter than the order's).
      expect(Number(bucket!.qty)).toBe(3)
      await rawQuery(t.engine, t.databaseUrl, `update expiry_buckets set qty = qty + 1 where product_id = ${t.productId} and bucket = ${bucket!.bucket}`)
      expect((await t.audit()).violations).toEqual([
        { invariant: 'I2', productId: t.productId, message: `expiry bucket ${bucket!.bucket} says 4 units, its active holds and pending orders 3` },
      ])
    })
  })
}
