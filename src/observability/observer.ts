// Logs and metrics for the named events (SPEC §6). Events are logged with the request that
// caused them: the use cases pass its log along (EventLog, domain/events.ts); events no request
// caused (the sweeper, a batch's retries, the CLI) go to the base logger.
import type { BaseLogger } from 'pino'
import type { Histogram } from 'prom-client'
import type { DomainEvent, EventLog, Observer } from '../domain/events.js'
import type { Metrics } from './metrics.js'

export type EventLogger = Pick<BaseLogger, 'info' | 'warn'>

export function createObserver(baseLogger: EventLogger, metrics: Metrics): Observer {
  const batchSizes: Partial<Record<string, Histogram>> = {
    'hold.batch': metrics.holdBatchSize,
    'order.batch': metrics.orderBatchSize,
    'payment.batch': metrics.webhookBatchSize,
    'waitlist.batch': metrics.waitlistBatchSize,
  }
  return {
    emit(event: DomainEvent, requestLog?: EventLog) {
      const { name, ...details } = event
      const log = requestLog ?? baseLogger
      // Batch sizes are metrics only: a log line per batch would say nothing the answers do not.
      const batchSize = batchSizes[name]
      if (batchSize) {
        batchSize.observe(Number(details.size))
        return
      }
      // So are a keyed batch's reruns: every replayed key costs one, and its answer says so.
      if (name === 'keys.rerun') {
        metrics.keyedBatchReruns.inc({ label: String(details.label), cause: String(details.cause) })
        return
      }
      if (name === 'tx.retry' || name === 'tx.busy' || name === 'payment.refund_required' || name === 'db.unavailable') log.warn({ event: name, ...details }, name)
      else log.info({ event: name, ...details }, name)
      metrics.events.inc({ event: name })
      const productLabel = event.productId === undefined ? '' : String(event.productId)
      if (name === 'hold.created') metrics.holdsCreated.inc({ product_id: productLabel })
      if (name === 'hold.rejected') metrics.holdsRejected.inc({ reason: String(details.reason ?? 'unknown'), product_id: details.reason === 'product_not_found' ? '' : productLabel })
      if (name === 'tx.retry') metrics.txRetries.inc({ label: String(details.label) })
      if (name === 'tx.busy') metrics.txBusy.inc({ label: String(details.label) })
      if (name === 'payment.refund_required') metrics.refundRequired.inc({ product_id: productLabel })
      if (name === 'idempotency.replayed') metrics.replays.inc({ scope: String(details.scope) })
    },
  }
}
