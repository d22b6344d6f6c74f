// Proves product-scoped reads take the intended index on every engine, on a product the database
// has no statistics for yet (a new drop). The per-buyer count of a hold batch (kysely-tx.ts
// buyerUnits) reads through the buyer index:
// PostgreSQL otherwise took the expiry index and read every active hold of the product once per
// buyer of the batch (1.5 s for 170 buyers among 34,000 holds). The statement the store really
// ran is captured with its parameters and explained by the engine itself.
import pino from 'pino'
import { describe, expect, it } from 'vitest'
import { ManualClock } from '../src/domain/clock.js'
import { newHoldIds } from '../src/domain/ids.js'
import { Catalog } from '../src/domain/products.js'
import type { Hold, Ticket } from '../src/domain/store.js'
import { KyselyStore } from '../src/store/kysely-store.js'
import { createObserver } from '../src/observability/observer.js'
import { Metrics } from '../src/observability/metrics.js'
import { withMysql, withPostgres } from '../dev/admin-connection.js'
import { rawQuery, testDatabase, testEngines } from './helpers/engines.js'

const buyersCount = 25_000
// As the hold path writes them: batches of 170 (the bench's mean batch at 256 connections), buyers
// in turn. The planner's choice is a tie on cost without statistics; inserted so, the index sizes
// tip it to the expiry index without the fix (checked by reverting it).
const insertChunkRows = 170
const insertBatches = 200
const batchBuyers = 170

async function explain(engine: string, url: string, text: string, parameters: readonly unknown[]): Promise<string> {
  if (engine === 'postgres') {
    const parsed = new URL(url)
    const schema = parsed.searchParams.get('schema')
    parsed.searchParams.delete('schema')
    return withPostgres(parsed.toString(), async (client) => {
      await client.query(`set search_path to ${schema}`)
      const { rows } = await client.query(`explain ${text}`, [...parameters])
      return rows.map((row: Record<string, string>) => row['QUERY PLAN']).join('\n')
    })
  }
  if (engine === 'mysql') {
    return withMysql(url, async (connection) => {
      const [rows] = await connection.query(`explain ${text}`, [...parameters])
      return JSON.stringify(rows)
    })
  }
  const { default: Database } = await import('better-sqlite3')
  const database = new Database(url.replace(/^sqlite:/, ''))
  try {
    return JSON.stringify(database.prepare(`explain query plan ${text}`).all(...parameters))
  } finally {
    database.close()
  }
}

// Gives the planner statistics, as autovacuum (or an operator) eventually does.
async function analyze(engine: string, url: string): Promise<void> {
  if (engine === 'postgres') {
    const parsed = new URL(url)
    const schema = parsed.searchParams.get('schema')
    parsed.searchParams.delete('schema')
    await withPostgres(parsed.toString(), async (client) => {
      await client.query(`set search_path to ${schema}`)
      await client.query('analyze')
    })
    return
  }
  if (engine === 'mysql') {
    await withMysql(url, async (connection) => {
      await connection.query('analyze table holds, orders, products, waitlist_tickets')
    })
    return
  }
  const { default: Database } = await import('better-sqlite3')
  const database = new Database(url.replace(/^sqlite:/, ''))
  try {
    database.exec('analyze')
  } finally {
    database.close()
  }
}

// The index the per-buyer count should read holds through.
const buyerIndexOfHolds = 'holds_buyer_first_idx'

const lineTickets = 3_200
// Tickets of lines served before (admitted or closed), in the sweeper's plan test.
const servedTickets = 30_000

// The index a plan reads waitlist_tickets through.
function ticketsIndexOf(engine: string, plan: string): string | undefined {
  if (engine === 'postgres') return /(?:Index (?:Only )?Scan using|Bitmap Index Scan on) (\w+)/.exec(plan)?.[1]
  if (engine === 'mysql') return (JSON.parse(plan) as Array<{ table: string; key: string | null }>).find((row) => row.key !== null && /waitlist/.test(row.key))?.key ?? undefined
  return /(?:SEARCH|SCAN) \w+ USING (?:COVERING )?INDEX (\w+)/.exec(plan)?.[1]
}

