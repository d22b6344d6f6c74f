// What a keyed request stores with its key must stay readable by every version that may replay
// it: the hold encoder and the fingerprint are fast paths that must give exactly the text of the
// general ones (JSON.stringify, a sha256 Hash object) that older rows were written with.
import { createHash } from 'node:crypto'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { IsoTextMemo } from '../src/domain/clock.js'
import { encodeHold, reviveHold } from '../src/domain/holds.js'
import { fingerprintOf } from '../src/domain/idempotency.js'
import type { Hold, HoldStatus } from '../src/domain/store.js'

const statuses: HoldStatus[] = ['active', 'converted', 'expired', 'released']
// Years 1970..2999 in milliseconds: the dates a hold can carry.
const instant = fc.integer({ min: 0, max: 32_503_680_000_000 }).map((timeMs) => new Date(timeMs))

const holdArbitrary: fc.Arbitrary<Hold> = fc.record({
  id: fc.string({ unit: 'grapheme', maxLength: 64 }),
  productId: fc.integer({ min: 1, max: 2_147_483_647 }),
  qty: fc.integer({ min: 1, max: 1000 }),
  status: fc.constantFrom(...statuses),
  expiresAt: instant,
  createdAt: instant,
  buyerId: fc.option(fc.string({ unit: 'grapheme', maxLength: 255 }), { nil: null }),
})

describe('stored answers', () => {
  it('encodes a hold as JSON.stringify does, and revives it whole', () => {
    fc.assert(
      fc.property(fc.array(holdArbitrary, { minLength: 1, maxLength: 8 }), (holds) => {
        // Several holds in a row, as in a batch: the date memos must not leak between them.
        for (const hold of holds) {
          const text = encodeHold(hold)
          expect(text).toBe(JSON.stringify(hold))
          expect(reviveHold(text)).toEqual(hold)
        }
      }),
      { numRuns: 500 },
    )
  })

  it('encodes quotes, backslashes and control characters in ids and buyers as JSON', () => {
    const hold: Hold = {
      id: 'hold_"\\\n\u0000',
      productId: 7,
      qty: 2,
      status: 'active',
      expiresAt: new Date('2026-11-26T12:10:00.000Z'),
      createdAt: new Date('2026-11-26T12:00:00.000Z'),
      buyerId: 'buyer "\u2028',
    }
    expect(encodeHold(hold)).toBe(JSON.stringify(hold))
  })

  it('fingerprints as a sha256 Hash object of the JSON of the parts', () => {
    fc.assert(
      fc.property(fc.array(fc.oneof(fc.string({ unit: 'grapheme' }), fc.integer(), fc.constant(null)), { maxLength: 5 }), (parts) => {
        const expected = createHash('sha256').update(JSON.stringify(parts)).digest('base64url')
        expect(fingerprintOf(parts)).toBe(expected)
      }),
      { numRuns: 300 },
    )
  })

  it('remembers one instant per memo and formats a new one when it changes', () => {
    const memo = new IsoTextMemo()
    const first = new Date('2026-11-26T12:00:00.000Z')
    const second = new Date('2026-11-26T12:00:00.001Z')
    expect(memo.of(first)).toBe(first.toISOString())
    expect(memo.of(new Date(first.getTime()))).toBe(first.toISOString())
    expect(memo.of(second)).toBe(second.toISOString())
    expect(memo.of(first)).toBe(first.toISOString())
  })
})
