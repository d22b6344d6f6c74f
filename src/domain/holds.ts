// Holds: short-lived reservations. Requests for one product that arrive while a transaction for
// it is in flight are served together by the next one (group commit): one product row lock,
// one counts update and one multi-row insert for the batch, each request answered in arrival
// order as if it had been served alone.
import { assert } from './assert.js'
import { ProductBatches } from './batcher.js'
import { addMs, type Clock } from './clock.js'
import { DomainError } from './errors.js'
import { emitAll, type DomainEvent, type Observer } from './events.js'
import { assertSameFingerprint, claimKey, fingerprintOf, InFlightKeys } from './idempotency.js'
import { isProductId, isResourceId, newHoldIds } from './ids.js'
import { ProductLedger } from './ledger.js'
import { expireLapsed, settleWaitingPayments, reclaimBatchMax, type SettleContext } from './settle.js'
import { effectiveStatus } from './status.js'
import type { Hold, IdempotencyRecord, Store } from './store.js'

export interface HoldSettings {
  holdTtlMs: number
  idempotencyTtlMs: number
  holdBatchMax: number
}

export interface HoldRequest {
  productId: number
  qty: number
  idempotencyKey: string | null
}

export interface HoldAnswer {
  hold: Hold
  replayed: boolean
}

// Each outcome carries its own event, emitted in its request's context (so its log line has
// that request's id), not in the batch leader's.
type Outcome = { ok: true; hold: Hold; event?: DomainEvent } | { ok: false; error: DomainError; event?: DomainEvent } | { ok: 'key_taken' }

interface Waiter {
  request: HoldRequest
  fingerprint: string
  resolve: (outcome: Outcome) => void
  reject: (error: unknown) => void
}

