// Proves the sweeper deletes expired idempotency keys a batch at a time on every engine: a pass
// over more expired keys than SWEEP_BATCH_MAX deletes exactly that many with one DELETE per
// scope, never one statement per key, and leaves live keys and claims alone.
import pino from 'pino'
import { describe, expect, it } from 'vitest'
import { ManualClock } from '../src/domain/clock.js'
import type { IdempotencyAnswer, IdempotencyScope } from '../src/domain/store.js'
import { KyselyStore } from '../src/store/kysely-store.js'
import { createObserver } from '../src/observability/observer.js'
import { Metrics } from '../src/observability/metrics.js'
import { testDatabase, testEngines } from './helpers/engines.js'

const expiredPerScope = 400
const liveCount = 50
const batchMax = 500

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: expired idempotency keys`, () => {
    it(`deletes ${batchMax} of ${2 * expiredPerScope} expired keys in one pass with one DELETE per scope, the live ones kept`, async () => {
      const database = await testDatabase(engine.name)
      const statements: string[] = []
      const store = new KyselyStore({
        databaseUrl: database.url,
        engine: engine.name,
        observer: createObserver(pino({ level: 'silent' }), new Metrics()),
        txAttemptsMax: 3,
        onQuery: (sqlText) => statements.push(sqlText),
      })
      try {
        await store.migrate()
        const clock = new ManualClock(new Date('2030-01-01T00:00:00.000Z'))
        const write = async (scope: IdempotencyScope, prefix: string, count: number, ttlMs: number): Promise<void> => {
          const answers: IdempotencyAnswer[] = Array.from({ length: count }, (_, index) => ({ key: `${prefix}-${index}`, fingerprint: 'f'.repeat(64), responseJson: '{}' }))
          await store.transaction({ label: 'test.keys' }, (tx) => tx.insertIdempotencyKeys(scope, answers, clock.now(), new Date(clock.now().getTime() + ttlMs)))
        }
        await write('waitlist', 'expired-ticket', expiredPerScope, 1_000)
        await write('orders', 'expired-order', expiredPerScope, 1_000)
        await write('waitlist', 'live-ticket', liveCount, 3_600_000)
        clock.advanceMs(1_000)

        statements.length = 0
        const first = await store.deleteExpiredIdempotencyKeys(clock.now(), batchMax)
        const deletes = statements.filter((text) => /^\s*delete/i.test(text))
        expect(first).toBe(batchMax)
        expect(deletes.length).toBeGreaterThanOrEqual(1)
        expect(deletes.length).toBeLessThanOrEqual(2)
        expect(statements.length).toBeLessThanOrEqual(3)

        const second = await store.deleteExpiredIdempotencyKeys(clock.now(), batchMax)
        expect(second).toBe(2 * expiredPerScope - batchMax)
        expect(await store.deleteExpiredIdempotencyKeys(clock.now(), batchMax)).toBe(0)
        expect(await store.getIdempotencyRecord('waitlist', 'live-ticket-0')).toMatchObject({ state: 'completed' })
        expect(await store.getIdempotencyRecord('waitlist', 'expired-ticket-0')).toBeUndefined()
      } finally {
        await store.close()
      }
    })
  })
}
