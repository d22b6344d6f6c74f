// Prometheus metrics of one process (SPEC §6): counters for the named events, latency per
// route, batch sizes, and per-product gauges read from the database at scrape time.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import type { Clock } from '../domain/clock.js'
import { viewOf, type ProductView } from '../domain/products.js'
import type { Store } from '../domain/store.js'

// How many products the per-product gauges cover; a scrape stays one bounded query.
const productGaugesMax = 1000

export class Metrics {
  readonly registry = new Registry()
  readonly events = new Counter({ name: 'flash_sale_events_total', help: 'Named domain events', labelNames: ['event'], registers: [this.registry] })
  readonly holdsRejected = new Counter({ name: 'flash_sale_holds_rejected_total', help: 'Refused holds by reason', labelNames: ['reason'], registers: [this.registry] })
  readonly txRetries = new Counter({ name: 'flash_sale_tx_retries_total', help: 'Transactions retried after a transient conflict', labelNames: ['label'], registers: [this.registry] })
  readonly txBusy = new Counter({ name: 'flash_sale_tx_busy_total', help: 'Transactions that exhausted their retries (503 busy)', labelNames: ['label'], registers: [this.registry] })
  readonly replays = new Counter({ name: 'flash_sale_idempotent_replays_total', help: 'Answers replayed for an idempotency key', labelNames: ['scope'], registers: [this.registry] })
  readonly rateLimited = new Counter({ name: 'flash_sale_rate_limited_total', help: 'Requests refused by a rate limit', labelNames: ['route'], registers: [this.registry] })
  readonly refundRequired = new Counter({ name: 'flash_sale_refund_required_total', help: 'Late payments that could not be honoured', registers: [this.registry] })
  readonly sweepLag = new Gauge({ name: 'flash_sale_sweeper_lag_seconds', help: 'How late the last sweep pass started against its schedule', registers: [this.registry] })
  readonly sweepExpired = new Counter({ name: 'flash_sale_sweeper_expired_total', help: 'Holds and orders expired by the sweeper', registers: [this.registry] })
  readonly holdBatchSize = batchSizeHistogram(this.registry, 'flash_sale_hold_batch_size', 'Hold requests served by one transaction (group commit)')
  readonly orderBatchSize = batchSizeHistogram(this.registry, 'flash_sale_order_batch_size', 'Order requests served by one transaction (group commit)')
  readonly webhookBatchSize = batchSizeHistogram(this.registry, 'flash_sale_webhook_batch_size', 'Payment webhooks served by one transaction (group commit)')
  readonly requestDuration = new Histogram({
    name: 'flash_sale_http_request_duration_seconds',
    help: 'Request latency by route',
    labelNames: ['method', 'route', 'status_code'],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [this.registry],
  })

  constructor() {
    collectDefaultMetrics({ register: this.registry })
  }

  // Per-product gauges, read from the database at scrape time: one query per scrape, shared
  // by the three gauges (prom-client collects them concurrently, so each awaits the same read).
  trackProducts(store: Store, clock: Clock): void {
    let pending: Promise<ProductView[]> | undefined
    const read = (): Promise<ProductView[]> => {
      const now = clock.now()
      pending ??= store.allProductSnapshots(now, productGaugesMax).then(
        (snapshots) => snapshots.map((snapshot) => viewOf(snapshot, now)),
        () => [],
      )
      const current = pending
      // The next scrape reads afresh once this one has its answer.
      void current.finally(() => {
        if (pending === current) pending = undefined
      })
      return current
    }
    const gauge = (name: string, help: string, value: (view: ProductView) => number): void => {
      new Gauge({
        name,
        help,
        labelNames: ['product_id'],
        registers: [this.registry],
        async collect() {
          this.reset()
          for (const view of await read()) this.set({ product_id: String(view.id) }, value(view))
        },
      })
    }
    gauge('flash_sale_product_available', 'Units available to new holds', (view) => view.availableStock)
    gauge('flash_sale_product_reserved', 'Units in active holds and pending orders', (view) => view.reserved)
    gauge('flash_sale_product_sold', 'Units in paid orders', (view) => view.sold)
  }
}

function batchSizeHistogram(registry: Registry, name: string, help: string): Histogram {
  return new Histogram({ name, help, buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512], registers: [registry] })
}
