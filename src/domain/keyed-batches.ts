// The one shape of batched, keyed requests (holds, orders): requests for one product queue
// while a transaction for it is in flight and are served together by the next one (group
// commit). Under the product lock the use case judges the requests whose key holds no live
// answer in arrival order, the answers that changed something are stored with their keys in one
// insert (holds keep theirs in their own rows, written by the insert of the holds), and nobody is
// answered before the commit. The batch's keys are read at once first, or (the usual case,
// KeyReadPolicy) not at all until that insert finds one already stored (serveLocked).
import { assert } from './assert.js'
import { ProductBatches, type QueueLimits } from './batcher.js'
import { addMs, type Clock } from './clock.js'
import { DomainError } from './errors.js'
import { batchLog, type DomainEvent, type EventLog, type EventName, type Observer } from './events.js'
import { assertSameFingerprint, InFlightKeys } from './idempotency.js'
import { withLockedProduct } from './locked-product.js'
import type { SettleContext } from './settle.js'
import { StoredKeyConflict, type IdempotencyAnswer, type IdempotencyRecord, type IdempotencyScope, type RowKey, type Store, type StoreTx } from './store.js'

// Every structure a keyed request can grow is bounded: its product's queue, the number of
// queues, and the keys in flight.
export interface KeyedBatchLimits extends QueueLimits {
  inFlightKeysMax: number
}

export interface KeyedRequest {
  idempotencyKey: string | null
}

// What the use case decided for one request. Its events are emitted in that request's own
// context (so their log lines carry its request id), after the commit.
export type Verdict<A> = { ok: true; answer: A; events: DomainEvent[] } | { ok: false; error: DomainError; events: DomainEvent[] }

// Where a use case whose granted answers are rows of its own (holds) keeps its keys: in those
// rows, written by `serve` with them (it gets each served request's key), read back as records.
// Without it, keys are rows of idempotency_keys that the batch writes itself.
export interface KeysInRows {
  // Every stored record of these keys, expired ones included, in one statement.
  read(tx: StoreTx, keys: readonly string[]): Promise<IdempotencyRecord[]>
  // Frees the keys among these that have expired by `now`, in one statement.
  free(tx: StoreTx, keys: readonly string[], now: Date): Promise<void>
  get(store: Store, key: string): Promise<IdempotencyRecord | undefined>
}

export interface KeyedUseCase<R extends KeyedRequest, A> {
  readonly scope: IdempotencyScope
  // Names the transaction in tx.retry logs and metrics.
  readonly label: string
  readonly batchMax: number
  readonly idempotencyTtlMs: number
  // Records each batch's size (a metric, not a log line).
  readonly batchEvent: EventName
  // The meaning of a request, stored with its key (a reuse for another request is 422).
  fingerprint(request: R): string
  // Under the product lock: judges `requests` (those that hold their key or carry none) in
  // arrival order and writes what they change; one verdict per request, in the same order. With
  // `anticipated` (one per request), a request granted gets exactly that answer. With
  // `keysInRows`, `rowKeys` (one per request, null for none) are to be written with the rows of
  // the granted answers.
  serve(ctx: SettleContext, requests: readonly R[], anticipated?: readonly A[], rowKeys?: readonly (RowKey | null)[]): Promise<Verdict<A>[]>
  readonly keysInRows?: KeysInRows
  // The answer each request gets if it is granted, where it is known before judging (a hold's
  // id, times and units are): then the batch reads its keys, when it reads them first, before
  // taking the product lock, and every attempt of the batch grants the same answers.
  anticipate?(requests: readonly R[], now: Date): A[]
  // The answer a completed key stores, and the answer a replay gives from it.
  encode(answer: A): string
  decode(json: string): A
  // Refusals found before the batch (an unknown product or hold): a keyed request refused so
  // first checks whether its key already holds an answer (a replay, or 422 for another request).
  readonly refusedBeforeBatch: readonly string[]
}

export interface KeyedAnswer<A> {
  answer: A
  replayed: boolean
}

type Outcome<A> = Verdict<A> | { ok: 'replay'; record: IdempotencyRecord }

