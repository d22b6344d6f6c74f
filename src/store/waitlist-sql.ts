// The waitlist's statements (domain/line.ts, domain/waitlist.ts), on whichever connection the
// caller holds: a transaction's, or the store's for reads.
import { sql, type Kysely } from 'kysely'
import type { LineAuditRow, Ticket, TicketStatus } from '../domain/store.js'
import { ticketValues, toTicket } from './rows.js'
import type { Database } from './schema.js'

type Db = Kysely<Database>

// Rows per ticket insert: a join batch is as large as HOLD_BATCH_MAX allows, but a ticket row has
// more columns than a hold row, so it is inserted in slices that fit every engine's parameter
// limit (1,000 x 13 = 13,000 < SQLite's 32,766) instead of lowering the batch for holds.
const ticketInsertRowsMax = 1_000

export async function insertTickets(db: Db, tickets: readonly Ticket[]): Promise<void> {
  for (let start = 0; start < tickets.length; start += ticketInsertRowsMax) {
    await db
      .insertInto('waitlist_tickets')
      .values(tickets.slice(start, start + ticketInsertRowsMax).map(ticketValues))
      .execute()
  }
}

export async function findTicket(db: Db, ticketId: string): Promise<Ticket | undefined> {
  const row = await db.selectFrom('waitlist_tickets').selectAll().where('id', '=', ticketId).executeTakeFirst()
  return row ? toTicket(row) : undefined
}

// The product's waiting tickets after `afterRank` (the line index); callers add their filter,
// then line order and a limit.
function waitingAfter(db: Db, productId: number, afterRank: number) {
  return db.selectFrom('waitlist_tickets').selectAll().where('product_id', '=', productId).where('status', '=', 'waiting').where('line_rank', '>', afterRank)
}

export async function waitingTicketsThatFit(db: Db, productId: number, qtyMax: number, afterRank: number, limit: number): Promise<Ticket[]> {
  const rows = await waitingAfter(db, productId, afterRank).where('qty', '<=', qtyMax).orderBy('line_rank').limit(limit).execute()
  return rows.map(toTicket)
}

// Waiting tickets no hold could be granted for under this per_buyer_limit (no buyer, or more
// units than the limit), in line order after `afterRank`. An admin's change reads them: the line
// index narrows to the product's waiting tickets and the rest is a filter.
export async function waitingTicketsOverLimit(db: Db, productId: number, perBuyerLimit: number, afterRank: number, limit: number): Promise<Ticket[]> {
  const rows = await waitingAfter(db, productId, afterRank)
    .where((eb) => eb.or([eb('buyer_id', 'is', null), eb('qty', '>', perBuyerLimit)]))
    .orderBy('line_rank')
    .limit(limit)
    .execute()
  return rows.map(toTicket)
}

export async function moveTickets(db: Db, ticketIds: readonly string[], from: TicketStatus, to: TicketStatus, now: Date): Promise<number> {
  if (ticketIds.length === 0) return 0
  const result = await db
    .updateTable('waitlist_tickets')
    .set({ status: to, updated_at: now.getTime(), ended_at: now.getTime() })
    .where('id', 'in', ticketIds)
    .where('status', '=', from)
    .executeTakeFirst()
  return Number(result.numUpdatedRows)
}

export async function closeWaiting(db: Db, productId: number, now: Date): Promise<number> {
  const result = await db
    .updateTable('waitlist_tickets')
    .set({ status: 'closed', updated_at: now.getTime(), ended_at: now.getTime() })
    .where('product_id', '=', productId)
    .where('status', '=', 'waiting')
    .executeTakeFirst()
  return Number(result.numUpdatedRows)
}

// An index range count (product, status, rank or join order): its cost grows with the position,
// not with the tickets behind it or those already served.
// Counted over the tickets ahead read in the order counted: both line indexes start with
// (product_id, status), and without statistics PostgreSQL counted by rank through the join-order
// one, reading the whole line (3,409 buffers to count 5 in a line of 3,200). Asking for the order
// leaves the index that gives it (test/store-plans.test.ts).
export async function ticketsAhead(db: Db, ticket: Ticket, byJoinOrder: boolean): Promise<number> {
  const column = byJoinOrder ? 'join_seq' : 'line_rank'
  const ahead = db
    .selectFrom('waitlist_tickets')
    .select(column)
    .where('product_id', '=', ticket.productId)
    .where('status', '=', 'waiting')
    .where(column, '<', byJoinOrder ? ticket.joinSeq : ticket.lineRank)
    .orderBy(column)
  const row = await db
    .selectFrom(ahead.as('ahead'))
    .select(sql<number>`count(*)`.as('n'))
    .executeTakeFirstOrThrow()
  return Number(row.n)
}

