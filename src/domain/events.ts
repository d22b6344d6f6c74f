// Named events (SPEC §6). Use cases collect them inside a transaction and emit them only after
// it commits, because a retried transaction runs its callback again.
export type EventName =
  | 'hold.created'
  | 'hold.batch'
  | 'hold.rejected'
  | 'hold.expired'
  | 'hold.released'
  | 'order.created'
  | 'order.batch'
  | 'order.expired'
  | 'order.cancelled'
  | 'payment.applied'
  | 'payment.batch'
  | 'payment.duplicate'
  | 'payment.early'
  | 'payment.refund_required'
  | 'payment.ignored'
  | 'waitlist.joined'
  | 'waitlist.batch'
  | 'waitlist.rejected'
  | 'waitlist.admitted'
  | 'waitlist.left'
  | 'waitlist.closed'
  | 'idempotency.replayed'
  | 'tx.retry'
  | 'tx.busy'
  | 'keys.rerun'
  | 'sweep.completed'
  | 'db.unavailable'

export interface DomainEvent {
  name: EventName
  productId?: number
  qty?: number
  [detail: string]: unknown
}

// The log of the request that caused an event, so its line carries that request's id; events
// nothing asked for (the sweeper's, a batch's retries, the CLI's) go to the process's own log.
// Passed along by hand, not found through AsyncLocalStorage: on Node 20 that hooks every promise
// of the process, and a hold cost about 7-17 µs more of the server's CPU with it (one process,
// alternating runs on PostgreSQL and SQLite; README, Development).
export interface EventLog {
  info(details: object, message: string): void
  warn(details: object, message: string): void
}

// Whose log a batch's own events go to (the units it freed admitting tickets, the lapsed holds
// it reclaimed, its retries): a batch of one request was caused by that request alone; a batch of
// several caused them together, so no single request id fits them.
export function batchLog(logs: ReadonlyArray<EventLog | undefined>): EventLog | undefined {
  return logs.length === 1 ? logs[0] : undefined
}

export interface Observer {
  emit(event: DomainEvent, log?: EventLog): void
}

export function emitAll(observer: Observer, events: readonly DomainEvent[], log?: EventLog): void {
  for (const event of events) observer.emit(event, log)
}
