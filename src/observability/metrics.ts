// Prometheus metrics (SPEC §6): counters for the named events, latency per route and batch
// sizes, counted by each process (with WORKERS=N summed over the workers at scrape time, see
// cluster-metrics.ts), and per-product gauges and the sweeper lag read from the database.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import type { Clock } from '../domain/clock.js'
import { viewOf, type ProductView } from '../domain/products.js'
import type { Store } from '../domain/store.js'

// How many products the per-product gauges cover; a scrape stays one bounded query.
const productGaugesMax = 1000

export class Metrics {
  // What each process counts for itself: with WORKERS=N a scrape sums these over the workers.
  readonly registry = new Registry()
  // What is read from the database at scrape time, by the process answering: never summed.
  readonly databaseRegistry = new Registry()
  readonly events = new Counter({ name: 'flash_sale_events_total', help: 'Named domain events', labelNames: ['event'], registers: [this.registry] })
  // product_id is empty for a refusal naming no existing product, so input cannot add series.
  readonly holdsRejected = new Counter({ name: 'flash_sale_holds_rejected_total', help: 'Refused holds by reason', labelNames: ['reason', 'product_id'], registers: [this.registry] })
  readonly holdsCreated = new Counter({ name: 'flash_sale_product_holds_created_total', help: 'Holds granted, by product', labelNames: ['product_id'], registers: [this.registry] })
  readonly txRetries = new Counter({ name: 'flash_sale_tx_retries_total', help: 'Transactions retried after a transient conflict', labelNames: ['label'], registers: [this.registry] })
  readonly txBusy = new Counter({ name: 'flash_sale_tx_busy_total', help: 'Transactions that exhausted their retries (503 busy)', labelNames: ['label'], registers: [this.registry] })
  readonly keyedBatchReruns = new Counter({
    name: 'flash_sale_keyed_batch_reruns_total',
    help: 'Keyed batches run again: a key was stored already (or meanwhile), or expired rows of its keys were freed first',
    labelNames: ['label', 'cause'],
    registers: [this.registry],
  })
  readonly replays = new Counter({ name: 'flash_sale_idempotent_replays_total', help: 'Answers replayed for an idempotency key', labelNames: ['scope'], registers: [this.registry] })
  readonly rateLimited = new Counter({ name: 'flash_sale_rate_limited_total', help: 'Requests refused by a rate limit', labelNames: ['route'], registers: [this.registry] })
  readonly refundRequired = new Counter({
    name: 'flash_sale_refund_required_total',
    help: 'Late payments that could not be honoured: refund them',
    labelNames: ['product_id'],
    registers: [this.registry],
  })
  readonly sweepExpired = new Counter({ name: 'flash_sale_sweeper_expired_total', help: 'Holds and orders expired by the sweeper', registers: [this.registry] })
  // Logged at most once per interval (throttle.ts); counted here every time.
  readonly sweepFailures = new Counter({ name: 'flash_sale_sweep_failures_total', help: 'Sweep passes that failed (database away)', registers: [this.registry] })
  readonly readyFailures = new Counter({ name: 'flash_sale_ready_failures_total', help: '/ready probes answered 503 (database away)', registers: [this.registry] })
  readonly holdBatchSize = batchSizeHistogram(this.registry, 'flash_sale_hold_batch_size', 'Hold requests served by one transaction (group commit)')
  readonly orderBatchSize = batchSizeHistogram(this.registry, 'flash_sale_order_batch_size', 'Order requests served by one transaction (group commit)')
  readonly waitlistBatchSize = batchSizeHistogram(this.registry, 'flash_sale_waitlist_batch_size', 'Waitlist joins served by one transaction (group commit)')
  readonly webhookBatchSize = batchSizeHistogram(this.registry, 'flash_sale_webhook_batch_size', 'Payment webhooks served by one transaction (group commit)')
  readonly requestDuration = new Histogram({
    name: 'flash_sale_http_request_duration_seconds',
    help: 'Request latency by route',
    labelNames: ['method', 'route', 'status_code'],
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [this.registry],
  })
  readonly processes = new Gauge({ name: 'flash_sale_metrics_processes', help: 'Server processes whose counters this scrape sums', registers: [this.databaseRegistry] })

  constructor() {
    collectDefaultMetrics({ register: this.registry })
  }

  // Per-product gauges and the sweeper lag, read from the database at scrape time: one read of
  // each per scrape, shared by the gauges (prom-client collects them concurrently).
  trackProducts(store: Store, clock: Clock): void {
    const shared = <T>(read: () => Promise<T[]>): (() => Promise<T[]>) => {
      let pending: Promise<T[]> | undefined
      return () => {
        pending ??= read().catch(() => [])
        const current = pending
        // The next scrape reads afresh once this one has its answer.
        void current.finally(() => {
          if (pending === current) pending = undefined
        })
        return current
      }
    }
    const readViews = shared(async () => {
      const now = clock.now()
      return (await store.allProductSnapshots(now, productGaugesMax)).map((snapshot) => viewOf(snapshot, now))
    })
    const readLags = shared(async () => {
      const now = clock.now()
      return (await store.oldestLapsedByProduct(now, productGaugesMax)).map(({ productId, oldestLapsedAt }) => ({ productId, lagS: lagSeconds(now, oldestLapsedAt) }))
    })
    const gauge = (name: string, help: string, value: (view: ProductView) => number): void => {
      new Gauge({
        name,
        help,
        labelNames: ['product_id'],
        registers: [this.databaseRegistry],
        async collect() {
          this.reset()
          for (const view of await readViews()) this.set({ product_id: String(view.id) }, value(view))
        },
      })
    }
    gauge('flash_sale_product_available', 'Units available to new holds', (view) => view.availableStock)
    gauge('flash_sale_product_reserved', 'Units in active holds and pending orders', (view) => view.reserved)
    gauge('flash_sale_product_sold', 'Units in paid orders', (view) => view.sold)
    gauge('flash_sale_product_waitlist_tickets', 'Waitlist tickets waiting', (view) => view.line.waitingTickets)
    gauge('flash_sale_product_waitlist_units', 'Units the waiting tickets want (held back from direct holds)', (view) => view.line.waitingQty)
    new Gauge({
      name: 'flash_sale_sweeper_lag_seconds',
      help: 'How long past its expiry the oldest lapsed hold or order still waits to be swept (0: none waits)',
      registers: [this.databaseRegistry],
      async collect() {
        const now = clock.now()
        // As the shared reads above: a database that cannot answer leaves the scrape whole.
        this.set(lagSeconds(now, await store.oldestLapsedOverall(now).catch(() => null)))
      },
    })
    new Gauge({
      name: 'flash_sale_product_sweeper_lag_seconds',
      help: 'Sweeper lag of one product',
      labelNames: ['product_id'],
      registers: [this.databaseRegistry],
      async collect() {
        this.reset()
        for (const lag of await readLags()) this.set({ product_id: String(lag.productId) }, lag.lagS)
      },
    })
  }
}

// Sweeper lag (SPEC §6): how long past its expiry the oldest lapsed row has waited, not how
// late the sweeper's timer fired.
export function lagSeconds(now: Date, oldestLapsedAt: Date | null): number {
  return oldestLapsedAt === null ? 0 : Math.max(0, now.getTime() - oldestLapsedAt.getTime()) / 1000
}

function batchSizeHistogram(registry: Registry, name: string, help: string): Histogram {
  return new Histogram({ name, help, buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512], registers: [registry] })
}
