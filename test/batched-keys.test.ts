// Proves that a batch of keyed requests costs a constant number of store statements (the keys are
// read, stored and replayed a batch at a time, never one statement each), by counting the
// calls a batch makes on its transaction through a counting store; and that the judging step of
// a hold batch is a pure function of the ledger and the requests.
import { describe, expect, it } from 'vitest'
import { DomainError } from '../src/domain/errors.js'
import type { DomainEvent } from '../src/domain/events.js'
import { Holds, judgeHolds, type HoldAnswer, type HoldRequest } from '../src/domain/holds.js'
import { expiredKeyFreesMax, readFirstBatchesAfterStoredKey } from '../src/domain/keyed-batches.js'
import { Payments } from '../src/domain/payments.js'
import { ProductLedger } from '../src/domain/ledger.js'
import type { Hold, Store, StoreTx } from '../src/domain/store.js'
import { emptyLine, noDropSettings } from '../src/domain/store.js'
import { statusByCode } from '../src/http/problem.js'
import { buildTestApp } from './helpers/app.js'
import { testEngines } from './helpers/engines.js'

// The store's calls, one list of method names per transaction, in order.
function countingStore(store: Store): { store: Store; transactions: Array<{ label: string; calls: string[] }> } {
  const transactions: Array<{ label: string; calls: string[] }> = []
  const counting = new Proxy(store, {
    get(target, property, receiver) {
      if (property !== 'transaction') return Reflect.get(target, property, receiver)
      return (options: { label: string }, fn: (tx: StoreTx) => Promise<unknown>) =>
        target.transaction(options, (tx) => {
          const record = { label: options.label, calls: [] as string[] }
          transactions.push(record)
          const countingTx = new Proxy(tx, {
            get(txTarget, name, txReceiver) {
              const value = Reflect.get(txTarget, name, txReceiver) as unknown
              if (typeof value !== 'function') return value
              return (...args: unknown[]) => {
                record.calls.push(String(name))
                return (value as (...a: unknown[]) => unknown).apply(txTarget, args)
              }
            },
          })
          return fn(countingTx)
        })
    },
  })
  return { store: counting, transactions }
}

// The calls of a hold batch that read, free or write its keys: holds keep their keys in their
// own rows, so the one call that writes them is the insert of the holds.
const holdKeyCalls = (calls: readonly string[]): string[] => calls.filter((name) => name === 'readHoldKeys' || name === 'freeHoldKeys' || name === 'insertHolds')

// A store whose first `missedReads` reads of hold keys find nothing, as if another
// process stored them a moment after each read (with `beforeLockOnly`, only reads made before
// the transaction locks its product count); the store's calls, one list per transaction.
function racingStore(store: Store, missedReads: number, { beforeLockOnly = false } = {}): { store: Store; transactions: string[][] } {
  let reads = 0
  const transactions: string[][] = []
  const racing = new Proxy(store, {
    get(target, property, receiver) {
      if (property !== 'transaction') return Reflect.get(target, property, receiver)
      return (options: { label: string }, fn: (tx: StoreTx) => Promise<unknown>) =>
        target.transaction(options, (tx) => {
          const calls: string[] = []
          transactions.push(calls)
          return fn(
            new Proxy(tx, {
              get(txTarget, name, txReceiver) {
                const value = Reflect.get(txTarget, name, txReceiver) as unknown
                if (typeof value !== 'function') return value
                return (...args: unknown[]) => {
                  calls.push(String(name))
                  const missable = name === 'readHoldKeys' && !(beforeLockOnly && calls.includes('lockProduct'))
                  if (missable && reads++ < missedReads) return Promise.resolve([])
                  return (value as (...a: unknown[]) => unknown).apply(txTarget, args)
                }
              },
            }),
          )
        })
    },
  })
  return { store: racing, transactions }
}