export class Holds {
  private readonly batches: ProductBatches<Waiter>
  private readonly inFlight = new InFlightKeys()

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly observer: Observer,
    private readonly settings: HoldSettings,
  ) {
    this.batches = new ProductBatches(settings.holdBatchMax, (productId, batch) => this.serveBatch(productId, batch))
  }

  async create(request: HoldRequest): Promise<HoldAnswer> {
    try {
      return await this.createKnown(request)
    } catch (error) {
      // Refusals decided in the batch carry their own event; an unknown product is found before.
      if (error instanceof DomainError && error.code === 'product_not_found') {
        this.observer.emit({ name: 'hold.rejected', productId: request.productId, qty: request.qty, reason: error.code })
      }
      throw error
    }
  }

  private async createKnown(request: HoldRequest): Promise<HoldAnswer> {
    if (!isProductId(request.productId)) throw new DomainError('product_not_found')
    const key = request.idempotencyKey
    if (key === null) return this.enqueue(request, '')
    const fingerprint = fingerprintOf(['holds', request.productId, request.qty])
    // A duplicate that waited for the first is answered from what the first stored; if the
    // first changed nothing (a 4xx), the key is free again and the duplicate runs afresh.
    const attemptsMax = 3
    for (let attempt = 1; attempt <= attemptsMax; attempt++) {
      const replay = await this.replay(key, fingerprint)
      if (replay) return replay
      const run = await this.inFlight.run(`holds:${key}`, () => this.enqueue(request, fingerprint))
      if (!run.waited) return run.value as HoldAnswer
    }
    throw new DomainError('idempotency_key_in_flight')
  }

  async get(holdId: string): Promise<Hold> {
    const hold = isResourceId(holdId) ? await this.store.getHold(holdId) : undefined
    if (!hold) throw new DomainError('hold_not_found')
    return hold
  }

  // Releases an active hold early. Releasing a released hold again changes nothing (200).
  async release(holdId: string): Promise<Hold> {
    const known = await this.get(holdId)
    const now = this.clock.now()
    const { hold, events } = await this.store.transaction({ label: 'holds.release' }, async (tx) => {
      const events: DomainEvent[] = []
      const product = await tx.lockProduct(known.productId)
      assert(product !== undefined, 'a hold names an existing product')
      const hold = await tx.getHold(holdId)
      assert(hold !== undefined, 'holds are never deleted')
      if (hold.status === 'released') return { hold, events }
      if (hold.status === 'converted') {
        const order = await tx.getOrderByHold(holdId)
        throw new DomainError('hold_already_used', { order_id: order?.id ?? null })
      }
      if (effectiveStatus(hold, now) === 'expired') throw new DomainError('hold_expired')
      const ledger = new ProductLedger(product)
      const moved = await tx.setHoldsStatus([holdId], 'active', 'released', now)
      assert(moved === 1, 'an active hold read under the product lock can be released')
      ledger.release(hold.qty)
      events.push({ name: 'hold.released', holdId, productId: hold.productId, qty: hold.qty })
      const released: Hold = { ...hold, status: 'released' }
      const ctx: SettleContext = { tx, ledger, now, events, reclaimBatchMax }
      // A payment stored for this hold is now a late payment (SPEC §3, webhook before the order).
      await settleWaitingPayments(ctx, [released])
      await ledger.flush(tx)
      return { hold: released, events }
    })
    emitAll(this.observer, events)
    return hold
  }

  // Resolves when every queued hold request has been answered (graceful shutdown).
  async drain(): Promise<void> {
    await this.batches.drain()
  }

  private async replay(key: string, fingerprint: string): Promise<HoldAnswer | undefined> {
    const record = await this.store.getIdempotencyRecord('holds', key)
    if (!record || record.expiresAt.getTime() <= this.clock.now().getTime()) return undefined
    return answerFromRecord(record, fingerprint)
  }

  private async enqueue(request: HoldRequest, fingerprint: string): Promise<HoldAnswer> {
    const outcome = await new Promise<Outcome>((resolve, reject) => this.batches.add(request.productId, { request, fingerprint, resolve, reject }))
    if (outcome.ok !== 'key_taken' && outcome.event) this.observer.emit(outcome.event)
    if (outcome.ok === true) return { hold: outcome.hold, replayed: false }
    if (outcome.ok === false) throw outcome.error
    // Another process committed this key first: answer what it stored.
    const key = request.idempotencyKey
    assert(key !== null, 'only keyed requests can find their key taken')
    const record = await this.store.getIdempotencyRecord('holds', key)
    if (!record) throw new DomainError('idempotency_key_in_flight')
    return answerFromRecord(record, fingerprint)
  }

  private async serveBatch(productId: number, batch: Waiter[]): Promise<void> {
    const now = this.clock.now()
    const expiresAt = addMs(now, this.settings.holdTtlMs)
    // Ids are made before the transaction so a retried attempt inserts the same holds.
    const holdIds = newHoldIds(batch.length, now)
    const candidates: Hold[] = batch.map((waiter, index) => ({
      id: holdIds[index]!,
      productId,
      qty: waiter.request.qty,
      status: 'active',
      expiresAt,
      createdAt: now,
    }))
    let result: { outcomes: Outcome[]; events: DomainEvent[] }
    try {
      result = await this.store.transaction({ label: 'holds.create' }, async (tx) => {
        const events: DomainEvent[] = []
        const product = await tx.lockProduct(productId)
        if (!product) return { outcomes: batch.map(() => ({ ok: false as const, error: new DomainError('product_not_found') })), events }
        const ledger = new ProductLedger(product)
        const outcomes: Array<Outcome | undefined> = batch.map(() => undefined)
        for (const [index, waiter] of batch.entries()) {
          const key = waiter.request.idempotencyKey
          if (key === null) continue
          if (!(await claimKey(tx, 'holds', key, waiter.fingerprint, now, this.settings.idempotencyTtlMs))) outcomes[index] = { ok: 'key_taken' }
        }
        const wantedQty = batch.reduce((sum, waiter, index) => sum + (outcomes[index] ? 0 : waiter.request.qty), 0)
        // Reclaim this product's lapsed holds before refusing anyone: the sweeper may lag by up
        // to SWEEP_INTERVAL_MS, and no buyer should be refused units only expired holds keep.
        if (wantedQty > ledger.available()) {
          const ctx: SettleContext = { tx, ledger, now, events, reclaimBatchMax }
          await expireLapsed(ctx, reclaimBatchMax)
        }
        events.push({ name: 'hold.batch', productId, size: batch.length })
        const granted: Hold[] = []
        for (const [index, waiter] of batch.entries()) {
          if (outcomes[index]) continue
          const hold = candidates[index]
          assert(hold !== undefined, 'one candidate hold per request')
          const { qty } = waiter.request
          if (qty <= ledger.available()) {
            ledger.reserve(qty)
            granted.push(hold)
            outcomes[index] = { ok: true, hold, event: { name: 'hold.created', holdId: hold.id, productId, qty } }
          } else {
            const availableStock = ledger.available()
            outcomes[index] = {
              ok: false,
              error: new DomainError('insufficient_stock', { available_stock: availableStock }),
              event: { name: 'hold.rejected', productId, qty, reason: 'insufficient_stock', availableStock },
            }
          }
        }
        await ledger.flush(tx)
        if (granted.length > 0) await tx.insertHolds(granted)
        for (const [index, waiter] of batch.entries()) {
          const key = waiter.request.idempotencyKey
          const outcome = outcomes[index]
          if (key === null || outcome === undefined || outcome.ok === 'key_taken') continue
          // Only answers that changed something use up the key (SPEC §3).
          if (outcome.ok) await tx.completeIdempotencyKey('holds', key, JSON.stringify(outcome.hold))
          else await tx.releaseIdempotencyKey('holds', key)
        }
        return { outcomes: outcomes.map((outcome) => outcome ?? { ok: false as const, error: new DomainError('internal_error') }), events }
      })
    } catch (error) {
      // The batch did not commit: every request in it fails alike and none was answered yet.
      for (const waiter of batch) waiter.reject(error)
      return
    }
    emitAll(this.observer, result.events)
    for (const [index, waiter] of batch.entries()) {
      const outcome = result.outcomes[index]
      assert(outcome !== undefined, 'one outcome per request')
      waiter.resolve(outcome)
    }
  }
}

function answerFromRecord(record: IdempotencyRecord, fingerprint: string): HoldAnswer {
  assertSameFingerprint(record.fingerprint, fingerprint)
  if (record.state === 'claimed') throw new DomainError('idempotency_key_in_flight')
  return { hold: reviveHold(record.responseJson), replayed: true }
}

function reviveHold(json: string): Hold {
  const raw = JSON.parse(json) as Omit<Hold, 'expiresAt' | 'createdAt'> & { expiresAt: string; createdAt: string }
  return { ...raw, expiresAt: new Date(raw.expiresAt), createdAt: new Date(raw.createdAt) }
}