interface Waiter<R, A> {
  request: R
  // The request's fingerprint, computed once when it arrives (null without a key).
  fingerprint: string | null
  log: EventLog | undefined
  resolve: (outcome: Outcome<A>) => void
  reject: (error: unknown) => void
}

// A duplicate in this process waits for the first request with its key. If the first was
// answered, its key now holds that answer: the duplicate replays it (or is refused 422 for
// another request) without a statement. If the first was refused (its key released) or failed,
// the duplicate runs again. Past this many waits it is told the key is still in flight.
const duplicateWaitsMax = 3

// A batch whose keys were stored already runs at most this many times (a first attempt that
// did not read them, then attempts that do, each of which another process can race once more).
const storedKeyAttemptsMax = 4
// After a batch met a stored key (a client's retry), this many batches read their keys first.
export const readFirstBatchesAfterStoredKey = 64

// Whether a batch reads its keys before serving. Almost every key of a drop is new, so a batch
// stores its answers without reading: one statement less inside the product lock, and 15-20%
// less database CPU per keyed hold on MariaDB and PostgreSQL (94-105 -> 80-92 µs in alternating
// bench runs). The insert fails if a key was stored, and the batch runs again reading first.
// Where retries with stored keys come in (a client timing out, a replay storm), each would cost
// its batch a second transaction, so after one the next batches read first.
class KeyReadPolicy {
  private readFirstBatchesLeft = 0

  readFirst(): boolean {
    if (this.readFirstBatchesLeft === 0) return false
    this.readFirstBatchesLeft--
    return true
  }

  storedKeysMet(): void {
    this.readFirstBatchesLeft = readFirstBatchesAfterStoredKey
  }
}

// A hold batch reading first met expired rows of its keys (keys reused after their TTL).
class ExpiredKeysMet extends Error {
  constructor(readonly keys: readonly string[]) {
    super(`${keys.length} expired idempotency keys to free first`)
  }
}

// How many times a batch frees expired key rows before it runs (each time, only rows that
// expired by the batch's instant; a row stored since is live, so once is the rule).
export const expiredKeyFreesMax = 2

