// What is true now (SPEC §4): a hold or order past its expiry is expired from that instant on,
// even before the sweeper has brought its row up to date.
import type { Hold, HoldStatus, Order, OrderStatus } from './store.js'

export function hasLapsed(row: { expiresAt: Date }, now: Date): boolean {
  return row.expiresAt.getTime() <= now.getTime()
}

export function effectiveStatus(hold: Hold, now: Date): HoldStatus {
  return hold.status === 'active' && hasLapsed(hold, now) ? 'expired' : hold.status
}

export function effectiveOrderStatus(order: Order, now: Date): OrderStatus {
  return order.status === 'pending' && hasLapsed(order, now) ? 'expired' : order.status
}
