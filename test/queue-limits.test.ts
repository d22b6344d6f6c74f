// Every queue and map a request can grow has a named limit, and a request past it is refused
// `busy` (503 with Retry-After) at once: the structures with tiny limits, then a flood over HTTP.
import { describe, expect, it } from 'vitest'
import { ProductBatches } from '../src/domain/batcher.js'
import { DomainError } from '../src/domain/errors.js'
import { InFlightKeys } from '../src/domain/idempotency.js'
import { ProductReader } from '../src/domain/products.js'
import { emptyLine, type ProductSnapshot, type Store } from '../src/domain/store.js'
import { ManualClock } from '../src/domain/clock.js'
import { buildTestApp } from './helpers/app.js'
import { countBy, times, type Reply } from './helpers/http.js'
import { pollUntil } from './helpers/lifecycle.js'
import { testEngines } from './helpers/engines.js'

// A gate the test opens: the work behind it waits until then.
function gate(): { wait: Promise<void>; open: () => void } {
  let open!: () => void
  const wait = new Promise<void>((resolve) => (open = resolve))
  return { wait, open }
}

function busyOf(fn: () => unknown): DomainError {
  try {
    fn()
  } catch (error) {
    expect(error).toBeInstanceOf(DomainError)
    return error as DomainError
  }
  throw new Error('expected a busy refusal')
}

function expectBusy(error: unknown): void {
  expect(error).toBeInstanceOf(DomainError)
  expect((error as DomainError).code).toBe('busy')
  expect((error as DomainError).details.retry_after_s).toBeGreaterThan(0)
}

describe('ProductBatches limits', () => {
  it('refuses a waiter past QUEUE_DEPTH_MAX for its product, and takes one again once the queue has room', async () => {
    const served: number[][] = []
    const first = gate()
    const batches = new ProductBatches<number>(10, { queueDepthMax: 2, queuedProductsMax: 10 }, 'test', async (_productId, batch) => {
      served.push(batch)
      if (served.length === 1) await first.wait
    })
    batches.add(1, 1)
    batches.add(1, 2)
    expectBusy(busyOf(() => batches.add(1, 3)))
    // Another product has its own queue.
    batches.add(2, 20)
    // Once the first batch is being served its waiters have left the queue: room for two more.
    await new Promise((resolve) => setImmediate(resolve))
    expect(served[0]).toEqual([1, 2])
    batches.add(1, 4)
    batches.add(1, 5)
    expectBusy(busyOf(() => batches.add(1, 6)))
    first.open()
    await batches.drain()
    expect(served).toEqual([[1, 2], [20], [4, 5]])
  })

  it('refuses a new product past QUEUED_PRODUCTS_MAX, and takes it once a queue has emptied', async () => {
    const served: number[] = []
    const batches = new ProductBatches<number>(10, { queueDepthMax: 100, queuedProductsMax: 2 }, 'test', async (productId) => {
      served.push(productId)
    })
    batches.add(1, 1)
    batches.add(2, 1)
    // A product that already has a queue still joins it.
    batches.add(2, 2)
    expectBusy(busyOf(() => batches.add(3, 1)))
    await batches.drain()
    batches.add(3, 1)
    await batches.drain()
    expect(served).toEqual([1, 2, 3])
  })
})

describe('InFlightKeys limit', () => {
  it('refuses a new key past IN_FLIGHT_KEYS_MAX while a duplicate of a tracked key still waits for it', async () => {
    const keys = new InFlightKeys<string>(1)
    const first = gate()
    const running = keys.start('a', 'fingerprint-a', async () => {
      await first.wait
      return 'a'
    })
    expect(busyOf(() => keys.start('b', 'fingerprint-b', async () => 'b'))).toMatchObject({ code: 'busy', details: { retry_after_s: 1 } })
    // A duplicate finds the first run, with its fingerprint, and waits for its value.
    const earlier = keys.runOf('a')
    expect(earlier?.fingerprint).toBe('fingerprint-a')
    expect(keys.size).toBe(1)
    first.open()
    expect(await running).toBe('a')
    expect(await earlier?.promise).toBe('a')
    expect(keys.size).toBe(0)
    expect(keys.runOf('a')).toBeUndefined()
    expect(await keys.start('b', 'fingerprint-b', async () => 'b')).toBe('b')
  })

  it('frees a key whose run failed, and a new run of the key is not freed by the old one', async () => {
    const keys = new InFlightKeys<string>(2)
    await expect(keys.start('a', 'f', async () => Promise.reject(new Error('rolled back')))).rejects.toThrow('rolled back')
    expect(keys.size).toBe(0)
    const second = gate()
    const secondRun = keys.start('a', 'f', async () => {
      await second.wait
      return 'second'
    })
    await Promise.resolve()
    expect(keys.runOf('a')?.promise).toBe(secondRun)
    second.open()
    expect(await secondRun).toBe('second')
    expect(keys.size).toBe(0)
  })
})

