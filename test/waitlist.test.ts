// Proves SPEC §8 Waitlist over real HTTP on every engine: positions, FIFO admission in the
// transaction that frees units (release, expiry by the sweeper on a manual clock, cancel,
// restock), a ticket too big passed over only while it does not fit, `available − waiting` for
// readers and direct holds, the pre-sale draw at the start (random, by the sweeper, no request
// needed), closing at the end, limits counting waiting tickets, bad input, and exactly-once
// admission with three server processes racing releases, expiries and sweepers.
//
// Choices where SPEC is silent, tested here:
// - A ticket that fits when it is taken is admitted at once: the join answers 201 `admitted`
//   with its hold.
// - Before the start, `position` is join order among the pre-sale tickets; the draw at the start
//   decides the real order (a random rank drawn at join time, never shown).
// - Retry-After on a waiting ticket is the sweep interval in whole seconds (at least 1).
// - DELETE of a closed ticket is 200 and changes nothing, like leaving twice.
import { describe, expect, it } from 'vitest'
import { buildTestApp, type TestApp } from './helpers/app.js'
import { asBuyer, buyerEnv } from './helpers/buyer-tokens.js'
import {
  advanceTo,
  createDropProduct,
  expectCleanAudit,
  expectLimitReached,
  expectProblemCode,
  holdAs,
  isoAt,
  orderAs,
  patchProduct,
  paymentOf,
  productOf,
  serverNowMs,
} from './helpers/drops.js'
import { testEngines } from './helpers/engines.js'
import { request, times, type Reply } from './helpers/http.js'
import { pollUntil } from './helpers/lifecycle.js'
import { admissionsPerTransactionMax, limitClosesPerChangeMax } from '../src/domain/line.js'
import type { Clock } from '../src/domain/clock.js'
import { sweepOnce } from '../src/jobs/sweeper.js'
import { logEvents, serverFor, startCluster } from './helpers/servers.js'

// Joins sent at once where a test needs thousands of tickets.
const joinWaveSize = 256

function join(baseUrl: string, productId: number, qty: number, headers: Record<string, string> = {}): Promise<Reply> {
  return request(baseUrl, 'POST', `/api/products/${productId}/waitlist`, { body: { qty }, headers })
}

async function ticketOf(baseUrl: string, ticketId: string): Promise<any> {
  const reply = await request(baseUrl, 'GET', `/api/waitlist/${ticketId}`)
  expect(reply.status, reply.text).toBe(200)
  return reply.body
}

async function joined(baseUrl: string, productId: number, qty: number, headers: Record<string, string> = {}): Promise<any> {
  const reply = await join(baseUrl, productId, qty, headers)
  expect(reply.status, reply.text).toBe(201)
  return reply.body
}

async function heldOut(t: TestApp, productId: number, qtys: number[]): Promise<string[]> {
  const holdIds: string[] = []
  for (const qty of qtys) {
    const reply = await holdAs(t.baseUrl, {}, productId, qty)
    expect(reply.status, reply.text).toBe(201)
    holdIds.push(reply.body.hold_id)
  }
  return holdIds
}

