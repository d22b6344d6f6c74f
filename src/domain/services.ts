// The use cases one process serves, built once from the store, the clock and the observer.
// http/ answers requests with them; runtime.ts drains them on shutdown.
import type { Config } from '../config.js'
import type { Clock } from './clock.js'
import type { Observer } from './events.js'
import { Holds } from './holds.js'
import { Orders } from './orders.js'
import { Payments } from './payments.js'
import { Catalog, ProductReader } from './products.js'
import type { Store } from './store.js'
import { Waitlist } from './waitlist.js'

export interface Services {
  holds: Holds
  orders: Orders
  payments: Payments
  reader: ProductReader
  catalog: Catalog
  waitlist: Waitlist
}

export type ServiceSettings = Pick<
  Config,
  'holdTtlMs' | 'orderTtlMs' | 'idempotencyTtlMs' | 'holdBatchMax' | 'orderBatchMax' | 'webhookBatchMax' | 'queueDepthMax' | 'queuedProductsMax' | 'inFlightKeysMax'
>

export function createServices(store: Store, clock: Clock, observer: Observer, settings: ServiceSettings): Services {
  const reader = new ProductReader(store, clock, settings)
  return {
    holds: new Holds(store, clock, observer, settings),
    orders: new Orders(store, clock, observer, settings),
    payments: new Payments(store, clock, observer, settings),
    reader,
    catalog: new Catalog(store, clock, observer),
    waitlist: new Waitlist(store, clock, observer, settings, reader),
  }
}

// Resolves when every queued request has been answered (graceful shutdown).
export async function drainServices(services: Services): Promise<void> {
  await services.holds.drain()
  await services.orders.drain()
  await services.payments.drain()
  await services.waitlist.drain()
}
