// Hold and order ids (SPEC §3): unguessable (96 random bits each), valid in a path, and, so
// inserts stay on the right-hand pages of the id index, sorting in creation order byte-wise.
import { describe, expect, it } from 'vitest'
import { isResourceId, newHoldIds, newOrderId } from '../src/domain/ids.js'

const randomCharsBase64url = 16 // 12 bytes

function byteOrder(left: string, right: string): number {
  return Buffer.compare(Buffer.from(left), Buffer.from(right))
}

describe('ids', () => {
  it('gives each hold of a batch its own id, usable in a path, with 96 random bits after the time', () => {
    const now = new Date('2026-11-21T12:00:00.000Z')
    const ids = newHoldIds(1000, now)
    expect(new Set(ids).size).toBe(1000)
    for (const id of ids) {
      expect(isResourceId(id)).toBe(true)
      expect(id).toMatch(/^hold_[A-Za-z0-9_-]{8}[A-Za-z0-9_-]{16}$/)
    }
    // Same moment, same prefix; the random parts differ in more than a few characters.
    const prefixes = new Set(ids.map((id) => id.slice(0, 'hold_'.length + 8)))
    expect(prefixes.size).toBe(1)
    const suffixes = ids.map((id) => id.slice(-randomCharsBase64url))
    const firstChars = new Set(suffixes.map((suffix) => suffix[0]))
    expect(firstChars.size).toBeGreaterThan(32)
  })

  it('sorts ids made later after ids made earlier, byte by byte, across every digit of the time', () => {
    // Each step crosses a different digit of the base-64 time, including ones where the digit
    // wraps from the last character of the alphabet to the first.
    const startMs = Date.parse('2026-11-21T12:00:00.000Z')
    const stepsMs = [1, 63, 64, 65, 4095, 4096, 262_143, 262_144, 86_400_000, 365 * 86_400_000]
    for (const stepMs of stepsMs) {
      const earlier = newHoldIds(1, new Date(startMs))[0]!
      const later = newHoldIds(1, new Date(startMs + stepMs))[0]!
      expect(byteOrder(earlier, later), `step ${stepMs} ms`).toBeLessThan(0)
      const earlierOrder = newOrderId(new Date(startMs))
      const laterOrder = newOrderId(new Date(startMs + stepMs))
      expect(byteOrder(earlierOrder, laterOrder), `order step ${stepMs} ms`).toBeLessThan(0)
    }
    // A sweep over consecutive milliseconds: every prefix is strictly greater than the one before.
    let previous = ''
    for (let offsetMs = 0; offsetMs < 5000; offsetMs++) {
      const prefix = newHoldIds(1, new Date(startMs + offsetMs))[0]!.slice(0, 'hold_'.length + 8)
      expect(byteOrder(previous, prefix)).toBeLessThan(0)
      previous = prefix
    }
  })

  it('makes order ids of the same shape, distinct from hold ids', () => {
    const now = new Date()
    const ids = Array.from({ length: 200 }, () => newOrderId(now))
    expect(new Set(ids).size).toBe(200)
    for (const id of ids) {
      expect(isResourceId(id)).toBe(true)
      expect(id).toMatch(/^ord_[A-Za-z0-9_-]{8}[A-Za-z0-9_-]{16}$/)
    }
  })
})
