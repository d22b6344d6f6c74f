// Proves the audit recomputes I8 (SPEC §2, §8) from the rows on every engine: rows written past
// the service (a bug's footprint) that give a buyer more units than the limit are reported,
// lapsed holds and pending orders are not counted, and a limit lowered below what a buyer already
// had (allowed: their units stay) is not reported as a violation until that buyer is granted more.
import { describe, expect, it } from 'vitest'
import type { Hold, Order } from '../src/domain/store.js'
import { buildTestApp, type TestApp } from './helpers/app.js'
import { buyerEnv } from './helpers/buyer-tokens.js'
import { createDropProduct, patchProduct } from './helpers/drops.js'
import { testEngines } from './helpers/engines.js'

const minuteMs = 60_000

// Writes holds straight into the tables (and the product's counts to match, so I1-I3 stay clean).
async function writeHolds(t: TestApp, productId: number, holds: Array<{ id: string; buyerId: string | null; qty: number; expiresInMs: number }>): Promise<Hold[]> {
  const now = t.clock.now()
  const rows: Hold[] = holds.map((hold) => ({
    id: hold.id,
    productId,
    qty: hold.qty,
    status: 'active',
    expiresAt: new Date(now.getTime() + hold.expiresInMs),
    createdAt: now,
    buyerId: hold.buyerId,
  }))
  await t.runtime.store.transaction({ label: 'test.write_holds' }, async (tx) => {
    await tx.lockProduct(productId)
    await tx.insertHolds(rows)
    await tx.applyProductDelta(productId, { reserved: rows.reduce((sum, hold) => sum + hold.qty, 0), sold: 0, stock: 0 })
  })
  return rows
}

async function writePaidOrder(t: TestApp, hold: Hold): Promise<void> {
  const now = t.clock.now()
  const order: Order = {
    id: `o-${hold.id}`,
    holdId: hold.id,
    productId: hold.productId,
    qty: hold.qty,
    amountMinor: 100,
    currency: 'USD',
    status: 'paid',
    createdAt: now,
    expiresAt: new Date(now.getTime() + 15 * minuteMs),
    paidAt: now,
    paymentId: null,
    refundRequired: false,
    buyerId: hold.buyerId,
  }
  await t.runtime.store.transaction({ label: 'test.write_order' }, async (tx) => {
    await tx.lockProduct(hold.productId)
    await tx.setHoldsStatus([hold.id], 'active', 'converted', now)
    await tx.insertOrders([order])
    await tx.applyProductDelta(hold.productId, { reserved: -hold.qty, sold: hold.qty, stock: 0 })
  })
}

async function i8Violations(t: TestApp): Promise<Array<{ invariant: string; product_id?: number; message: string }>> {
  const reply = await t.admin('GET', '/api/admin/audit')
  expect(reply.status, reply.text).toBe(200)
  return reply.body.violations.filter((violation: { invariant: string }) => violation.invariant === 'I8')
}

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: audit of I8`, () => {
    it('reports a buyer above the limit from active holds and paid orders, counting neither lapsed holds nor other buyers', async () => {
      const t = await buildTestApp(engine.name, { env: buyerEnv })
      const product = await createDropProduct(t.baseUrl, 50, { per_buyer_limit: 3 })
      t.clock.advanceMs(1)
      const [paid] = await writeHolds(t, product.id, [
        { id: 'h-alice-1', buyerId: 'alice', qty: 2, expiresInMs: minuteMs },
        { id: 'h-alice-2', buyerId: 'alice', qty: 1, expiresInMs: minuteMs },
        // Lapsed: does not count.
        { id: 'h-alice-3', buyerId: 'alice', qty: 3, expiresInMs: -1 },
        { id: 'h-bob-1', buyerId: 'bob', qty: 3, expiresInMs: minuteMs },
        { id: 'h-anon-1', buyerId: null, qty: 9, expiresInMs: minuteMs },
      ])
      expect(await i8Violations(t)).toEqual([])
      await writePaidOrder(t, paid!)
      expect(await i8Violations(t)).toEqual([])
      await writeHolds(t, product.id, [{ id: 'h-alice-4', buyerId: 'alice', qty: 1, expiresInMs: minuteMs }])
      const violations = await i8Violations(t)
      expect(violations).toEqual([{ invariant: 'I8', product_id: product.id, message: expect.stringContaining('"alice" has 4 units > per_buyer_limit 3') }])
      // Once the extra hold lapses, alice is within the limit again.
      t.clock.advanceMs(minuteMs)
      expect(await i8Violations(t)).toEqual([])
    })

    it('does not report a limit lowered below what a buyer has, and does once that buyer is granted more after it', async () => {
      const t = await buildTestApp(engine.name, { env: buyerEnv })
      const product = await createDropProduct(t.baseUrl, 50, { per_buyer_limit: 3 })
      t.clock.advanceMs(1)
      await writeHolds(t, product.id, [{ id: 'h-alice-1', buyerId: 'alice', qty: 3, expiresInMs: 10 * minuteMs }])
      t.clock.advanceMs(1)
      expect((await patchProduct(t.baseUrl, product.id, { per_buyer_limit: 2 })).status).toBe(200)
      expect(await i8Violations(t)).toEqual([])
      t.clock.advanceMs(1)
      await writeHolds(t, product.id, [{ id: 'h-alice-2', buyerId: 'alice', qty: 1, expiresInMs: 10 * minuteMs }])
      expect(await i8Violations(t)).toEqual([{ invariant: 'I8', product_id: product.id, message: expect.stringContaining('"alice" has 4 units > per_buyer_limit 2') }])
    })
  })
}