describe('ProductReader limits', () => {
  const snapshot = (id: number): ProductSnapshot => ({
    id,
    name: 'p',
    priceMinor: 1,
    currency: 'USD',
    stock: 5,
    reserved: 0,
    sold: 0,
    createdAt: new Date(0),
    lapsedQty: 0,
    drop: { perBuyerLimit: null, perBuyerLimitSetAt: null, saleStartsAt: null, saleEndsAt: null },
    line: emptyLine,
  })

  it('refuses a waiting read past QUEUE_DEPTH_MAX and a new product past QUEUED_PRODUCTS_MAX; reads already waiting are answered', async () => {
    const query = gate()
    let queries = 0
    const store = {
      productSnapshot: async (productId: number) => {
        queries++
        await query.wait
        return snapshot(productId)
      },
    } as unknown as Store
    const reader = new ProductReader(store, new ManualClock(new Date(0)), { queueDepthMax: 2, queuedProductsMax: 1 })
    const reads = [reader.read(1), reader.read(1)]
    await expect(reader.read(1)).rejects.toMatchObject({ code: 'busy' })
    await expect(reader.read(2)).rejects.toMatchObject({ code: 'busy' })
    query.open()
    expect((await Promise.all(reads)).map((view) => view?.availableStock)).toEqual([5, 5])
    expect(queries).toBe(1)
    expect((await reader.read(2))?.id).toBe(2)
  })
})

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: a flood against tiny queue limits`, () => {
    it('answers some requests 503 busy with Retry-After, never 500, serves the rest, and leaves the audit clean', async () => {
      const t = await buildTestApp(engine.name, { stock: 1000, env: { QUEUE_DEPTH_MAX: '2', QUEUED_PRODUCTS_MAX: '1', IN_FLIGHT_KEYS_MAX: '3', HOLD_BATCH_MAX: '2' } })
      // Another transaction holds the product's lock, so the flood backs up behind it as it
      // would behind a slow database, until the queues are full and refusing.
      const release = gate()
      const locked = gate()
      const blocker = t.runtime.store.transaction({ label: 'test.block' }, async (tx) => {
        await tx.lockProduct(t.productId)
        locked.open()
        await release.wait
      })
      await locked.wait
      const settled: Array<Reply> = []
      const track = (reply: Promise<Reply>): Promise<Reply> => reply.then((done) => (settled.push(done), done))
      const holds = times(60, (index) =>
        track(t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 1 }, headers: index % 2 === 0 ? { 'idempotency-key': `flood-${index}` } : {} })),
      )
      const reads = times(30, () => track(t.request('GET', `/api/products/${t.productId}`)))
      // Refusals answer at once, while the lock still holds everything that was admitted.
      await pollUntil(
        () => settled.filter((reply) => reply.status === 503).length,
        // At most two holds in the blocked batch and two waiting; every other hold is refused.
        (refused) => refused >= 56,
        { what: 'busy refusals' },
      )
      release.open()
      await blocker
      const replies = await Promise.all([...holds, ...reads])
      expect(countBy(replies, (reply) => reply.status)['500']).toBeUndefined()
      expect(replies.every((reply) => [200, 201, 503].includes(reply.status))).toBe(true)
      for (const reply of replies.filter((r) => r.status === 503)) {
        expect(reply.body.code).toBe('busy')
        expect(Number(reply.headers.get('retry-after'))).toBeGreaterThan(0)
      }
      const created = replies.filter((reply) => reply.status === 201)
      expect(created.length).toBeGreaterThan(0)
      const product = await t.request('GET', `/api/products/${t.productId}`)
      expect(product.body.available_stock).toBe(1000 - created.length)
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })
  })
}
