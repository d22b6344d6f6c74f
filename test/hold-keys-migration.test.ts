// Migration 0010 moves the keys of holds from idempotency_keys into the holds themselves: a
// database written by an earlier version keeps every live hold key, which replays its hold
// after the upgrade, and the keys of other scopes stay where they were.
import pino from 'pino'
import { describe, expect, it } from 'vitest'
import { ManualClock } from '../src/domain/clock.js'
import { DomainError } from '../src/domain/errors.js'
import { encodeHold, Holds } from '../src/domain/holds.js'
import { fingerprintOf } from '../src/domain/idempotency.js'
import type { Hold } from '../src/domain/store.js'
import { loadConfig } from '../src/config.js'
import { openRuntime } from '../src/runtime.js'
import { baseEnv } from './helpers/app.js'
import { rawQuery, testDatabase, testEngines } from './helpers/engines.js'

const settings = { holdTtlMs: 120_000, idempotencyTtlMs: 3_600_000, holdBatchMax: 256, queueDepthMax: 10_000, queuedProductsMax: 1000, inFlightKeysMax: 100_000 }

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: migration 0010, hold keys in their rows`, () => {
    // halfWay: what a crash in the middle of 0010 leaves where DDL runs outside transactions
    // (MySQL, SQLite): its columns and index, a key moved (its row deleted), the migration not
    // recorded. A black-box probe found that every later start failed ("duplicate column").
    for (const halfWay of [false, true]) {
      it(
        halfWay
          ? 'runs again to the end after stopping half-way: what was done is skipped, the rest moved'
          : 'moves the hold keys stored before into their holds, more than a round of them, keeps the keys of other scopes, and a moved key replays its hold',
        async () => {
          const database = await testDatabase(engine.name)
          const clock = new ManualClock(new Date())
          const runtime = openRuntime(loadConfig(baseEnv(database.url)), { clock, logger: pino({ level: 'silent' }) })
          try {
            await runtime.store.migrate('0009_waitlist_fit_index')
            const nowMs = clock.now().getTime()
            await rawQuery(
              engine.name,
              database.url,
              `insert into products (name, price_minor, currency, stock, reserved, sold, created_at, updated_at) values ('old', 100, 'USD', 10, 0, 0, ${nowMs}, ${nowMs})`,
            )
            const productId = Number(((await rawQuery(engine.name, database.url, 'select id from products')) as Array<{ id: number }>)[0]!.id)
            // Two holds of the earlier version, keyed (one released since: its key still replays the
            // hold as it was created), and one without a key.
            const holdOf = (id: string, buyerId: string | null): Hold => ({
              id,
              productId: productId,
              qty: 1,
              status: 'active',
              expiresAt: new Date(nowMs + 120_000),
              createdAt: new Date(nowMs),
              buyerId,
            })
            const keyed = [holdOf('h-old-keyed', null), holdOf('h-old-released', 'buyer-1')]
            for (const [hold, status] of [
              [keyed[0]!, 'converted'],
              [keyed[1]!, 'released'],
              [holdOf('h-old-plain', null), 'released'],
            ] as const) {
              const buyer = hold.buyerId === null ? 'null' : `'${hold.buyerId}'`
              await rawQuery(
                engine.name,
                database.url,
                `insert into holds (id, product_id, qty, status, expires_at, created_at, updated_at, buyer_id) values ('${hold.id}', ${productId}, 1, '${status}', ${hold.expiresAt.getTime()}, ${nowMs}, ${nowMs}, ${buyer})`,
              )
            }
            const fingerprints = [fingerprintOf(['holds', productId, 1]), fingerprintOf(['holds', productId, 1, 'buyer-1'])]
            const keyRows = [
              ['holds', 'old-key', fingerprints[0], encodeHold(keyed[0]!)],
              ['holds', 'old-buyer-key', fingerprints[1], encodeHold(keyed[1]!)],
              ['orders', 'old-order-key', 'order-fingerprint', '{"id":"o-1"}'],
            ]
            for (const [scope, key, fingerprint, json] of keyRows) {
              await rawQuery(
                engine.name,
                database.url,
                `insert into idempotency_keys (scope, idem_key, fingerprint, status_code, response_json, created_at, expires_at) values ('${scope}', '${key}', '${fingerprint}', 201, '${json}', ${nowMs}, ${nowMs + 3_600_000})`,
              )
            }
            // More keyed holds than one round of the move takes.
            const bulk = Array.from({ length: 600 }, (_, index) => holdOf(`h-bulk-${String(index).padStart(3, '0')}`, null))
            await rawQuery(
              engine.name,
              database.url,
              `insert into holds (id, product_id, qty, status, expires_at, created_at, updated_at, buyer_id) values ${bulk.map((hold) => `('${hold.id}', ${productId}, 1, 'released', ${hold.expiresAt.getTime()}, ${nowMs}, ${nowMs}, null)`).join(', ')}`,
            )
            await rawQuery(
              engine.name,
              database.url,
              `insert into idempotency_keys (scope, idem_key, fingerprint, status_code, response_json, created_at, expires_at) values ${bulk.map((hold) => `('holds', 'bulk-${hold.id}', '${fingerprints[0]}', 201, '${encodeHold(hold)}', ${nowMs}, ${nowMs + 3_600_000})`).join(', ')}`,
            )
            if (halfWay) {
              for (const statement of [
                'alter table holds add column idem_key varchar(255)',
                'alter table holds add column idem_fingerprint varchar(64)',
                'create unique index holds_idem_key_idx on holds (idem_key)',
                `update holds set idem_key = 'old-key', idem_fingerprint = '${fingerprints[0]}' where id = 'h-old-keyed'`,
                "delete from idempotency_keys where scope = 'holds' and idem_key = 'old-key'",
                // A round moved, its key rows not deleted yet.
                `update holds set idem_key = 'bulk-h-bulk-000', idem_fingerprint = '${fingerprints[0]}' where id = 'h-bulk-000'`,
              ]) {
                await rawQuery(engine.name, database.url, statement)
              }
            }

            await runtime.store.migrate()
            const bulkMoved = (await rawQuery(engine.name, database.url, "select id, idem_key from holds where id like 'h-bulk-%' order by id")) as Array<{
              id: string
              idem_key: string
            }>
            expect(bulkMoved).toEqual(bulk.map((hold) => ({ id: hold.id, idem_key: `bulk-${hold.id}` })))
            const moved = (await rawQuery(engine.name, database.url, "select id, idem_key, idem_fingerprint from holds where id like 'h-old-%' order by id")) as Array<
              Record<string, unknown>
            >
            expect(moved).toEqual([
              { id: 'h-old-keyed', idem_key: 'old-key', idem_fingerprint: fingerprints[0] },
              { id: 'h-old-plain', idem_key: null, idem_fingerprint: null },
              { id: 'h-old-released', idem_key: 'old-buyer-key', idem_fingerprint: fingerprints[1] },
            ])
            expect(await rawQuery(engine.name, database.url, 'select scope, idem_key from idempotency_keys')).toEqual([{ scope: 'orders', idem_key: 'old-order-key' }])

            const holds = new Holds(runtime.store, clock, runtime.observer, settings)
            expect(await holds.create({ productId: productId, qty: 1, idempotencyKey: 'old-key' })).toEqual({ hold: keyed[0], replayed: true })
            expect(await holds.create({ productId: productId, qty: 1, idempotencyKey: 'old-buyer-key', buyerId: 'buyer-1' })).toEqual({ hold: keyed[1], replayed: true })
            const reused = await holds.create({ productId: productId, qty: 2, idempotencyKey: 'old-key' }).catch((error: unknown) => error)
            expect(reused).toBeInstanceOf(DomainError)
            expect((reused as DomainError).code).toBe('idempotency_key_reused')
            // A new keyed hold keeps its key in its row, and nothing goes to idempotency_keys.
            const fresh = await holds.create({ productId: productId, qty: 1, idempotencyKey: 'new-key' })
            expect(fresh.replayed).toBe(false)
            expect(await runtime.store.getHoldByKey('new-key')).toEqual({ key: 'new-key', fingerprint: fingerprints[0], hold: fresh.hold })
            expect(await rawQuery(engine.name, database.url, "select idem_key from idempotency_keys where scope = 'holds'")).toEqual([])
            await holds.drain()
          } finally {
            await runtime.store.close()
          }
        },
      )
    }
  })
}