// The primary key index of holds, as each engine names it.
const primaryKeyOfHolds: Record<string, string> = { postgres: 'holds_pkey', mysql: 'PRIMARY', sqlite: 'sqlite_autoindex_holds_1' }

// The index the snapshot reads a waiting payment's hold through (alias ph).
function paymentHoldIndexOf(engine: string, plan: string): string | undefined {
  if (engine === 'postgres') return /Index (?:Only )?Scan using (\w+) on holds ph\b/.exec(plan)?.[1] ?? /Bitmap Index Scan on (\w+)[\s\S]*?on holds ph\b/.exec(plan)?.[1]
  if (engine === 'mysql') return (JSON.parse(plan) as Array<{ table: string; key: string | null }>).find((row) => row.table === 'ph')?.key ?? undefined
  return /SEARCH ph USING (?:COVERING )?INDEX (\w+)/.exec(plan)?.[1] ?? (/SEARCH ph USING INTEGER PRIMARY KEY/.test(plan) ? 'rowid' : undefined)
}

// The index the plan reads the holds through, as each engine's EXPLAIN names it.
// `alias`: the name the statement gives the holds table, if any.
function holdsIndexOf(engine: string, plan: string, alias = 'holds'): string | undefined {
  if (engine === 'postgres') return /Index (?:Only )?Scan using (\w+) on holds\b/.exec(plan)?.[1] ?? /Bitmap Index Scan on (\w+)/.exec(plan)?.[1]
  if (engine === 'mysql') return (JSON.parse(plan) as Array<{ table: string; key: string | null }>).find((row) => row.table === alias)?.key ?? undefined
  return new RegExp(`SEARCH ${alias} USING (?:COVERING )?INDEX (\\w+)`).exec(plan)?.[1]
}

interface Drop {
  store: KyselyStore
  productId: number
  now: Date
  url: string
  captured: Array<{ text: string; parameters: readonly unknown[] }>
  catalog: Catalog
}

// A new product with 34,000 active holds written as the hold path writes them, no statistics.
// `lapsedBatches`: how many of the first batches lapsed a minute ago (not yet swept); `keyed`:
// every other hold keeps an idempotency key (`key-<hold id>`).
async function dropWithHolds(engineName: Parameters<typeof testDatabase>[0], lapsedBatches = 0, keyed = false): Promise<Drop> {
  const database = await testDatabase(engineName)
  const captured: Drop['captured'] = []
  const observer = createObserver(pino({ level: 'silent' }), new Metrics())
  const store = new KyselyStore({ databaseUrl: database.url, engine: engineName, observer, txAttemptsMax: 3, onQuery: (text, parameters) => captured.push({ text, parameters }) })
  await store.migrate()
  const clock = new ManualClock(new Date('2030-01-01T00:00:00.000Z'))
  const drop: Drop = { store, productId: 0, now: clock.now(), url: database.url, captured, catalog: new Catalog(store, clock, observer) }
  drop.productId = await addDrop(drop, lapsedBatches, keyed)
  return drop
}

