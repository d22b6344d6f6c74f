// Recomputes I1-I4 and I8 from the rows as stored and reports every violation.
import type { Store } from './store.js'

export interface AuditViolation {
  // `waitlist`: the line's counts or an admission disagree with the rows (SPEC §8).
  invariant: 'I1' | 'I2' | 'I3' | 'I4' | 'I8' | 'waitlist'
  productId?: number
  message: string
}

export interface AuditReport {
  ok: boolean
  checkedProducts: number
  violations: AuditViolation[]
}

// `now` is the service's clock: it decides which holds and pending orders still count (I8).
export async function audit(store: Store, now: Date = new Date()): Promise<AuditReport> {
  const facts = await store.auditFacts(now)
  const violations: AuditViolation[] = []
  for (const row of facts.products) {
    const { productId, stock, reserved, sold } = row
    if (reserved < 0) violations.push({ invariant: 'I1', productId, message: `reserved ${reserved} < 0` })
    if (sold < 0) violations.push({ invariant: 'I1', productId, message: `sold ${sold} < 0` })
    if (stock - reserved - sold < 0) {
      violations.push({ invariant: 'I1', productId, message: `available ${stock - reserved - sold} < 0 (stock ${stock}, reserved ${reserved}, sold ${sold})` })
    }
    const expectedReserved = row.activeHoldQty + row.pendingOrderQty
    if (reserved !== expectedReserved) {
      violations.push({
        invariant: 'I2',
        productId,
        message: `reserved ${reserved} != active holds ${row.activeHoldQty} + pending orders ${row.pendingOrderQty}`,
      })
    }
    if (sold !== row.paidOrderQty) violations.push({ invariant: 'I3', productId, message: `sold ${sold} != paid orders ${row.paidOrderQty}` })
  }
  // I2 as readers see it: available stock counts lapsed units from these tallies.
  for (const { productId, bucket, bookQty, rowsQty } of facts.expiryBucketDrift) {
    violations.push({ invariant: 'I2', productId, message: `expiry bucket ${bucket} says ${bookQty} units, its active holds and pending orders ${rowsQty}` })
  }
  for (const holdId of facts.holdsWithManyOrders) violations.push({ invariant: 'I4', message: `hold ${holdId} has more than one order` })
  for (const holdId of facts.convertedHoldsWithoutOrder) violations.push({ invariant: 'I4', message: `converted hold ${holdId} has no order` })
  for (const orderId of facts.ordersWithoutHold) violations.push({ invariant: 'I4', message: `order ${orderId} names no hold` })
  for (const orderId of facts.ordersOfOtherProduct) violations.push({ invariant: 'I4', message: `order ${orderId} is for another product than its hold` })
  for (const { productId, buyerId, units, perBuyerLimit } of facts.buyersOverLimit) {
    violations.push({ invariant: 'I8', productId, message: `buyer ${JSON.stringify(buyerId)} has ${units} units > per_buyer_limit ${perBuyerLimit}` })
  }
  for (const line of facts.lines) {
    if (line.waitingQty !== line.ticketWaitingQty || line.waitingTickets !== line.ticketWaitingCount) {
      violations.push({
        invariant: 'waitlist',
        productId: line.productId,
        message: `waiting ${line.waitingTickets} tickets / ${line.waitingQty} units on the product != ${line.ticketWaitingCount} / ${line.ticketWaitingQty} in the waiting tickets`,
      })
    }
  }
  for (const ticketId of facts.ticketsBadlyAdmitted)
    violations.push({
      invariant: 'waitlist',
      message: `ticket ${ticketId} and its hold disagree (admitted without one hold of its product, qty and buyer, or a hold without admission)`,
    })
  return { ok: violations.length === 0, checkedProducts: facts.products.length, violations }
}
