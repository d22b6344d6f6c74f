// GET /api/admin/dashboard: what the live dashboard (GET /dashboard) shows, in one answer. It is
// registered inside the admin scope, so the bearer-token hook guards it like every admin route.
// Stock counts and sweeper lag come from the database (true for every process and instance);
// event counts are those a scrape of /metrics reports (with WORKERS=N, every worker's summed). Products are presented
// as GET /api/products/:id presents them, so a field added there (per-buyer limit, sale window,
// waitlist) reaches the page without a change here.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from '@sinclair/typebox'
import type { MetricObjectWithValues, MetricValue } from 'prom-client'
import type { Clock } from '../../domain/clock.js'
import { viewOf } from '../../domain/products.js'
import type { Store } from '../../domain/store.js'
import type { MetricsSource } from '../../observability/cluster-metrics.js'
import { lagSeconds } from '../../observability/metrics.js'
import { presentProduct } from '../present.js'
import { problemResponses } from '../schemas/index.js'

// The page shows at most this many products; one bounded query per refresh.
export const dashboardProductsMax = 100

const Counts = Type.Record(Type.String(), Type.Number())

const DashboardView = Type.Object({
  generated_at: Type.String({ format: 'date-time' }),
  // Milliseconds since the epoch of the same instant, for rates computed by the page.
  generated_at_ms: Type.Number(),
  processes: Type.Integer({ description: 'Server processes whose counters are summed here' }),
  sweeper_lag_seconds: Type.Number({ description: 'How long past its expiry the oldest lapsed hold or order waits to be swept' }),
  totals: Type.Object(
    {
      holds_created: Type.Number(),
      hold_refusals: Counts,
      refunds_required: Type.Number(),
      payments_applied: Type.Number(),
      payments_early: Type.Number(),
      holds_expired: Type.Number(),
      orders_expired: Type.Number(),
      tx_retries: Type.Number(),
      tx_busy: Type.Number(),
      rate_limited: Type.Number(),
      idempotent_replays: Type.Number(),
    },
    { additionalProperties: true },
  ),
  products: Type.Array(
    Type.Object(
      {
        id: Type.Integer(),
        name: Type.String(),
        stock: Type.Integer(),
        available_stock: Type.Integer(),
        reserved: Type.Integer(),
        sold: Type.Integer(),
        holds_created: Type.Number(),
        hold_refusals: Counts,
        refunds_required: Type.Number(),
        sweeper_lag_seconds: Type.Number(),
      },
      { additionalProperties: true },
    ),
  ),
  products_truncated: Type.Boolean(),
})

export interface AdminDashboardOptions {
  store: Store
  clock: Clock
  metricsSource: MetricsSource
}

export const adminDashboardRoutes: FastifyPluginAsyncTypebox<AdminDashboardOptions> = async (app, { store, clock, metricsSource }) => {
  app.get('/dashboard', { schema: { tags: ['admin'], security: [{ bearer: [] }], response: { 200: DashboardView, ...problemResponses([401, 503]) } } }, async (_request, reply) => {
    const now = clock.now()
    // One more than shown, to know whether the list was cut.
    const [snapshots, lapsed, oldestLapsedAt, collected] = await Promise.all([
      store.allProductSnapshots(now, dashboardProductsMax + 1),
      store.oldestLapsedByProduct(now, dashboardProductsMax),
      store.oldestLapsedOverall(now),
      metricsSource.collect(),
    ])
    const counters = new MetricIndex(collected.metrics)
    const lagByProduct = new Map(lapsed.map(({ productId, oldestLapsedAt }) => [productId, lagSeconds(now, oldestLapsedAt)]))
    const products = snapshots.slice(0, dashboardProductsMax).map((snapshot) => {
      const productId = String(snapshot.id)
      return {
        ...presentProduct(viewOf(snapshot, now)),
        holds_created: counters.sum('flash_sale_product_holds_created_total', { product_id: productId }),
        hold_refusals: counters.byLabel('flash_sale_holds_rejected_total', 'reason', { product_id: productId }),
        refunds_required: counters.sum('flash_sale_refund_required_total', { product_id: productId }),
        sweeper_lag_seconds: lagByProduct.get(snapshot.id) ?? 0,
        // Shown once anybody has joined the product's line.
        ...(snapshot.line.joined > 0
          ? { waitlist: { waiting_tickets: snapshot.line.waitingTickets, waiting_units: snapshot.line.waitingQty, tickets_taken: snapshot.line.joined } }
          : {}),
      }
    })
    reply.header('cache-control', 'no-store')
    return {
      generated_at: now.toISOString(),
      generated_at_ms: now.getTime(),
      processes: collected.processes,
      sweeper_lag_seconds: lagSeconds(now, oldestLapsedAt),
      totals: {
        holds_created: counters.sum('flash_sale_events_total', { event: 'hold.created' }),
        hold_refusals: counters.byLabel('flash_sale_holds_rejected_total', 'reason', {}),
        refunds_required: counters.sum('flash_sale_refund_required_total', {}),
        payments_applied: counters.sum('flash_sale_events_total', { event: 'payment.applied' }),
        payments_early: counters.sum('flash_sale_events_total', { event: 'payment.early' }),
        holds_expired: counters.sum('flash_sale_events_total', { event: 'hold.expired' }),
        orders_expired: counters.sum('flash_sale_events_total', { event: 'order.expired' }),
        tx_retries: counters.sum('flash_sale_tx_retries_total', {}),
        tx_busy: counters.sum('flash_sale_tx_busy_total', {}),
        rate_limited: counters.sum('flash_sale_rate_limited_total', {}),
        idempotent_replays: counters.sum('flash_sale_idempotent_replays_total', {}),
        waitlist_joined: counters.sum('flash_sale_events_total', { event: 'waitlist.joined' }),
        waitlist_admitted: counters.sum('flash_sale_events_total', { event: 'waitlist.admitted' }),
      },
      products,
      products_truncated: snapshots.length > dashboardProductsMax,
    }
  })
}

type Labels = Record<string, string>

// Looks up series in the registry's JSON: sums over the labels not named, so the page gets the
// same totals whether a counter is split by product or not.
class MetricIndex {
  private readonly byName = new Map<string, MetricObjectWithValues<MetricValue<string>>>()

  constructor(metrics: readonly MetricObjectWithValues<MetricValue<string>>[]) {
    for (const metric of metrics) this.byName.set(metric.name, metric)
  }

  sum(name: string, match: Labels): number {
    let total = 0
    for (const value of this.matching(name, match)) total += value.value
    return total
  }

  byLabel(name: string, label: string, match: Labels): Record<string, number> {
    const counts: Record<string, number> = {}
    for (const value of this.matching(name, match)) {
      const key = String(value.labels?.[label] ?? 'unknown')
      counts[key] = (counts[key] ?? 0) + value.value
    }
    return counts
  }

  private matching(name: string, match: Labels): MetricValue<string>[] {
    const metric = this.byName.get(name)
    if (!metric) return []
    return metric.values.filter((value) => Object.entries(match).every(([label, wanted]) => String(value.labels?.[label] ?? '') === wanted))
  }
}