const settings = { holdTtlMs: 120_000, idempotencyTtlMs: 3_600_000, holdBatchMax: 256, queueDepthMax: 10_000, queuedProductsMax: 1000, inFlightKeysMax: 100_000 }

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: batched idempotency keys`, () => {
    it('reads, stores and replays the keys of a batch with as many statements for 20 keyed holds as for 1', async () => {
      const t = await buildTestApp(engine.name, { stock: 1000 })
      const { store, transactions } = countingStore(t.runtime.store)
      const holds = new Holds(store, t.clock, t.runtime.observer, settings)
      let lastAnswers: HoldAnswer[] = []
      const batchOf = async (keys: string[]): Promise<string[]> => {
        const before = transactions.length
        const answers = await Promise.all(keys.map((key) => holds.create({ productId: t.productId, qty: 1, idempotencyKey: key })))
        const batch = transactions.slice(before).filter((tx) => tx.label === 'holds.create')
        expect(batch).toHaveLength(1)
        expect(answers.some((answer) => answer.replayed)).toBe(false)
        lastAnswers = answers
        return batch[0]!.calls
      }
      const one = await batchOf(['single-key'])
      const twenty = await batchOf(Array.from({ length: 20 }, (_, index) => `many-key-${index}`))
      const twentyAnswers = lastAnswers
      expect(twenty).toEqual(one)
      // New keys are not read, and no row of idempotency_keys is written: the keys go into the
      // rows of the holds, with the batch's one insert of holds.
      expect(holdKeyCalls(twenty)).toEqual(['insertHolds'])
      expect(twenty.filter((name) => name.includes('Idempotency'))).toEqual([])
      // The same twenty keys again: the insert of the holds finds them kept, nothing of that
      // attempt stays, and the batch runs once more reading its keys first (one read, before the
      // product lock): every one a replay, and nothing to insert.
      const before = transactions.length
      const replays = await Promise.all(Array.from({ length: 20 }, (_, index) => holds.create({ productId: t.productId, qty: 1, idempotencyKey: `many-key-${index}` })))
      expect(replays.every((answer) => answer.replayed)).toBe(true)
      expect(replays.map((answer) => answer.hold.id)).toEqual(twentyAnswers.map((answer) => answer.hold.id))
      const replayBatches = transactions.slice(before).map((tx) => holdKeyCalls(tx.calls))
      expect(replayBatches).toEqual([['insertHolds'], ['readHoldKeys']])
      // After a stored key, the next batches read first: new keys cost a read again, for a while.
      const afterReplays = await batchOf(Array.from({ length: 5 }, (_, index) => `after-replay-${index}`))
      expect(holdKeyCalls(afterReplays)).toEqual(['readHoldKeys', 'insertHolds'])
      expect(afterReplays.indexOf('readHoldKeys')).toBeLessThan(afterReplays.indexOf('lockProduct'))
      const product = await t.request('GET', `/api/products/${t.productId}`)
      expect(product.body.available_stock).toBe(1000 - 1 - 20 - 5)
      await holds.drain()
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it(`reads keys first in the ${readFirstBatchesAfterStoredKey} batches after one met a stored key, and stops reading after them`, async () => {
      const t = await buildTestApp(engine.name, { stock: 1000 })
      const { store, transactions } = countingStore(t.runtime.store)
      const holds = new Holds(store, t.clock, t.runtime.observer, settings)
      const first = await holds.create({ productId: t.productId, qty: 1, idempotencyKey: 'stored' })
      const replay = await holds.create({ productId: t.productId, qty: 1, idempotencyKey: 'stored' })
      expect(replay).toEqual({ hold: first.hold, replayed: true })
      const before = transactions.length
      // One request at a time: a batch each.
      for (let index = 0; index < readFirstBatchesAfterStoredKey + 2; index++) {
        const answer = await holds.create({ productId: t.productId, qty: 1, idempotencyKey: `later-${index}` })
        expect(answer.replayed).toBe(false)
      }
      const readFirst = transactions
        .slice(before)
        .filter((tx) => tx.label === 'holds.create')
        .map((tx) => tx.calls.includes('readHoldKeys'))
      expect(readFirst).toEqual([...Array.from({ length: readFirstBatchesAfterStoredKey }, () => true), false, false])
      await holds.drain()
      const product = await t.request('GET', `/api/products/${t.productId}`)
      expect(product.body.available_stock).toBe(1000 - 1 - readFirstBatchesAfterStoredKey - 2)
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it('serves a key reused after its TTL as new: the insert meets the expired key, the batch runs again, frees it and stores the new answer', async () => {
      const t = await buildTestApp(engine.name, { stock: 10 })
      const first = await new Holds(t.runtime.store, t.clock, t.runtime.observer, settings).create({ productId: t.productId, qty: 1, idempotencyKey: 'reused-after-ttl' })
      t.clock.advanceMs(settings.idempotencyTtlMs)
      const { store, transactions } = countingStore(t.runtime.store)
      const holds = new Holds(store, t.clock, t.runtime.observer, settings)
      const again = await holds.create({ productId: t.productId, qty: 1, idempotencyKey: 'reused-after-ttl' })
      expect(again.replayed).toBe(false)
      expect(again.hold.id).not.toBe(first.hold.id)
      // The read (before the product lock) finds the expired key: that transaction stops there,
      // the key is freed in a transaction of its own holding no other lock, and the batch runs
      // again.
      expect(transactions.map((tx) => [tx.label, tx.calls])).toEqual([
        ['holds.create', expect.arrayContaining(['lockProduct', 'insertHolds'])],
        ['holds.create', ['readHoldKeys']],
        ['holds.create.keys', ['freeHoldKeys']],
        ['holds.create', expect.arrayContaining(['readHoldKeys', 'lockProduct', 'insertHolds'])],
      ])
      expect(holdKeyCalls(transactions[3]!.calls)).toEqual(['readHoldKeys', 'insertHolds'])
      // The first hold keeps its row, and no longer the key.
      expect(await t.runtime.store.getHoldByKey('reused-after-ttl')).toMatchObject({ hold: { id: again.hold.id } })
      // An expired key is no sign of retries coming in: the next batch does not read first.
      const before = transactions.length
      await holds.create({ productId: t.productId, qty: 1, idempotencyKey: 'after-reuse' })
      expect(transactions.slice(before).map((tx) => holdKeyCalls(tx.calls))).toEqual([['insertHolds']])
      // The key now answers with the new hold.
      const replay = await holds.create({ productId: t.productId, qty: 1, idempotencyKey: 'reused-after-ttl' })
      expect(replay).toEqual({ hold: again.hold, replayed: true })
      await holds.drain()
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it("replays a stored key whose request would now be refused (sold out): the read of the refused requests' keys finds it, the batch runs again reading first, and the refused request's key stays unused", async () => {
      const t = await buildTestApp(engine.name, { stock: 2 })
      const { store, transactions } = countingStore(t.runtime.store)
      const holds = new Holds(store, t.clock, t.runtime.observer, settings)
      const first = await holds.create({ productId: t.productId, qty: 2, idempotencyKey: 'last-units' })
      expect(first.replayed).toBe(false)
      const before = transactions.length
      // The retry and a new request in one batch: both find no stock, the retry is its replay.
      const [retry, other] = await Promise.all([
        holds.create({ productId: t.productId, qty: 2, idempotencyKey: 'last-units' }).catch((error: unknown) => error),
        holds.create({ productId: t.productId, qty: 1, idempotencyKey: 'too-late' }).catch((error: unknown) => error),
      ])
      expect(retry).toEqual({ hold: first.hold, replayed: true })
      expect(other).toMatchObject({ code: 'insufficient_stock' })
      // Both refused in the first attempt, which then reads their keys: the retry's holds an
      // answer, so nothing of the attempt stays and the batch runs again reading first (before
      // the lock). Then the retry replays and the new request is refused.
      // The second attempt reads before the lock, and reads the refused key again under it.
      const calls = transactions.slice(before).map((tx) => tx.calls)
      expect(calls.map(holdKeyCalls)).toEqual([['readHoldKeys'], ['readHoldKeys', 'readHoldKeys']])
      expect(calls[0]!.indexOf('readHoldKeys')).toBeGreaterThan(calls[0]!.indexOf('lockProduct'))
      expect(calls[1]!.indexOf('readHoldKeys')).toBeLessThan(calls[1]!.indexOf('lockProduct'))
      expect(calls[1]!.lastIndexOf('readHoldKeys')).toBeGreaterThan(calls[1]!.indexOf('lockProduct'))
      // The refused key was not used up.
      expect(await t.runtime.store.getHoldByKey('too-late')).toBeUndefined()
      expect(await t.runtime.store.getIdempotencyRecord('holds', 'too-late')).toBeUndefined()
      const product = await t.request('GET', `/api/products/${t.productId}`)
      expect(product.body).toMatchObject({ available_stock: 0, reserved: 2 })
      await holds.drain()
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it('replays a key another process stored between the batch read and its insert: the insert fails, the batch runs again and reads the answer', async () => {
      const t = await buildTestApp(engine.name, { stock: 10 })
      const first = await t.app.services.holds.create({ productId: t.productId, qty: 2, idempotencyKey: 'raced' })
      // The first read of the batch misses the stored row, as if it committed a moment later.
      const { store: racing, transactions } = racingStore(t.runtime.store, 1)
      const holds = new Holds(racing, t.clock, t.runtime.observer, settings)
      const again = await holds.create({ productId: t.productId, qty: 2, idempotencyKey: 'raced' })
      expect(again).toEqual({ hold: first.hold, replayed: true })
      // Not read at first (a new key, as far as this process knows), then read and missed (the
      // race), then read and found: nothing left to insert.
      expect(transactions.map(holdKeyCalls)).toEqual([['insertHolds'], ['readHoldKeys', 'insertHolds'], ['readHoldKeys']])
      // The read that missed ran before the product lock; the one after it runs under the lock,
      // where every batch of the product that stored one of its keys has committed.
      expect(transactions[1]!.indexOf('readHoldKeys')).toBeLessThan(transactions[1]!.indexOf('lockProduct'))
      expect(transactions[2]!.indexOf('readHoldKeys')).toBeGreaterThan(transactions[2]!.indexOf('lockProduct'))
      await holds.drain()
      const product = await t.request('GET', `/api/products/${t.productId}`)
      expect(product.body.available_stock).toBe(8)
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it('replays a key another process stored, taking the last units, between the read before the lock and the judging: the refused key is read again under the lock', async () => {
      const t = await buildTestApp(engine.name, { stock: 2 })
      const first = await t.app.services.holds.create({ productId: t.productId, qty: 2, idempotencyKey: 'stored-meanwhile' })
      // The second attempt (reading first) misses the key before the lock, as if the other
      // process committed it just after; judged, its request finds no stock.
      const { store: racing, transactions } = racingStore(t.runtime.store, 1, { beforeLockOnly: true })
      const holds = new Holds(racing, t.clock, t.runtime.observer, settings)
      const again = await holds.create({ productId: t.productId, qty: 2, idempotencyKey: 'stored-meanwhile' })
      expect(again).toEqual({ hold: first.hold, replayed: true })
      // Refused, then found under the lock; read first and missed, refused, found again under
      // the lock; read under the lock and found: a replay (an attempt read before the lock only
      // would have answered 409 for a key that holds a hold).
      expect(transactions.map(holdKeyCalls)).toEqual([['readHoldKeys'], ['readHoldKeys', 'readHoldKeys'], ['readHoldKeys']])
      expect(transactions[2]!.indexOf('readHoldKeys')).toBeGreaterThan(transactions[2]!.indexOf('lockProduct'))
      await holds.drain()
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it('answers 503 busy with tx.busy when other processes store its keys before every attempt: nothing written, the client may retry', async () => {
      const t = await buildTestApp(engine.name, { stock: 10 })
      const first = await t.app.services.holds.create({ productId: t.productId, qty: 2, idempotencyKey: 'raced-always' })
      const { store: racing, transactions } = racingStore(t.runtime.store, Number.POSITIVE_INFINITY)
      const events: DomainEvent[] = []
      const holds = new Holds(racing, t.clock, { emit: (event) => void events.push(event) }, settings)
      const refused = await holds.create({ productId: t.productId, qty: 2, idempotencyKey: 'raced-always' }).catch((error: unknown) => error)
      expect(refused).toBeInstanceOf(DomainError)
      expect((refused as DomainError).code).toBe('busy')
      expect(statusByCode.busy).toBe(503)
      // The first attempt without reading, then three that read and miss: four in all. The
      // second reads before the product lock, the last two under it.
      expect(transactions.map(holdKeyCalls)).toEqual([['insertHolds'], ['readHoldKeys', 'insertHolds'], ['readHoldKeys', 'insertHolds'], ['readHoldKeys', 'insertHolds']])
      expect(transactions.slice(1).map((calls) => calls.indexOf('readHoldKeys') > calls.indexOf('lockProduct'))).toEqual([false, true, true])
      expect(events).toContainEqual({ name: 'tx.busy', label: 'holds.create', attempts: 4 })
      // Each rerun counted: the first met a stored key; the next two had read and missed it.
      expect(events.filter((event) => event.name === 'keys.rerun')).toEqual([
        { name: 'keys.rerun', label: 'holds.create', cause: 'key_stored' },
        { name: 'keys.rerun', label: 'holds.create', cause: 'key_stored_meanwhile' },
        { name: 'keys.rerun', label: 'holds.create', cause: 'key_stored_meanwhile' },
      ])
      // The key still holds the first answer: the client's retry through the service replays it.
      const retry = await t.app.services.holds.create({ productId: t.productId, qty: 2, idempotencyKey: 'raced-always' })
      expect(retry).toEqual({ hold: first.hold, replayed: true })
      await holds.drain()
      const product = await t.request('GET', `/api/products/${t.productId}`)
      expect(product.body.available_stock).toBe(8)
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it(`frees the expired rows of its keys ${expiredKeyFreesMax} times at most, then answers 503 busy with tx.busy: nothing written, the client may retry`, async () => {
      const t = await buildTestApp(engine.name, { stock: 10 })
      await new Holds(t.runtime.store, t.clock, t.runtime.observer, settings).create({ productId: t.productId, qty: 2, idempotencyKey: 'expires-again' })
      t.clock.advanceMs(settings.idempotencyTtlMs)
      // Frees that free nothing: as if, after each, a process whose clock runs behind stored the
      // key again with an answer already expired at this batch's instant.
      const frees: string[] = []
      const stubborn = new Proxy(t.runtime.store, {
        get(target, property, receiver) {
          if (property !== 'transaction') return Reflect.get(target, property, receiver)
          return (options: { label: string }, fn: (tx: StoreTx) => Promise<unknown>) =>
            target.transaction(options, (tx) =>
              fn(
                new Proxy(tx, {
                  get(txTarget, name, txReceiver) {
                    if (name !== 'freeHoldKeys') return Reflect.get(txTarget, name, txReceiver)
                    return (keys: readonly string[]) => {
                      frees.push(`${options.label}: ${keys.join(',')}`)
                      return Promise.resolve()
                    }
                  },
                }),
              ),
            )
        },
      })
      const events: DomainEvent[] = []
      const holds = new Holds(stubborn, t.clock, { emit: (event) => void events.push(event) }, settings)
      const refused = await holds.create({ productId: t.productId, qty: 2, idempotencyKey: 'expires-again' }).catch((error: unknown) => error)
      expect(refused).toBeInstanceOf(DomainError)
      expect((refused as DomainError).code).toBe('busy')
      expect(frees).toEqual(Array.from({ length: expiredKeyFreesMax }, () => 'holds.create.keys: expires-again'))
      // The insert that met the expired key, then the reads that met it: the frees do not count
      // as attempts, so the batch ends at its second.
      expect(events).toContainEqual({ name: 'tx.busy', label: 'holds.create', attempts: 2 })
      expect(events.filter((event) => event.name === 'keys.rerun').map((event) => event.cause)).toEqual([
        'key_stored',
        ...Array.from({ length: expiredKeyFreesMax }, () => 'expired_keys_freed'),
      ])
      await holds.drain()
      // The first hold lapsed with the hour that passed (not swept yet: still reserved), and
      // the refused batch held nothing.
      const product = await t.request('GET', `/api/products/${t.productId}`)
      expect(product.body).toMatchObject({ available_stock: 10, reserved: 2 })
      // With frees that free, the client's retry is served as a new request (by holds of the
      // same IDEMPOTENCY_TTL: a hold's key lasts that long from the hold's creation).
      const retry = await new Holds(t.runtime.store, t.clock, t.runtime.observer, settings).create({ productId: t.productId, qty: 2, idempotencyKey: 'expires-again' })
      expect(retry.replayed).toBe(false)
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it('reads and stores the payment events of a webhook batch with as many statements for 20 webhooks as for 1, early or on an order, new or replayed', async () => {
      const t = await buildTestApp(engine.name, { stock: 1000 })
      const { store, transactions } = countingStore(t.runtime.store)
      const payments = new Payments(store, t.clock, t.runtime.observer, { ...settings, webhookBatchMax: 256 })
      const { holds, orders } = t.app.services
      const holdIds = await Promise.all(Array.from({ length: 42 }, async () => (await holds.create({ productId: t.productId, qty: 1, idempotencyKey: null })).hold.id))
      // Half the holds become orders (webhooks on an order), the other half stay holds (webhooks before the order).
      const orderIds = await Promise.all(holdIds.slice(0, 21).map(async (holdId) => (await orders.create({ holdId, idempotencyKey: null })).order.id))
      const early = holdIds.slice(21)
      // Webhooks first read their order or hold, so they may reach the queue in more than one
      // batch: every batch must make the same payment-event calls, and one batch serves several.
      const batchOf = async (webhooks: Array<{ key: string; orderId: string | null; holdId: string | null }>, replayed: boolean): Promise<string[]> => {
        const before = transactions.length
        const eventsBefore = t.events.length
        const answers = await Promise.all(
          webhooks.map((webhook) => payments.receive({ ...webhook, idempotencyKey: webhook.key, status: 'success', paymentId: `pay-${webhook.key}`, amount: null })),
        )
        expect(answers.every((answer) => answer.replayed === replayed)).toBe(true)
        const sizes = t.events.slice(eventsBefore).flatMap((event) => (event.name === 'payment.batch' ? [Number(event.size)] : []))
        expect(sizes.reduce((sum, size) => sum + size, 0)).toBe(webhooks.length)
        if (webhooks.length > 1) expect(Math.max(...sizes)).toBeGreaterThan(1)
        const batches = transactions.slice(before).filter((tx) => tx.label === 'payments.receive')
        expect(batches).toHaveLength(sizes.length)
        const calls = batches.map((tx) => tx.calls.filter((name) => name.includes('PaymentEvent')))
        for (const batchCalls of calls) expect(batchCalls).toEqual(calls[0])
        return calls[0]!
      }
      const onOrders = (from: number, count: number) => Array.from({ length: count }, (_, index) => ({ key: `paid-${from + index}`, orderId: orderIds[from + index]!, holdId: null }))
      const beforeOrders = (from: number, count: number) => Array.from({ length: count }, (_, index) => ({ key: `early-${from + index}`, orderId: null, holdId: early[from + index]! }))
      const stored = ['getPaymentEvents', 'insertPaymentEvents']
      expect(await batchOf(onOrders(0, 1), false)).toEqual(stored)
      expect(await batchOf(onOrders(1, 20), false)).toEqual(stored)
      expect(await batchOf(beforeOrders(0, 1), false)).toEqual(stored)
      expect(await batchOf(beforeOrders(1, 20), false)).toEqual(stored)
      // The same forty keys again: one read, nothing stored for the replays. One new key twice:
      // stored once, the second a replay of the first (in its batch or the next).
      expect(await batchOf([...onOrders(1, 20), ...beforeOrders(1, 20)], true)).toEqual(['getPaymentEvents'])
      const before = transactions.length
      const twice = await Promise.all(
        [0, 1].map(() => payments.receive({ idempotencyKey: 'twice', orderId: orderIds[0]!, holdId: null, status: 'failed', paymentId: null, amount: null })),
      )
      // Exactly one was stored; which of the two reached the queue first is up to the event loop
      // (each looks its order up before joining a batch).
      expect(twice.map((answer) => answer.replayed).sort()).toEqual([false, true])
      expect(twice[1]!.body).toEqual(twice[0]!.body)
      expect(transactions.slice(before).flatMap((tx) => tx.calls.filter((name) => name === 'insertPaymentEvents'))).toHaveLength(1)
      await payments.drain()
      const product = await t.request('GET', `/api/products/${t.productId}`)
      expect(product.body.available_stock).toBe(1000 - 42)
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })
  })
}

describe('judging a hold batch', () => {
  it('serves requests in arrival order against the ledger, refusing one that no longer fits and granting a smaller one after it', () => {
    const now = new Date('2026-01-01T00:00:00Z')
    const ledger = new ProductLedger({ id: 7, name: 'p', priceMinor: 100, currency: 'USD', stock: 5, reserved: 0, sold: 0, createdAt: now, drop: noDropSettings, line: emptyLine })
    const requests: HoldRequest[] = [3, 3, 2].map((qty) => ({ productId: 7, qty, idempotencyKey: null }))
    const candidates: Hold[] = requests.map((request, index) => ({ id: `h${index}`, productId: 7, qty: request.qty, status: 'active', expiresAt: now, createdAt: now, buyerId: null }))
    const verdicts = judgeHolds(ledger, requests, candidates)
    expect(verdicts.map((verdict) => (verdict.ok ? verdict.answer.id : (verdict.error as DomainError).details))).toEqual(['h0', { available_stock: 2 }, 'h2'])
    expect(ledger.available()).toBe(0)
  })
})
