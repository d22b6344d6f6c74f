// Holds: short-lived reservations, group-committed per product (keyed-batches.ts): one product
// row lock, one counts update and one multi-row insert for the batch, each request answered in
// arrival order as if it had been served alone.
import { assert } from './assert.js'
import { addMs, type Clock } from './clock.js'
import { DomainError } from './errors.js'
import type { Observer } from './events.js'
import { fingerprintOf } from './idempotency.js'
import { isProductId, isResourceId, newHoldIds } from './ids.js'
import { KeyedBatches, type KeyedBatchLimits, type KeyedUseCase, type Verdict } from './keyed-batches.js'
import type { ProductLedger } from './ledger.js'
import { withLockedProduct } from './locked-product.js'
import { expireLapsed, settleWaitingPayments, type SettleContext } from './settle.js'
import { effectiveStatus } from './status.js'
import type { Hold, Store } from './store.js'

export interface HoldSettings extends KeyedBatchLimits {
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

// Judges a batch of hold requests in arrival order against the locked product's ledger, as if
// each came alone: a request gets its units if they are available at its turn. Pure (no I/O), so
// it is tested without a database. A new rule for holds (a per-buyer limit, a sale window) is one
// more check in this loop, before the units are reserved.
export function judgeHolds(ledger: ProductLedger, requests: readonly HoldRequest[], candidates: readonly Hold[]): Array<Verdict<Hold>> {
  return requests.map((request, index) => {
    const { productId, qty } = request
    const availableStock = ledger.available()
    if (qty > availableStock) {
      return {
        ok: false,
        error: new DomainError('insufficient_stock', { available_stock: availableStock }),
        events: [{ name: 'hold.rejected', productId, qty, reason: 'insufficient_stock', availableStock }],
      }
    }
    const hold = candidates[index]
    assert(hold !== undefined, 'one candidate hold per request')
    ledger.reserve(qty)
    return { ok: true, answer: hold, events: [{ name: 'hold.created', holdId: hold.id, productId, qty }] }
  })
}

export class Holds {
  private readonly batches: KeyedBatches<HoldRequest, Hold>

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly observer: Observer,
    private readonly settings: HoldSettings,
  ) {
    const useCase: KeyedUseCase<HoldRequest, Hold> = {
      scope: 'holds',
      label: 'holds.create',
      batchMax: settings.holdBatchMax,
      idempotencyTtlMs: settings.idempotencyTtlMs,
      batchEvent: 'hold.batch',
      refusedBeforeBatch: ['product_not_found'],
      fingerprint: (request) => fingerprintOf(['holds', request.productId, request.qty]),
      serve: (ctx, requests) => this.serve(ctx, requests),
      encode: (hold) => JSON.stringify(hold),
      decode: reviveHold,
    }
    this.batches = new KeyedBatches(store, clock, observer, useCase, settings)
  }

  async create(request: HoldRequest): Promise<HoldAnswer> {
    try {
      if (!isProductId(request.productId)) throw new DomainError('product_not_found')
      const { answer, replayed } = await this.batches.submit(request.productId, request).catch((error: unknown) => {
        if (error instanceof DomainError) return this.batches.refuse(request, error)
        throw error
      })
      return { hold: answer, replayed }
    } catch (error) {
      // Refusals decided in the batch carry their own event; an unknown product is found before.
      if (error instanceof DomainError && error.code === 'product_not_found') {
        this.observer.emit({ name: 'hold.rejected', productId: request.productId, qty: request.qty, reason: error.code })
      }
      throw error
    }
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
    return withLockedProduct(this.store, this.observer, { label: 'holds.release', productId: known.productId, now }, async (ctx) => {
      const { tx, ledger, events } = ctx
      const hold = await tx.getHold(holdId)
      assert(hold !== undefined, 'holds are never deleted')
      if (hold.status === 'released') return hold
      if (hold.status === 'converted') {
        const order = await tx.getOrderByHold(holdId)
        throw new DomainError('hold_already_used', { order_id: order?.id ?? null })
      }
      if (effectiveStatus(hold, now) === 'expired') throw new DomainError('hold_expired')
      const moved = await tx.setHoldsStatus([holdId], 'active', 'released', now)
      assert(moved === 1, 'an active hold read under the product lock can be released')
      ledger.release(hold.qty)
      events.push({ name: 'hold.released', holdId, productId: hold.productId, qty: hold.qty })
      const released: Hold = { ...hold, status: 'released' }
      // A payment stored for this hold is now a late payment (SPEC §3, webhook before the order).
      await settleWaitingPayments(ctx, [released])
      return released
    })
  }

  // Resolves when every queued hold request has been answered (graceful shutdown).
  async drain(): Promise<void> {
    await this.batches.drain()
  }

  private async serve(ctx: SettleContext, requests: readonly HoldRequest[]): Promise<Array<Verdict<Hold>>> {
    const { tx, ledger, now } = ctx
    const expiresAt = addMs(now, this.settings.holdTtlMs)
    const holdIds = newHoldIds(requests.length, now)
    const candidates: Hold[] = requests.map((request, index) => ({
      id: holdIds[index]!,
      productId: ledger.productId,
      qty: request.qty,
      status: 'active',
      expiresAt,
      createdAt: now,
    }))
    const wantedQty = requests.reduce((sum, request) => sum + request.qty, 0)
    // Reclaim this product's lapsed holds before refusing anyone: the sweeper may lag by up to
    // SWEEP_INTERVAL_MS, and no buyer should be refused units only expired holds keep.
    if (wantedQty > ledger.available()) await expireLapsed(ctx, ctx.reclaimBatchMax)
    const verdicts = judgeHolds(ledger, requests, candidates)
    const granted = verdicts.flatMap((verdict) => (verdict.ok ? [verdict.answer] : []))
    if (granted.length > 0) await tx.insertHolds(granted)
    return verdicts
  }
}

function reviveHold(json: string): Hold {
  const raw = JSON.parse(json) as Omit<Hold, 'expiresAt' | 'createdAt'> & { expiresAt: string; createdAt: string }
  return { ...raw, expiresAt: new Date(raw.expiresAt), createdAt: new Date(raw.createdAt) }
}