// Products whose line the sweeper can move: the sale has ended, or it has started and sold out for
// good (it closes the line), or a waiting ticket fits in the free units (it admits; the draw at
// the start needs no request). A line whose every ticket is bigger than the free units is not
// work: matched, it was locked on every pass for nothing, and `limit` such products (ordered by
// id) kept every newer product's line from being served at all (a black-box probe: a drop's
// pre-sale ticket still waiting after the start, 3 units free, behind 500 stuck lines). The
// ticket that fits is found through waitlist_fit_idx, one short range per product.
export async function productsWithLineWork(db: Db, now: Date, limit: number): Promise<number[]> {
  const nowMs = now.getTime()
  const rows = await db
    .selectFrom('products as p')
    .select('p.id')
    .where('p.waiting_tickets', '>', 0)
    .where((eb) =>
      eb.or([
        eb('p.sale_ends_at', '<=', nowMs),
        eb.and([
          eb.or([eb('p.sale_starts_at', 'is', null), eb('p.sale_starts_at', '<=', nowMs)]),
          eb.or([
            // Sold out for good (closed only once the sale has started, as serveLine does).
            eb.and([eb('p.reserved', '=', 0), eb('p.stock', '<=', eb.ref('p.sold'))]),
            // The smallest waiting ticket, fitting in the free units: the first entry of the
            // product's waiting range in waitlist_fit_idx, on every engine (a min() MariaDB read
            // as the whole range). As EXISTS with a `qty <=` filter, with statistics, PostgreSQL
            // planned a scan of the whole tickets table per product, expecting to meet a ticket
            // that fits early; on a stuck line none does (test/store-plans.test.ts).
            eb(
              eb.selectFrom('waitlist_tickets as t').select('t.qty').whereRef('t.product_id', '=', 'p.id').where('t.status', '=', 'waiting').orderBy('t.qty').limit(1),
              '<=',
              // Kysely writes nested operations without parentheses: `stock - reserved + sold`
              // was what the free units read as before, matching every line once units sold.
              eb('p.stock', '-', eb.parens(eb('p.reserved', '+', eb.ref('p.sold')))),
            ),
          ]),
        ]),
      ]),
    )
    .orderBy('p.id')
    .limit(limit)
    .execute()
  return rows.map((row) => Number(row.id))
}

export async function lineAudit(db: Db): Promise<{ lines: LineAuditRow[]; ticketsBadlyAdmitted: string[] }> {
  const lines = await db
    .selectFrom('products as p')
    .select(['p.id', 'p.waiting_qty', 'p.waiting_tickets'])
    .select((eb) => [
      eb
        .selectFrom('waitlist_tickets as t')
        .select(sql<number>`coalesce(sum(t.qty), 0)`.as('q'))
        .whereRef('t.product_id', '=', 'p.id')
        .where('t.status', '=', 'waiting')
        .as('ticket_waiting_qty'),
      eb
        .selectFrom('waitlist_tickets as t')
        .select(sql<number>`count(*)`.as('n'))
        .whereRef('t.product_id', '=', 'p.id')
        .where('t.status', '=', 'waiting')
        .as('ticket_waiting_count'),
    ])
    .orderBy('p.id')
    .execute()
  // An admitted ticket names exactly one hold, of its product, qty and buyer; a waiting, left or
  // closed one never became a hold. (hold_id is unique, so no two tickets share one.)
  const badlyAdmitted = await db
    .selectFrom('waitlist_tickets as t')
    .leftJoin('holds as h', 'h.id', 't.hold_id')
    .select('t.id')
    .where((eb) =>
      eb.or([
        eb.and([eb('t.status', '=', 'admitted'), eb('h.id', 'is', null)]),
        eb.and([eb('t.status', '!=', 'admitted'), eb('h.id', 'is not', null)]),
        eb.and([
          eb('h.id', 'is not', null),
          eb.or([eb('h.product_id', '!=', eb.ref('t.product_id')), eb('h.qty', '!=', eb.ref('t.qty')), eb(sql`coalesce(h.buyer_id, '')`, '!=', sql`coalesce(t.buyer_id, '')`)]),
        ]),
      ]),
    )
    .execute()
  return {
    lines: lines.map((row) => ({
      productId: Number(row.id),
      waitingQty: Number(row.waiting_qty),
      waitingTickets: Number(row.waiting_tickets),
      ticketWaitingQty: Number(row.ticket_waiting_qty),
      ticketWaitingCount: Number(row.ticket_waiting_count),
    })),
    ticketsBadlyAdmitted: badlyAdmitted.map((row) => row.id),
  }
}