// Another product with 34,000 holds in the same database; returns its id.
async function addDrop({ store, now, catalog }: Drop, lapsedBatches = 0, keyed = false): Promise<number> {
  const product = await catalog.create({ name: 'drop', priceMinor: 100, currency: 'USD', stock: 1_000_000, drop: { perBuyerLimit: 1_000 } })
  const total = insertBatches * insertChunkRows
  for (let start = 0; start < total; start += insertChunkRows) {
    const ids = newHoldIds(Math.min(insertChunkRows, total - start), now)
    const lapsed = start < lapsedBatches * insertChunkRows
    const holds: Hold[] = ids.map((id, index) => ({
      id,
      productId: product.id,
      qty: 1,
      status: 'active',
      expiresAt: new Date(now.getTime() + (lapsed ? -60_000 : 600_000)),
      createdAt: now,
      buyerId: `bench-buyer-${(start + index) % buyersCount}`,
    }))
    await store.transaction({ label: 'test.holds' }, async (tx) => {
      await tx.lockProduct(product.id)
      await tx.insertHolds(holds, keyed ? holds.map((hold, index) => (index % 2 === 0 ? { key: `key-${hold.id}`, fingerprint: 'f' } : null)) : undefined)
      await tx.applyProductDelta(product.id, { reserved: holds.length, sold: 0, stock: 0 })
    })
  }
  return product.id
}

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: the plans of product-scoped reads on a new drop`, () => {
    it(`counts ${batchBuyers} buyers among ${insertBatches * insertChunkRows} active holds of a new product through holds_buyer_first_idx`, async () => {
      const { store, productId, now, url, captured } = await dropWithHolds(engine.name)
      try {
        const buyerIds = Array.from({ length: batchBuyers }, (_, index) => `bench-buyer-${index * 7}`)
        captured.length = 0
        const units = await store.transaction({ label: 'test.count' }, (tx) => tx.buyerUnits(productId, buyerIds, now))
        expect(units.size).toBe(batchBuyers)
        // Buyers 0..8,999 got a second hold (34,000 holds among 25,000 buyers in turn).
        for (const buyerId of buyerIds) expect(units.get(buyerId)).toBe(Number(buyerId.split('-').pop()) < insertBatches * insertChunkRows - buyersCount ? 2 : 1)

        const count = captured.find(({ text }) => /sum\(/i.test(text) && /holds/.test(text))
        expect(count, 'the count statement was captured').toBeDefined()
        const plan = await explain(engine.name, url, count!.text, count!.parameters)
        console.log(`${engine.name}: plan of the per-buyer count\n${plan}`)
        expect(holdsIndexOf(engine.name, plan)).toBe(buyerIndexOfHolds)
      } finally {
        await store.close()
      }
    }, 120_000)

    // A shop's second drop: the tables have statistics from the first, in which the new product
    // is not. PostgreSQL then estimated the new product at a row or so in both indexes and took
    // holds_lapsed_idx again (168 ms a batch of 170 buyers among 34,000 holds).
    it('counts the buyers of a second drop through the buyer index while the statistics know only the first', async () => {
      const first = await dropWithHolds(engine.name)
      try {
        await analyze(engine.name, first.url)
        const second = await addDrop(first)
        const buyerIds = Array.from({ length: batchBuyers }, (_, index) => `bench-buyer-${index * 7}`)
        first.captured.length = 0
        const units = await first.store.transaction({ label: 'test.count' }, (tx) => tx.buyerUnits(second, buyerIds, first.now))
        expect(units.size).toBe(batchBuyers)
        const count = first.captured.find(({ text }) => /sum\(/i.test(text) && /holds/.test(text))
        expect(count, 'the count statement was captured').toBeDefined()
        const plan = await explain(engine.name, first.url, count!.text, count!.parameters)
        console.log(`${engine.name}: plan of the per-buyer count, second drop\n${plan}`)
        expect(holdsIndexOf(engine.name, plan)).toBe(buyerIndexOfHolds)
      } finally {
        await first.store.close()
      }
    }, 120_000)

    // A ticket's position counts the waiting tickets ahead of it. Both line indexes start with
    // (product_id, status); without statistics PostgreSQL took the join-order one for the rank
    // count and read the whole line to count a few tickets (3,409 buffers for a line of 3,200).
    it('counts the tickets ahead of one through the index of the order it counts in', async () => {
      const { store, now, url, captured, catalog } = await dropWithHolds(engine.name)
      try {
        const product = await catalog.create({ name: 'line', priceMinor: 100, currency: 'USD', stock: 1 })
        const tickets: Ticket[] = Array.from({ length: lineTickets }, (_, index) => ({
          id: `tkt_plan${String(index).padStart(8, '0')}`,
          productId: product.id,
          qty: 1,
          status: 'waiting',
          lineRank: 1_000_000 + index,
          joinSeq: index,
          presale: false,
          holdId: `hold_plan${String(index).padStart(8, '0')}`,
          holdTtlMs: 600_000,
          buyerId: `line-buyer-${index}`,
          createdAt: now,
          endedAt: null,
        }))
        for (let start = 0; start < tickets.length; start += insertChunkRows) {
          await store.transaction({ label: 'test.tickets' }, (tx) => tx.insertTickets(tickets.slice(start, start + insertChunkRows)))
        }
        for (const [byJoinOrder, index] of [
          [false, 'waitlist_line_idx'],
          [true, 'waitlist_join_idx'],
        ] as const) {
          captured.length = 0
          expect(await store.ticketsAhead(tickets[5]!, byJoinOrder)).toBe(5)
          const query = captured.find(({ text }) => /waitlist_tickets/.test(text))
          expect(query, 'the statement was captured').toBeDefined()
          const plan = await explain(engine.name, url, query!.text, query!.parameters)
          console.log(`${engine.name}: plan of ticketsAhead (${byJoinOrder ? 'join order' : 'line rank'})\n${plan}`)
          expect(ticketsIndexOf(engine.name, plan)).toBe(index)
        }
      } finally {
        await store.close()
      }
    }, 120_000)

    // A hold batch reading first looks its keys up in the holds (migration 0010): each through
    // the key's unique index, before and after the tables have statistics, never by reading the
    // product's holds.
    it('reads the holds of a batch of 64 keys through holds_idem_key_idx among 34,000 holds, with and without statistics', async () => {
      const { store, productId, url, captured } = await dropWithHolds(engine.name, 0, true)
      try {
        const holds = (await rawQuery(engine.name, url, `select id from holds where product_id = ${productId} and idem_key is not null order by id`)) as Array<{ id: string }>
        const keys = [...holds.slice(0, 60).map((hold) => `key-${hold.id}`), 'missing-1', 'missing-2', 'missing-3', 'missing-4']
        for (const statistics of [false, true]) {
          if (statistics) await analyze(engine.name, url)
          captured.length = 0
          const found = await store.transaction({ label: 'test.keys' }, (tx) => tx.readHoldKeys(keys))
          expect(found.map((keyed) => keyed.key).sort()).toEqual(keys.slice(0, 60).sort())
          const read = captured.find(({ text }) => /idem_key/.test(text))
          expect(read, 'the key read was captured').toBeDefined()
          const plan = await explain(engine.name, url, read!.text, read!.parameters)
          console.log(`${engine.name}: plan of a batch's hold keys${statistics ? ', with statistics' : ''}\n${plan}`)
          expect(holdsIndexOf(engine.name, plan)).toBe('holds_idem_key_idx')
        }
      } finally {
        await store.close()
      }
    }, 120_000)

    // A product read subtracts the lapsed holds a waiting payment will sell: each found by its id.
    // Without statistics PostgreSQL read them through holds_lapsed_idx, filtering on the id (2,337
    // buffers a read; 150,847 with 13,600 unswept holds and 400 waiting payments, 431 ms).
    it('reads the hold of each waiting payment, in a product read, by its primary key', async () => {
      const { store, productId, now, url, captured } = await dropWithHolds(engine.name)
      try {
        captured.length = 0
        const snapshot = await store.productSnapshot(productId, now)
        expect(snapshot?.reserved).toBe(insertBatches * insertChunkRows)
        const read = captured.find(({ text }) => /payment_events/.test(text))
        expect(read, 'the snapshot statement was captured').toBeDefined()
        const plan = await explain(engine.name, url, read!.text, read!.parameters)
        console.log(`${engine.name}: plan of the product snapshot\n${plan}`)
        expect(paymentHoldIndexOf(engine.name, plan)).toBe(primaryKeyOfHolds[engine.name])
      } finally {
        await store.close()
      }
    }, 120_000)

    // The sweeper asks every pass which products have a line it can move: one where a waiting
    // ticket fits in the free units. The ticket is looked for through waitlist_fit_idx, one short
    // range per product, not by reading a long line of tickets too big for what is free.
    it('finds the lines the sweeper can move through waitlist_fit_idx, with statistics, past a long line of tickets too big', async () => {
      const database = await testDatabase(engine.name)
      const captured: Array<{ text: string; parameters: readonly unknown[] }> = []
      const observer = createObserver(pino({ level: 'silent' }), new Metrics())
      const store = new KyselyStore({ databaseUrl: database.url, engine: engine.name, observer, txAttemptsMax: 3, onQuery: (text, parameters) => captured.push({ text, parameters }) })
      try {
        await store.migrate()
        const clock = new ManualClock(new Date('2030-01-01T00:00:00.000Z'))
        const now = clock.now()
        const catalog = new Catalog(store, clock, observer)
        const stuck = await catalog.create({ name: 'stuck line', priceMinor: 100, currency: 'USD', stock: 2 })
        const moving = await catalog.create({ name: 'moving line', priceMinor: 100, currency: 'USD', stock: 2 })
        const ticketOf = (productId: number, index: number, qty: number): Ticket => ({
          id: `tkt_fit${String(productId)}_${String(index).padStart(8, '0')}`,
          productId,
          qty,
          status: 'waiting',
          lineRank: 1_000_000 + index,
          joinSeq: index,
          presale: false,
          holdId: `hold_fit${String(productId)}_${String(index).padStart(8, '0')}`,
          holdTtlMs: 600_000,
          buyerId: null,
          createdAt: now,
          endedAt: null,
        })
        // Earlier drops' lines, served long ago, fill the table as they do in a shop's database.
        const served = Array.from({ length: servedTickets }, (_, index) => ({ ...ticketOf(moving.id, index + 1, 1), status: index % 2 === 0 ? 'admitted' : 'closed' }) as Ticket)
        const tickets = [...served, ...Array.from({ length: lineTickets }, (_, index) => ticketOf(stuck.id, index, 5)), ticketOf(moving.id, 0, 1)]
        for (let start = 0; start < tickets.length; start += insertChunkRows) {
          await store.transaction({ label: 'test.tickets' }, (tx) => tx.insertTickets(tickets.slice(start, start + insertChunkRows)))
        }
        // The products' line counters, as joins keep them.
        await store.transaction({ label: 'test.counters' }, async (tx) => {
          await tx.applyProductDelta(stuck.id, { reserved: 0, sold: 0, stock: 0, waitingTickets: lineTickets, waitingQty: 5 * lineTickets })
          await tx.applyProductDelta(moving.id, { reserved: 0, sold: 0, stock: 0, waitingTickets: 1, waitingQty: 1 })
        })
        await analyze(engine.name, database.url)
        captured.length = 0
        expect(await store.productsWithLineWork(now, 10)).toEqual([moving.id])
        const query = captured.find(({ text }) => /waitlist_tickets/.test(text))
        expect(query, 'the statement was captured').toBeDefined()
        const plan = await explain(engine.name, database.url, query!.text, query!.parameters)
        console.log(`${engine.name}: plan of productsWithLineWork\n${plan}`)
        expect(ticketsIndexOf(engine.name, plan)).toBe('waitlist_fit_idx')
      } finally {
        await store.close()
      }
    }, 120_000)

    // The sweeper asks every pass which products have lapsed rows. Once the tables had statistics
    // saying many holds lapse, PostgreSQL planned the EXISTS form as a scan of the holds and orders
    // per product (8.9 ms a pass once the sweeper had caught up, growing with the tables).
    it('finds the products with lapsed rows through holds_lapsed_idx, once the tables have statistics', async () => {
      const { store, productId, now, url, captured } = await dropWithHolds(engine.name, insertBatches / 2)
      try {
        await analyze(engine.name, url)
        captured.length = 0
        expect(await store.productsWithLapsedRows(now, 10)).toEqual([productId])
        const query = captured.find(({ text }) => /products/.test(text) && /holds/.test(text) && /orders/.test(text))
        expect(query, 'the statement was captured').toBeDefined()
        const plan = await explain(engine.name, url, query!.text, query!.parameters)
        console.log(`${engine.name}: plan of productsWithLapsedRows\n${plan}`)
        expect(holdsIndexOf(engine.name, plan, 'h')).toBe('holds_lapsed_idx')
      } finally {
        await store.close()
      }
    }, 120_000)
  })
}
