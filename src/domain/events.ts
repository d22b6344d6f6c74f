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
  | 'sweep.completed'
  | 'db.unavailable'

export interface DomainEvent {
  name: EventName
  productId?: number
  qty?: number
  [detail: string]: unknown
}

export interface Observer {
  emit(event: DomainEvent): void
}

export function emitAll(observer: Observer, events: readonly DomainEvent[]): void {
  for (const event of events) observer.emit(event)
}