async function statuses(baseUrl: string, ticketIds: string[]): Promise<string[]> {
  return Promise.all(ticketIds.map(async (ticketId) => (await ticketOf(baseUrl, ticketId)).status))
}

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: waitlist`, () => {
    it('gives n concurrent joins positions 1..n, Retry-After while waiting, and holds back nothing it does not have', async () => {
      const t = await buildTestApp(engine.name, { stock: 3 })
      await heldOut(t, t.productId, [3])
      const replies = await Promise.all(times(25, () => join(t.baseUrl, t.productId, 1)))
      for (const reply of replies) {
        expect(reply.status, reply.text).toBe(201)
        expect(reply.body).toMatchObject({ product_id: t.productId, qty: 1, status: 'waiting', hold_id: null, expires_at: null, buyer_id: null })
        expect(Number(reply.headers.get('retry-after'))).toBeGreaterThanOrEqual(1)
      }
      expect(replies.map((reply) => reply.body.position).sort((a, b) => a - b)).toEqual(times(25, (index) => index + 1))
      // Positions read back agree with the answers, and with join order.
      for (const reply of replies) expect((await ticketOf(t.baseUrl, reply.body.ticket_id)).position).toBe(reply.body.position)
      expect(await productOf(t.baseUrl, t.productId)).toMatchObject({ available_stock: 0, reserved: 3 })
      expect(await t.audit()).toMatchObject({ ok: true, violations: [] })
    })

    it('admits in line order on release, expiry (sweeper) and cancel, in the transaction that frees the units; admitted holds are ordinary holds', async () => {
      const t = await buildTestApp(engine.name, { stock: 3, env: { HOLD_TTL_SECONDS: '60' } })
      const [first, second, third] = await heldOut(t, t.productId, [1, 1, 1])
      const tickets = []
      for (let index = 0; index < 4; index++) tickets.push(await joined(t.baseUrl, t.productId, 1))
      expect(tickets.map((ticket) => ticket.position)).toEqual([1, 2, 3, 4])

      // Release: the first ticket is admitted by the DELETE itself, no sweep.
      expect((await request(t.baseUrl, 'DELETE', `/api/holds/${first}`)).status).toBe(200)
      const admitted = await ticketOf(t.baseUrl, tickets[0].ticket_id)
      expect(admitted).toMatchObject({ status: 'admitted', position: null, qty: 1 })
      expect(admitted.hold_id).toMatch(/^hold_/)
      const hold = await request(t.baseUrl, 'GET', `/api/holds/${admitted.hold_id}`)
      expect(hold.body).toMatchObject({ status: 'active', qty: 1, product_id: t.productId, expires_at: admitted.expires_at })
      expect(
        await statuses(
          t.baseUrl,
          tickets.map((ticket) => ticket.ticket_id),
        ),
      ).toEqual(['admitted', 'waiting', 'waiting', 'waiting'])
      expect((await ticketOf(t.baseUrl, tickets[1].ticket_id)).position).toBe(1)

      // Expiry: the lapsed hold's unit reaches the line when the sweeper brings its row up to date.
      t.clock.advanceMs(30_000)
      const cancelled = await orderAs(t.baseUrl, {}, second!)
      expect(cancelled.status).toBe(201)
      t.clock.advanceMs(30_001)
      expect(
        await statuses(
          t.baseUrl,
          tickets.map((ticket) => ticket.ticket_id),
        ),
      ).toEqual(['admitted', 'waiting', 'waiting', 'waiting'])
      await t.sweep()
      // `third` lapsed (and the first admission's hold too: 60 s passed); the line took both units.
      expect(
        await statuses(
          t.baseUrl,
          tickets.map((ticket) => ticket.ticket_id),
        ),
      ).toEqual(['admitted', 'admitted', 'admitted', 'waiting'])
      void third

      // Cancel: a failed payment frees the order's unit for the last ticket.
      expect((await paymentOf(t.baseUrl, cancelled.body.order_id, 'failed', 'pay-failed-1')).status).toBe(200)
      expect(
        await statuses(
          t.baseUrl,
          tickets.map((ticket) => ticket.ticket_id),
        ),
      ).toEqual(['admitted', 'admitted', 'admitted', 'admitted'])

      // An admitted hold makes an order like any other.
      const fromTicket = await orderAs(t.baseUrl, {}, (await ticketOf(t.baseUrl, tickets[3].ticket_id)).hold_id)
      expect(fromTicket.status, fromTicket.text).toBe(201)
      const admittedEvents = t.events.filter((event) => event.name === 'waitlist.admitted')
      expect(admittedEvents.map((event) => event.ticketId)).toEqual(tickets.map((ticket) => ticket.ticket_id))
      expect(await t.audit()).toMatchObject({ ok: true, violations: [] })
    })

    it('admits on restock, passes over a ticket too big only while it does not fit, and shows available - waiting to readers and direct holds', async () => {
      const t = await buildTestApp(engine.name, { stock: 3 })
      const holds = await heldOut(t, t.productId, [1, 1, 1])
      const big = await joined(t.baseUrl, t.productId, 2)
      const small = [await joined(t.baseUrl, t.productId, 1), await joined(t.baseUrl, t.productId, 1)]
      // One unit freed: the 2-unit ticket does not fit; the next one that does is admitted.
      await request(t.baseUrl, 'DELETE', `/api/holds/${holds[0]}`)
      expect(await statuses(t.baseUrl, [big.ticket_id, small[0].ticket_id, small[1].ticket_id])).toEqual(['waiting', 'admitted', 'waiting'])
      await request(t.baseUrl, 'DELETE', `/api/holds/${holds[1]}`)
      expect(await statuses(t.baseUrl, [big.ticket_id, small[0].ticket_id, small[1].ticket_id])).toEqual(['waiting', 'admitted', 'admitted'])
      // One unit free, two wanted by the waiting ticket: nobody else may take it.
      await request(t.baseUrl, 'DELETE', `/api/holds/${holds[2]}`)
      expect(await ticketOf(t.baseUrl, big.ticket_id)).toMatchObject({ status: 'waiting', position: 1 })
      expect(await productOf(t.baseUrl, t.productId)).toMatchObject({ available_stock: 0, reserved: 2, stock: 3 })
      expectProblemCode(await holdAs(t.baseUrl, {}, t.productId, 1), 409, 'insufficient_stock')
      // Restock by 5: the big ticket is admitted by the PATCH; 4 units are left for everyone.
      expect((await patchProduct(t.baseUrl, t.productId, { add_stock: 5 })).status).toBe(200)
      expect(await ticketOf(t.baseUrl, big.ticket_id)).toMatchObject({ status: 'admitted', position: null })
      expect(await productOf(t.baseUrl, t.productId)).toMatchObject({ available_stock: 4, reserved: 4, stock: 8 })
      // With units free a ticket that fits is admitted at once, in the join's answer.
      const instant = await joined(t.baseUrl, t.productId, 3)
      expect(instant).toMatchObject({ status: 'admitted', position: null })
      expect(instant.hold_id).toMatch(/^hold_/)
      expect(await productOf(t.baseUrl, t.productId)).toMatchObject({ available_stock: 1 })
      expect(await t.audit()).toMatchObject({ ok: true, violations: [] })
    })

    it(`admits at most ${admissionsPerTransactionMax} tickets in one transaction: a larger restock admits the rest on the next sweep, and nobody else takes those units meanwhile`, async () => {
      const t = await buildTestApp(engine.name, { stock: 1 })
      await heldOut(t, t.productId, [1])
      const ticketsCount = admissionsPerTransactionMax + 52
      // In waves of joinWaveSize: 2,100 connections at once to one in-process server failed to
      // connect within fetch's 10 s once, on a loaded two-core machine (this test counts
      // admissions, not concurrency).
      const joins: Reply[] = []
      for (let from = 0; from < ticketsCount; from += joinWaveSize) {
        joins.push(...(await Promise.all(times(Math.min(joinWaveSize, ticketsCount - from), () => join(t.baseUrl, t.productId, 1)))))
      }
      expect(joins.every((reply) => reply.status === 201 && reply.body.status === 'waiting')).toBe(true)
      const admittedCount = () => t.events.filter((event) => event.name === 'waitlist.admitted').length
      expect((await patchProduct(t.baseUrl, t.productId, { add_stock: ticketsCount })).status).toBe(200)
      expect(admittedCount()).toBe(admissionsPerTransactionMax)
      // 52 units free, 52 tickets still waiting for them: direct holds see none.
      expect(await productOf(t.baseUrl, t.productId)).toMatchObject({ available_stock: 0, reserved: 1 + admissionsPerTransactionMax })
      expectProblemCode(await holdAs(t.baseUrl, {}, t.productId, 1), 409, 'insufficient_stock')
      await t.sweep()
      expect(admittedCount()).toBe(ticketsCount)
      expect(await productOf(t.baseUrl, t.productId)).toMatchObject({ available_stock: 0, reserved: 1 + ticketsCount })
      expect(await t.audit()).toMatchObject({ ok: true, violations: [] })
    })

    it(`closes at most ${limitClosesPerChangeMax} tickets in the transaction that sets per_buyer_limit; the rest close when the line reaches them`, async () => {
      const t = await buildTestApp(engine.name, { stock: 1, env: buyerEnv })
      const [holdId] = await heldOut(t, t.productId, [1])
      const ticketsCount = limitClosesPerChangeMax + 52
      const joins: Reply[] = []
      for (let from = 0; from < ticketsCount; from += joinWaveSize) {
        joins.push(...(await Promise.all(times(Math.min(joinWaveSize, ticketsCount - from), () => join(t.baseUrl, t.productId, 1)))))
      }
      expect(joins.every((reply) => reply.status === 201 && reply.body.status === 'waiting')).toBe(true)
      const closedCount = () => t.events.filter((event) => event.name === 'waitlist.closed').reduce((sum, event) => sum + Number(event.tickets), 0)
      // Anonymous tickets: none could become a hold once there is a limit.
      expect((await patchProduct(t.baseUrl, t.productId, { per_buyer_limit: 1 })).status).toBe(200)
      expect(closedCount()).toBe(limitClosesPerChangeMax)
      expect(await statuses(t.baseUrl, [joins[0]!.body.ticket_id, joins.at(-1)!.body.ticket_id])).toEqual(['closed', 'waiting'])
      // The released unit brings the line to the rest: each is judged by the limit and closed.
      expect((await request(t.baseUrl, 'DELETE', `/api/holds/${holdId}`)).status).toBe(200)
      expect(closedCount()).toBe(ticketsCount)
      expect(await productOf(t.baseUrl, t.productId)).toMatchObject({ available_stock: 1, reserved: 0 })
      expect(await t.audit()).toMatchObject({ ok: true, violations: [] })
    })

    it('pre-sale tickets wait for the start, are admitted by the sweeper alone within one pass, in a random order (statistical), before later tickets', async () => {
      const t = await buildTestApp(engine.name)
      const startsAt = isoAt(serverNowMs(t) + 60_000)
      const product = await createDropProduct(t.baseUrl, 20, { sale_starts_at: startsAt })
      const presale = []
      for (let index = 0; index < 60; index++) presale.push(await joined(t.baseUrl, product.id, 1))
      // Before the draw, positions are join order.
      expect(presale.map((ticket) => ticket.position)).toEqual(times(60, (index) => index + 1))
      expect(await productOf(t.baseUrl, product.id)).toMatchObject({ sale_status: 'upcoming', available_stock: 0 })
      await t.sweep()
      expect((await ticketOf(t.baseUrl, presale[0].ticket_id)).status).toBe('waiting')

      advanceTo(t, startsAt)
      // One sweeper pass at the start admits 20 tickets with no other request.
      await t.sweep()
      // A ticket taken after the start queues behind every pre-sale ticket still waiting.
      const late = await joined(t.baseUrl, product.id, 1)
      expect(late).toMatchObject({ status: 'waiting', position: 41 })
      const after = await statuses(
        t.baseUrl,
        presale.map((ticket) => ticket.ticket_id),
      )
      const admittedIndexes = after.flatMap((status, index) => (status === 'admitted' ? [index] : []))
      expect(admittedIndexes).toHaveLength(20)
      expect((await ticketOf(t.baseUrl, late.ticket_id)).status).toBe('waiting')
      // Random, not join order: X = how many of the first 20 joiners got in. Under a uniform draw
      // X is hypergeometric (60 tickets, 20 first joiners, 20 admitted): mean 6.7, and
      // P(X >= 15) = 2.5e-6, the bound on this line failing for a correct service. First come
      // first served would give X = 20.
      const earlyAdmitted = admittedIndexes.filter((index) => index < 20).length
      expect(earlyAdmitted).toBeLessThanOrEqual(14)
      // The waiting ones now have positions 1..40 in the drawn order, the late ticket last.
      const waitingPositions = (await Promise.all(presale.filter((_, index) => after[index] === 'waiting').map((ticket) => ticketOf(t.baseUrl, ticket.ticket_id)))).map(
        (ticket) => ticket.position,
      )
      expect(waitingPositions.sort((a, b) => a - b)).toEqual(times(40, (index) => index + 1))
      expect((await ticketOf(t.baseUrl, late.ticket_id)).position).toBe(41)
      expect(await t.audit()).toMatchObject({ ok: true, violations: [] })
    })

    it('serves a drop behind more lines than SWEEP_BATCH_MAX whose tickets do not fit: only lines the sweeper can move are visited, and the draw happens at the start', async () => {
      const t = await buildTestApp(engine.name, { env: { SWEEP_BATCH_MAX: '3' } })
      // Three older products whose one waiting ticket wants more units than they have free (2);
      // the last has sold 3 units, which the free units must not count.
      const stuck: string[] = []
      for (let index = 0; index < 3; index++) {
        const soldQty = index === 2 ? 3 : 0
        const product = await createDropProduct(t.baseUrl, 2 + soldQty)
        if (soldQty > 0) {
          const [holdId] = await heldOut(t, product.id, [soldQty])
          const order = await orderAs(t.baseUrl, {}, holdId!)
          expect(order.status, order.text).toBe(201)
          expect((await paymentOf(t.baseUrl, order.body.order_id, 'success', 'stuck-paid')).status).toBe(200)
        }
        const ticket = await joined(t.baseUrl, product.id, 5)
        expect(ticket.status).toBe('waiting')
        stuck.push(ticket.ticket_id)
      }
      const startsAt = isoAt(serverNowMs(t) + 60_000)
      const drop = await createDropProduct(t.baseUrl, 3, { sale_starts_at: startsAt })
      const presale = await joined(t.baseUrl, drop.id, 1)
      advanceTo(t, startsAt)
      // No request touches the drop: the sweeper alone draws. Before, the three stuck lines filled
      // the pass (ordered by id, at most SWEEP_BATCH_MAX) on every pass, and the ticket waited.
      const pass = await t.sweep()
      expect(pass.linesServed).toBe(1)
      expect((await ticketOf(t.baseUrl, presale.ticket_id)).status).toBe('admitted')
      expect(await statuses(t.baseUrl, stuck)).toEqual(['waiting', 'waiting', 'waiting'])
      expect((await t.sweep()).linesServed).toBe(0)
      expect(await t.audit()).toMatchObject({ ok: true, violations: [] })
    })

    it('reads the clock for each transaction of a sweeper pass: a line the pass reaches after the sale ended is closed, not admitted with the instant the pass began', async () => {
      const t = await buildTestApp(engine.name)
      const startsAt = isoAt(serverNowMs(t) + 60_000)
      const endsAt = isoAt(serverNowMs(t) + 61_500)
      const drop = await createDropProduct(t.baseUrl, 3, { sale_starts_at: startsAt, sale_ends_at: endsAt })
      const presale = await joined(t.baseUrl, drop.id, 1)
      advanceTo(t, startsAt)
      // A pass that takes time: every reading of this clock is a second after the one before.
      const slowPass: Clock = {
        now: () => {
          const instant = t.clock.now()
          t.clock.advanceMs(1_000)
          return instant
        },
      }
      await sweepOnce(t.runtime.store, t.runtime.observer, slowPass, t.config.sweepBatchMax)
      expect(serverNowMs(t)).toBeGreaterThan(Date.parse(endsAt))
      expect((await ticketOf(t.baseUrl, presale.ticket_id)).status).toBe('closed')
      expect(await productOf(t.baseUrl, drop.id)).toMatchObject({ sale_status: 'ended', reserved: 0 })
      expect(await t.audit()).toMatchObject({ ok: true, violations: [] })
    })

    it('closes waiting tickets when the sale ends, refuses joins after it with 410, and counts waiting tickets toward the per-buyer limit', async () => {
      const t = await buildTestApp(engine.name, { env: buyerEnv })
      const endsAt = isoAt(serverNowMs(t) + 60_000)
      const product = await createDropProduct(t.baseUrl, 1, { sale_ends_at: endsAt, per_buyer_limit: 2 })
      const alice = await asBuyer('alice')
      const bob = await asBuyer('bob')
      expect((await holdAs(t.baseUrl, bob, product.id, 1)).status).toBe(201)
      const ticket = await joined(t.baseUrl, product.id, 2, alice)
      expect(ticket).toMatchObject({ status: 'waiting', buyer_id: 'alice', position: 1 })
      // Waiting units count: alice has 2 of 2.
      expectLimitReached(await join(t.baseUrl, product.id, 1, alice), 2, 2)
      expectLimitReached(await holdAs(t.baseUrl, alice, product.id, 1), 2, 2)
      expectProblemCode(await join(t.baseUrl, product.id, 1), 401, 'buyer_token_required')
      advanceTo(t, endsAt)
      expect(await ticketOf(t.baseUrl, ticket.ticket_id)).toMatchObject({ status: 'closed', position: null })
      expectProblemCode(await join(t.baseUrl, product.id, 1, bob), 410, 'sale_ended')
      await t.sweep()
      expect(await ticketOf(t.baseUrl, ticket.ticket_id)).toMatchObject({ status: 'closed' })
      expect(t.events.filter((event) => event.name === 'waitlist.closed')).toHaveLength(1)
      expect((await request(t.baseUrl, 'DELETE', `/api/waitlist/${ticket.ticket_id}`)).body).toMatchObject({ status: 'closed' })
      await expectCleanAudit(t.baseUrl)
    })

    it('keeps a ticket closed once the sale ended, even if no write closed it before the end is moved later; leaving it then answers closed', async () => {
      const t = await buildTestApp(engine.name, { env: { ...buyerEnv, SWEEP_INTERVAL_MS: '3600000' } })
      const endsAt = isoAt(serverNowMs(t) + 60_000)
      const product = await createDropProduct(t.baseUrl, 1, { sale_ends_at: endsAt })
      const held = await holdAs(t.baseUrl, {}, product.id, 1)
      expect(held.status).toBe(201)
      const a = await joined(t.baseUrl, product.id, 1)
      const b = await joined(t.baseUrl, product.id, 1)
      advanceTo(t, endsAt)
      // Nothing has written the end yet: both are shown closed.
      expect(await statuses(t.baseUrl, [a.ticket_id, b.ticket_id])).toEqual(['closed', 'closed'])
      expect((await request(t.baseUrl, 'DELETE', `/api/waitlist/${b.ticket_id}`)).body).toMatchObject({ status: 'closed' })
      const reopened = await patchProduct(t.baseUrl, product.id, { sale_ends_at: isoAt(serverNowMs(t) + 3_600_000) })
      expect(reopened.status).toBe(200)
      expect(reopened.body).toMatchObject({ sale_status: 'open', available_stock: 0 })
      expect(await statuses(t.baseUrl, [a.ticket_id, b.ticket_id])).toEqual(['closed', 'closed'])
      // The unit freed goes to nobody in the old line: it is free for anyone.
      expect((await request(t.baseUrl, 'DELETE', `/api/holds/${held.body.hold_id}`)).status).toBe(200)
      expect(await statuses(t.baseUrl, [a.ticket_id, b.ticket_id])).toEqual(['closed', 'closed'])
      expect(await productOf(t.baseUrl, product.id)).toMatchObject({ available_stock: 1, reserved: 0 })
      await expectCleanAudit(t.baseUrl)
    })

    it('serves the line by the settings a product change sets: units added with an end already passed close the line, none are admitted', async () => {
      const t = await buildTestApp(engine.name, { env: buyerEnv })
      const product = await createDropProduct(t.baseUrl, 1)
      expect((await holdAs(t.baseUrl, {}, product.id, 1)).status).toBe(201)
      const ticket = await joined(t.baseUrl, product.id, 1)
      const endedAt = isoAt(serverNowMs(t))
      t.clock.advanceMs(1)
      const changed = await patchProduct(t.baseUrl, product.id, { sale_ends_at: endedAt, add_stock: 1 })
      expect(changed.status, changed.text).toBe(200)
      expect(changed.body).toMatchObject({ sale_status: 'ended', available_stock: 1, reserved: 1 })
      expect(await ticketOf(t.baseUrl, ticket.ticket_id)).toMatchObject({ status: 'closed', hold_id: null })
      expect(t.events.filter((event) => event.name === 'waitlist.closed')).toEqual([expect.objectContaining({ reason: 'sale_ended', tickets: 1 })])
      await expectCleanAudit(t.baseUrl)
    })

    it('judges again, when they are admitted, the tickets taken before per_buyer_limit changed: over the new limit (or without a buyer once there is one) they close, within it they are admitted; audit clean', async () => {
      const t = await buildTestApp(engine.name, { env: buyerEnv })
      const alice = await asBuyer('alice')
      const bob = await asBuyer('bob')
      const carol = await asBuyer('carol')
      const erin = await asBuyer('erin')
      const frank = await asBuyer('frank')
      const product = await createDropProduct(t.baseUrl, 4, { per_buyer_limit: 4 })
      const bobHold = await holdAs(t.baseUrl, bob, product.id, 4)
      expect(bobHold.status, bobHold.text).toBe(201)
      const a = await joined(t.baseUrl, product.id, 3, alice)
      const c = await joined(t.baseUrl, product.id, 1, carol)
      const e1 = await joined(t.baseUrl, product.id, 2, erin)
      const e2 = await joined(t.baseUrl, product.id, 1, erin)
      // The change closes at once what no hold could be granted for under it: alice's 3 units are
      // over 2 by themselves. The rest are within 2 by their own qty and wait, to be judged when
      // the line reaches them (a buyer's other units may lapse meanwhile).
      t.clock.advanceMs(1)
      expect((await patchProduct(t.baseUrl, product.id, { per_buyer_limit: 2 })).status).toBe(200)
      t.clock.advanceMs(1)
      // Judged against the limit of 2 when it is taken, like a hold.
      const f = await joined(t.baseUrl, product.id, 2, frank)
      expect(
        await statuses(
          t.baseUrl,
          [a, c, e1, e2, f].map((ticket) => ticket.ticket_id),
        ),
      ).toEqual(['closed', 'waiting', 'waiting', 'waiting', 'waiting'])
      expect(t.events.filter((event) => event.name === 'waitlist.closed')).toEqual([
        expect.objectContaining({ productId: product.id, qty: 3, tickets: 1, reason: 'buyer_limit_reached' }),
      ])
      await expectCleanAudit(t.baseUrl)
      // Bob's 4 units free: in line order carol's 1 fits, erin's first ticket makes 3 of her
      // units over 2 (closed; her second then counts 1), frank's 2 fit.
      expect((await request(t.baseUrl, 'DELETE', `/api/holds/${bobHold.body.hold_id}`)).status).toBe(200)
      expect(
        await statuses(
          t.baseUrl,
          [a, c, e1, e2, f].map((ticket) => ticket.ticket_id),
        ),
      ).toEqual(['closed', 'admitted', 'closed', 'admitted', 'admitted'])
      expect(await productOf(t.baseUrl, product.id)).toMatchObject({ available_stock: 0, reserved: 4 })
      const admittedHolds = await Promise.all(
        [c, e2, f].map(async (ticket) => (await request(t.baseUrl, 'GET', `/api/holds/${(await ticketOf(t.baseUrl, ticket.ticket_id)).hold_id}`)).body),
      )
      expect(admittedHolds.map((hold) => [hold.buyer_id, hold.qty, hold.status])).toEqual([
        ['carol', 1, 'active'],
        ['erin', 1, 'active'],
        ['frank', 2, 'active'],
      ])
      expect(t.events.filter((event) => event.name === 'waitlist.closed')).toEqual([
        expect.objectContaining({ productId: product.id, qty: 3, tickets: 1, reason: 'buyer_limit_reached' }),
        expect.objectContaining({ productId: product.id, qty: 2, tickets: 1, reason: 'buyer_limit_reached' }),
      ])
      // Alice was not admitted, so the closed ticket does not count: she may still buy 2.
      expect((await patchProduct(t.baseUrl, product.id, { add_stock: 2 })).status).toBe(200)
      expect((await holdAs(t.baseUrl, alice, product.id, 2)).status).toBe(201)
      await expectCleanAudit(t.baseUrl)

      // A line taken where there was no limit: once one is set, a ticket without a buyer is not
      // admitted (a hold without one is refused), and one with a buyer is judged by it.
      const open = await createDropProduct(t.baseUrl, 1)
      const held = await holdAs(t.baseUrl, {}, open.id, 1)
      const anonymous = await joined(t.baseUrl, open.id, 1)
      const carolsTwo = await joined(t.baseUrl, open.id, 2, carol)
      const carolsOne = await joined(t.baseUrl, open.id, 1, carol)
      t.clock.advanceMs(1)
      expect((await patchProduct(t.baseUrl, open.id, { per_buyer_limit: 2, add_stock: 2 })).status).toBe(200)
      // The change closes the anonymous ticket at once; with the 2 units added in the same change
      // carol's 2 come next with 3 of her units counted, over 2: closed; her 1 is then within 2:
      // admitted.
      expect(
        await statuses(
          t.baseUrl,
          [anonymous, carolsTwo, carolsOne].map((ticket) => ticket.ticket_id),
        ),
      ).toEqual(['closed', 'closed', 'admitted'])
      expect((await request(t.baseUrl, 'DELETE', `/api/holds/${held.body.hold_id}`)).status).toBe(200)
      expect(await productOf(t.baseUrl, open.id)).toMatchObject({ available_stock: 2, reserved: 1 })
      await expectCleanAudit(t.baseUrl)
    })

    it('closes, when per_buyer_limit is set or lowered, the waiting tickets no hold could be granted for under it (bigger than the limit, or without a buyer), so they keep no units from direct holds', async () => {
      const t = await buildTestApp(engine.name, { env: buyerEnv })
      const al = await asBuyer('al')
      const bo = await asBuyer('bo')
      const product = await createDropProduct(t.baseUrl, 3)
      expect((await holdAs(t.baseUrl, bo, product.id, 2)).status).toBe(201)
      // Neither fits the one free unit: both wait, and direct holds see none of it.
      const als = await joined(t.baseUrl, product.id, 3, al)
      const anonymous = await joined(t.baseUrl, product.id, 2)
      expect(await productOf(t.baseUrl, product.id)).toMatchObject({ available_stock: 0 })
      expectProblemCode(await holdAs(t.baseUrl, bo, product.id, 1), 409, 'insufficient_stock')
      t.clock.advanceMs(1)
      expect((await patchProduct(t.baseUrl, product.id, { per_buyer_limit: 2 })).status).toBe(200)
      expect(await statuses(t.baseUrl, [als.ticket_id, anonymous.ticket_id])).toEqual(['closed', 'closed'])
      expect(t.events.filter((event) => event.name === 'waitlist.closed')).toEqual([
        expect.objectContaining({ productId: product.id, qty: 5, tickets: 2, reason: 'buyer_limit_reached' }),
      ])
      expect(await productOf(t.baseUrl, product.id)).toMatchObject({ available_stock: 1, reserved: 2 })
      expect((await holdAs(t.baseUrl, al, product.id, 1)).status).toBe(201)
      await expectCleanAudit(t.baseUrl)
    })

    it('serves the line with what a hold reclaims before judging the hold: a ticket its buyer is now over the limit with closes and no longer keeps its units from it', async () => {
      const t = await buildTestApp(engine.name, { env: { ...buyerEnv, HOLD_TTL_SECONDS: '60' } })
      const bob = await asBuyer('bob')
      const carol = await asBuyer('carol')
      const eve = await asBuyer('eve')
      const product = await createDropProduct(t.baseUrl, 4, { per_buyer_limit: 4 })
      expect((await holdAs(t.baseUrl, carol, product.id, 2)).status).toBe(201)
      t.clock.advanceMs(30_000)
      expect((await holdAs(t.baseUrl, bob, product.id, 1)).status).toBe(201)
      const bobs = await joined(t.baseUrl, product.id, 2, bob)
      expect(bobs.status).toBe('waiting')
      t.clock.advanceMs(1)
      // Within 2 by its own qty, so it waits; with Bob's hold he would have 3.
      expect((await patchProduct(t.baseUrl, product.id, { per_buyer_limit: 2 })).status).toBe(200)
      expect(await ticketOf(t.baseUrl, bobs.ticket_id)).toMatchObject({ status: 'waiting' })
      // Carol's hold lapses, not yet swept: Eve's hold of 2 reclaims its units, which with the
      // free one fit Bob's ticket, judged then: over 2, closed. Eve's 2 units are then free.
      t.clock.advanceMs(30_000)
      expect(await productOf(t.baseUrl, product.id)).toMatchObject({ available_stock: 1, reserved: 3 })
      const eves = await holdAs(t.baseUrl, eve, product.id, 2)
      expect(eves.status, eves.text).toBe(201)
      expect(await ticketOf(t.baseUrl, bobs.ticket_id)).toMatchObject({ status: 'closed', hold_id: null })
      expect(t.events.filter((event) => event.name === 'waitlist.closed')).toEqual([
        expect.objectContaining({ productId: product.id, qty: 2, tickets: 1, reason: 'buyer_limit_reached' }),
      ])
      expect(await productOf(t.baseUrl, product.id)).toMatchObject({ available_stock: 1, reserved: 3 })
      await expectCleanAudit(t.baseUrl)
    })

    it('leaves the line (200, again 200), refuses to leave once admitted (409), replays a keyed join, and refuses bad input with stable codes', async () => {
      const t = await buildTestApp(engine.name, { stock: 1 })
      const [holdId] = await heldOut(t, t.productId, [1])
      const leaving = await joined(t.baseUrl, t.productId, 1)
      const staying = await joined(t.baseUrl, t.productId, 1)
      const left = await request(t.baseUrl, 'DELETE', `/api/waitlist/${leaving.ticket_id}`)
      expect(left.status).toBe(200)
      expect(left.body).toMatchObject({ status: 'left', position: null })
      expect((await request(t.baseUrl, 'DELETE', `/api/waitlist/${leaving.ticket_id}`)).body).toMatchObject({ status: 'left' })
      expect((await ticketOf(t.baseUrl, staying.ticket_id)).position).toBe(1)
      await request(t.baseUrl, 'DELETE', `/api/holds/${holdId}`)
      expect(await ticketOf(t.baseUrl, leaving.ticket_id)).toMatchObject({ status: 'left' })
      const admitted = await ticketOf(t.baseUrl, staying.ticket_id)
      expect(admitted.status).toBe('admitted')
      const refused = await request(t.baseUrl, 'DELETE', `/api/waitlist/${staying.ticket_id}`)
      expectProblemCode(refused, 409, 'ticket_admitted')
      expect(refused.body.hold_id).toBe(admitted.hold_id)

      const keyed = { 'idempotency-key': 'join-once' }
      const firstJoin = await join(t.baseUrl, t.productId, 1, keyed)
      const replay = await join(t.baseUrl, t.productId, 1, keyed)
      expect(replay.status).toBe(201)
      expect(replay.headers.get('idempotent-replayed')).toBe('true')
      expect(replay.body.ticket_id).toBe(firstJoin.body.ticket_id)
      expectProblemCode(await join(t.baseUrl, t.productId, 2, keyed), 422, 'idempotency_key_reused')
      // `quantity` is the alias of `qty` here as on holds: the same join, so the same key replays it.
      const aliased = await request(t.baseUrl, 'POST', `/api/products/${t.productId}/waitlist`, { body: { quantity: 1 }, headers: keyed })
      expect(aliased.status).toBe(201)
      expect(aliased.headers.get('idempotent-replayed')).toBe('true')
      expect(aliased.body.ticket_id).toBe(firstJoin.body.ticket_id)
      const byAlias = await request(t.baseUrl, 'POST', `/api/products/${t.productId}/waitlist`, { body: { quantity: 2 } })
      expect(byAlias.status).toBe(201)
      expect(byAlias.body).toMatchObject({ qty: 2, status: 'waiting' })

      expectProblemCode(await join(t.baseUrl, 999_999, 1), 404, 'product_not_found')
      expectProblemCode(await request(t.baseUrl, 'POST', '/api/products/abc/waitlist', { body: { qty: 1 } }), 404, 'product_not_found')
      for (const body of [{ qty: 0 }, { qty: 11 }, { qty: 'x' }, {}, { qty: 1.5 }, { quantity: 0 }, { quantity: 1.5 }, { qty: 1, quantity: 2 }]) {
        expectProblemCode(await request(t.baseUrl, 'POST', `/api/products/${t.productId}/waitlist`, { body }), 422, 'validation_failed')
      }
      // The body is judged before the product, whichever field carries the quantity.
      expectProblemCode(await request(t.baseUrl, 'POST', '/api/products/999999/waitlist', { body: {} }), 422, 'validation_failed')
      expectProblemCode(await request(t.baseUrl, 'GET', '/api/waitlist/tkt_nothing_here'), 404, 'ticket_not_found')
      expectProblemCode(await request(t.baseUrl, 'DELETE', '/api/waitlist/tkt_nothing_here'), 404, 'ticket_not_found')
      expectProblemCode(await request(t.baseUrl, 'GET', `/api/waitlist/${'x'.repeat(300)}`), 404, 'ticket_not_found')
      expect(await t.audit()).toMatchObject({ ok: true, violations: [] })
    })

    it('3 processes, 200 tickets, holds released and expiring while sweepers race: every freed unit admits one ticket once, audit clean', async () => {
      const cluster = await startCluster(engine.name, { processes: 3, stock: 100, env: { HOLD_TTL_SECONDS: '1', SWEEP_INTERVAL_MS: '20', LOG_LEVEL: 'info' } })
      const { servers, productId } = cluster
      const holds = await Promise.all(times(100, (index) => request(serverFor(servers, index).baseUrl, 'POST', '/api/holds', { body: { product_id: productId, qty: 1 } })))
      expect(holds.every((reply) => reply.status === 201)).toBe(true)
      // Joins and releases of half the holds at once, on every process; the rest lapse.
      const startedAtMs = Date.now()
      const [joins] = await Promise.all([
        Promise.all(times(200, (index) => join(serverFor(servers, index).baseUrl, productId, 1))),
        Promise.all(holds.slice(0, 50).map((hold, index) => request(serverFor(servers, index + 1).baseUrl, 'DELETE', `/api/holds/${hold.body.hold_id}`))),
      ])
      expect(joins.every((reply) => reply.status === 201)).toBe(true)
      const ticketIds = joins.map((reply) => reply.body.ticket_id as string)
      // Every admitted hold lapses after 1 s and frees its unit for the next ticket, so all 200 get in.
      await pollUntil(
        async () => (await statuses(servers[0]!.baseUrl, ticketIds)).filter((status) => status === 'admitted').length,
        (count) => count === 200,
        { timeoutMs: 60_000, intervalMs: 200, what: 'all 200 tickets admitted' },
      )
      const views = await Promise.all(ticketIds.map((ticketId) => ticketOf(servers[1 % servers.length]!.baseUrl, ticketId)))
      expect(new Set(views.map((view) => view.hold_id)).size).toBe(200)
      const admittedLogged = logEvents(servers, 'waitlist.admitted')
      const byProcess = servers.map((server) => logEvents([server], 'waitlist.admitted').length)
      console.log(
        `[waitlist race] ${engine.name}: 200 tickets admitted in ${Date.now() - startedAtMs} ms, by process ${byProcess.join('/')}, tx.retry ${logEvents(servers, 'tx.retry').length}`,
      )
      expect(admittedLogged).toHaveLength(200)
      expect(new Set(admittedLogged.map((line) => line.ticketId)).size).toBe(200)
      expect(await cluster.audit()).toMatchObject({ ok: true, violations: [] })
    }, 120_000)
  })
}