export class KeyedBatches<R extends KeyedRequest, A> {
  private readonly batches: ProductBatches<Waiter<R, A>>
  // Keys of this use case's scope only, so a key is tracked as it is.
  private readonly inFlight: InFlightKeys<KeyedAnswer<A>>
  private readonly keyReads = new KeyReadPolicy()

  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly observer: Observer,
    private readonly useCase: KeyedUseCase<R, A>,
    limits: KeyedBatchLimits,
  ) {
    this.inFlight = new InFlightKeys(limits.inFlightKeysMax)
    this.batches = new ProductBatches(useCase.batchMax, limits, useCase.label, (productId, batch, queuedSinceMs) => this.serveBatch(productId, batch, queuedSinceMs))
  }

  // `productId` names the lock (and the queue) the request needs; its events go to `log`.
  async submit(productId: number, request: R, log?: EventLog): Promise<KeyedAnswer<A>> {
    const key = request.idempotencyKey
    if (key === null) return this.enqueue(productId, request, null, log)
    const fingerprint = this.useCase.fingerprint(request)
    for (let wait = 0; wait <= duplicateWaitsMax; wait++) {
      const earlier = this.inFlight.runOf(key)
      if (earlier === undefined) return this.inFlight.start(key, fingerprint, () => this.enqueue(productId, request, fingerprint, log))
      const answered = await earlier.promise.catch(() => undefined)
      if (answered) {
        assertSameFingerprint(earlier.fingerprint, fingerprint)
        return { answer: answered.answer, replayed: true }
      }
    }
    throw new DomainError('idempotency_key_in_flight')
  }

  // A keyed request refused before it could join a batch may still be a replay of a live key.
  async refuse(request: R, error: DomainError): Promise<KeyedAnswer<A>> {
    const key = request.idempotencyKey
    if (key === null || !this.useCase.refusedBeforeBatch.includes(error.code)) throw error
    const { keysInRows, scope } = this.useCase
    const record = keysInRows ? await keysInRows.get(this.store, key) : await this.store.getIdempotencyRecord(scope, key)
    if (!record || record.expiresAt.getTime() <= this.clock.now().getTime()) throw error
    return this.fromRecord(this.useCase.fingerprint(request), record)
  }

  // Resolves when every queued request has been answered (graceful shutdown).
  async drain(): Promise<void> {
    await this.batches.drain()
  }

  private async enqueue(productId: number, request: R, fingerprint: string | null, log: EventLog | undefined): Promise<KeyedAnswer<A>> {
    const outcome = await new Promise<Outcome<A>>((resolve, reject) => this.batches.add(productId, { request, fingerprint, log, resolve, reject }))
    if (outcome.ok === 'replay') {
      assert(fingerprint !== null, 'a replay is found for a keyed request only')
      return this.fromRecord(fingerprint, outcome.record)
    }
    for (const event of outcome.events) this.observer.emit(event, log)
    if (outcome.ok) return { answer: outcome.answer, replayed: false }
    throw outcome.error
  }

  private fromRecord(fingerprint: string, record: IdempotencyRecord): KeyedAnswer<A> {
    assertSameFingerprint(record.fingerprint, fingerprint)
    if (record.state === 'claimed') throw new DomainError('idempotency_key_in_flight')
    return { answer: this.useCase.decode(record.responseJson), replayed: true }
  }

  private async serveBatch(productId: number, batch: Array<Waiter<R, A>>, queuedSinceMs: number): Promise<void> {
    const now = this.clock.now()
    const keys = batch.flatMap(({ request }) => (request.idempotencyKey === null ? [] : [request.idempotencyKey]))
    assert(new Set(keys).size === keys.length, 'a key is in one request of a batch at most (InFlightKeys)')
    let readFirst = keys.length > 0 && this.keyReads.readFirst()
    // Set once an attempt that read its keys failed on one stored since: the next read under the lock.
    let readUnderLock = false
    // Fixed once for the batch, so every attempt stores and grants the same answers.
    const anticipated =
      keys.length > 0
        ? this.useCase.anticipate?.(
            batch.map((waiter) => waiter.request),
            now,
          )
        : undefined
    let outcomes: Array<Outcome<A>> | undefined
    let expiredFreesLeft = expiredKeyFreesMax
    const log = batchLog(batch.map((waiter) => waiter.log))
    for (let attempt = 1; outcomes === undefined; attempt++) {
      try {
        outcomes = await this.serveLocked(productId, batch, keys, { readFirst, readUnderLock }, { now, log, queuedSinceMs }, anticipated)
      } catch (caught) {
        let error = caught
        // Keys reused after their TTL: their expired rows go in a short transaction holding no
        // other lock, and the batch runs again (reading first, so it sees what is there now).
        if (error instanceof ExpiredKeysMet && expiredFreesLeft > 0) {
          expiredFreesLeft--
          const { label } = this.useCase
          const expiredKeys = error.keys
          try {
            await this.store.transaction({ label: `${label}.keys`, log, queuedSinceMs }, (tx) => this.freeKeys(tx, expiredKeys, now))
            this.observer.emit({ name: 'keys.rerun', label, cause: 'expired_keys_freed' }, log)
            attempt--
            continue
          } catch (freeError) {
            error = freeError
          }
        }
        // A key of the batch was stored already: nothing was written; run it again reading the
        // keys first, which finds that answer and replays it. If this attempt read them already
        // (before the product lock), another process stored one while it waited on the lock: the
        // next attempts read under the lock, when every batch of the product that stored one has
        // committed. Reading before the lock every time, with reused and new keys sent to three
        // processes at once under load, batches failed three attempts in a row, and one all four
        // (503 busy in CI).
        if (error instanceof StoredKeyConflict && attempt < storedKeyAttemptsMax) {
          // Counted apart: one that had read its keys met a key stored while it waited on the lock.
          this.observer.emit({ name: 'keys.rerun', label: this.useCase.label, cause: readFirst ? 'key_stored_meanwhile' : 'key_stored' }, log)
          if (readFirst) readUnderLock = true
          readFirst = true
          continue
        }
        // The batch did not commit: every request in it fails alike and none was answered yet.
        let failure = error
        if (error instanceof StoredKeyConflict || error instanceof ExpiredKeysMet) {
          // Raced by other processes storing its keys every time: as the store does when its
          // retries of a transient conflict run out.
          this.observer.emit({ name: 'tx.busy', label: this.useCase.label, attempts: attempt }, log)
          failure = new DomainError('busy', { retry_after_s: 1 }, error.message)
        }
        for (const waiter of batch) waiter.reject(failure)
        return
      }
    }
    for (const [index, waiter] of batch.entries()) waiter.resolve(outcomes[index]!)
  }

  private readKeys(tx: StoreTx, keys: readonly string[]): Promise<IdempotencyRecord[]> {
    const { keysInRows, scope } = this.useCase
    return keysInRows ? keysInRows.read(tx, keys) : tx.readIdempotencyKeys(scope, keys)
  }

  private freeKeys(tx: StoreTx, keys: readonly string[], now: Date): Promise<void> {
    const { keysInRows, scope } = this.useCase
    return keysInRows ? keysInRows.free(tx, keys, now) : tx.freeExpiredIdempotencyKeys(scope, keys, now)
  }

  // One transaction for the batch. Without `readFirst` its keys are not read before serving: the
  // insert of the answers fails (StoredKeyConflict) if one of them was stored already, and so
  // does the read of the refused requests' keys after serving. With it, a use case that
  // anticipates its answers reads them before the product lock, unless `readUnderLock`.
  //
  // Holds keep their keys in their own rows (migration 0010), written by the batch's one insert
  // of holds: a keyed hold costs no statement and no row more than a plain one, only the key's
  // index entry. Before, each key was a row of idempotency_keys with two index entries, inserted
  // (sorted) before the product lock with the answer anticipated for it, and deleted again when
  // its request was refused: the database spent 12-45 µs more CPU a keyed hold than a plain one
  // on PostgreSQL and MariaDB, against 0-9 µs with the key in the row (alternating bench runs).
  // A batch takes no key row before the product lock now, so two batches carrying the same new
  // key meet only at the unique index of the insert, under their products' locks: one commits,
  // the other fails and runs again reading first, which replays the first's answer (or is 422
  // for another request). A batch reading first that finds expired keys of its own (keys reused
  // after their TTL) stops, frees them in a transaction of its own and runs again (serveBatch);
  // the read itself stays in the batch's transaction: read in one of its own, the keys stored by
  // other processes in between failed the batch's insert often enough, with a burst of reused
  // keys sent to three processes, to use up its attempts (503 busy).
  private async serveLocked(
    productId: number,
    batch: Array<Waiter<R, A>>,
    keys: readonly string[],
    { readFirst, readUnderLock }: { readFirst: boolean; readUnderLock: boolean },
    { now, log, queuedSinceMs }: { now: Date; log: EventLog | undefined; queuedSinceMs: number },
    anticipated: readonly A[] | undefined,
  ): Promise<Array<Outcome<A>>> {
    const { useCase } = this
    const expiresAt = addMs(now, useCase.idempotencyTtlMs)
    // Keys that hold a live answer (found only when reading first): their requests replay it.
    let losers = new Map<string, IdempotencyRecord>()
    const readStoredKeys = async (tx: StoreTx): Promise<void> => {
      const stored = await this.readKeys(tx, keys)
      const expired = stored.filter((record) => record.expiresAt.getTime() <= now.getTime())
      // Found by a use case that anticipates its answers (holds), read before the product lock
      // or under it, expired keys are freed in a transaction of their own, and the batch runs
      // again: a reused key's old hold may be another product's, whose rows this batch must not
      // lock out of order.
      if (expired.length > 0 && anticipated) throw new ExpiredKeysMet(expired.map((record) => record.key))
      // The insert must not meet an expired row of a key it now uses.
      if (expired.length > 0) {
        await this.freeKeys(
          tx,
          expired.map((record) => record.key),
          now,
        )
      }
      losers = new Map(stored.filter((record) => !expired.includes(record)).map((record) => [record.key, record]))
      // Only live answers tell of retries coming in; a key reused after its TTL does not.
      if (losers.size > 0) this.keyReads.storedKeysMet()
    }
    // A use case that anticipates its answers (holds) reads its keys, when it reads them first,
    // before the product lock: the read then runs while other processes hold the lock.
    const readsBeforeLock = readFirst && anticipated !== undefined && !readUnderLock
    const beforeLock = anticipated
      ? async (tx: StoreTx): Promise<void> => {
          losers = new Map()
          if (readsBeforeLock) await readStoredKeys(tx)
        }
      : undefined
    return withLockedProduct(
      this.store,
      this.observer,
      { label: useCase.label, productId, now, log, queuedSinceMs },
      async (ctx) => {
        if (!anticipated) losers = new Map()
        if (readFirst && !readsBeforeLock) await readStoredKeys(ctx.tx)
        const lost = (waiter: Waiter<R, A>): IdempotencyRecord | undefined => (waiter.request.idempotencyKey === null ? undefined : losers.get(waiter.request.idempotencyKey))
        const servedIndexes: number[] = []
        for (const [index, waiter] of batch.entries()) if (lost(waiter) === undefined) servedIndexes.push(index)
        const served = servedIndexes.map((index) => batch[index]!)
        const rowKeys =
          useCase.keysInRows &&
          served.map(({ request: { idempotencyKey: key }, fingerprint }): RowKey | null => {
            if (key === null) return null
            assert(fingerprint !== null, 'a keyed request carries its fingerprint')
            return { key, fingerprint }
          })
        const verdicts = await useCase.serve(
          ctx,
          served.map((waiter) => waiter.request),
          anticipated && servedIndexes.map((index) => anticipated[index]!),
          rowKeys,
        )
        assert(verdicts.length === served.length, 'one verdict per request served')
        const verdictOf = new Map(served.map((waiter, index) => [waiter, verdicts[index]!]))
        // Keys of refused requests not read under the lock: no insert would meet them, so they are
        // read here (one statement, only when a keyed request was refused). One that holds a live
        // answer is a retry owed that answer (a client's retry after the stock ran out still gets
        // its hold), but judging it may have changed something on the way (lapsed holds reclaimed
        // to make room), and a replay changes nothing: the batch runs again reading its keys
        // first. Keys read before the lock (`anticipated`) are read again: another process may
        // have stored one and taken the last units in between (a test sending every key to three
        // processes got a hold and a 409 for one key). Keys read under the lock are not: a batch
        // of this product storing one has committed before it, and a key stored for another
        // product is another request's (422 if it is sent here again).
        if (!readFirst || readsBeforeLock) {
          const refusedKeys: string[] = []
          for (const [waiter, verdict] of verdictOf) if (!verdict.ok && waiter.request.idempotencyKey !== null) refusedKeys.push(waiter.request.idempotencyKey)
          const answered = refusedKeys.length === 0 ? [] : await this.readKeys(ctx.tx, refusedKeys)
          if (answered.some((record) => record.expiresAt.getTime() > now.getTime())) throw new StoredKeyConflict(useCase.scope)
        }
        // Only answers that changed something use up the key (SPEC §3): a refused request's key
        // is never written. A key stored since the read above (another process), or not read,
        // fails the insert with StoredKeyConflict and serveBatch runs the batch again. Keys
        // kept in rows were written by serve with the granted answers' rows, and fail so too.
        if (!useCase.keysInRows) {
          const answers: IdempotencyAnswer[] = []
          for (const [waiter, verdict] of verdictOf) {
            const key = waiter.request.idempotencyKey
            if (key === null || !verdict.ok) continue
            assert(waiter.fingerprint !== null, 'a keyed request carries its fingerprint')
            answers.push({ key, fingerprint: waiter.fingerprint, responseJson: useCase.encode(verdict.answer) })
          }
          await ctx.tx.insertIdempotencyKeys(useCase.scope, answers, now, expiresAt)
        }
        ctx.events.push({ name: useCase.batchEvent, productId, size: batch.length })
        return batch.map((waiter): Outcome<A> => {
          const record = lost(waiter)
          return record ? { ok: 'replay', record } : verdictOf.get(waiter)!
        })
      },
      beforeLock,
    )
  }
}
