// The bounded cache behind buyer tokens, SQLite's prepared statements and the hot statements' texts
// (weighed by their length): never above its bound,
// never a value other than the last one set for a key, and what was just set or just read stays.
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { GenerationCache } from '../src/domain/generation-cache.js'

type Op = { kind: 'set'; key: number; value: number } | { kind: 'get'; key: number } | { kind: 'delete'; key: number }

const opArbitrary: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constant('set' as const), key: fc.integer({ min: 0, max: 40 }), value: fc.integer() }),
  fc.record({ kind: fc.constant('get' as const), key: fc.integer({ min: 0, max: 40 }) }),
  fc.record({ kind: fc.constant('delete' as const), key: fc.integer({ min: 0, max: 40 }) }),
)

// Runs the ops on the cache beside a model (the last value set for each key, or none after a
// delete), checking every answer and the bound after every op.
function checkAgainstModel(cache: GenerationCache<number, number>, ops: readonly Op[], weightMax: number, weigh: (value: number) => number): void {
  const last = new Map<number, number>()
  for (const op of ops) {
    if (op.kind === 'set') {
      cache.set(op.key, op.value)
      last.set(op.key, op.value)
      // What was just set stays, unless it outweighs a generation (never kept).
      expect(cache.get(op.key)).toBe(weigh(op.value) <= Math.floor(weightMax / 2) ? op.value : undefined)
    } else if (op.kind === 'delete') {
      cache.delete(op.key)
      last.delete(op.key)
      expect(cache.get(op.key)).toBeUndefined()
    } else {
      const value = cache.get(op.key)
      // Forgetting is allowed; answering something other than the last value is not.
      if (value !== undefined) expect(value).toBe(last.get(op.key))
      if (value !== undefined) expect(cache.get(op.key)).toBe(value)
    }
    expect(cache.keptWeight()).toBeLessThanOrEqual(weightMax)
  }
}

describe('GenerationCache', () => {
  it('stays within its bound and answers only the last value set for a key', () => {
    fc.assert(
      fc.property(fc.integer({ min: 2, max: 12 }), fc.array(opArbitrary, { maxLength: 300 }), (entriesMax, ops) => {
        const cache = new GenerationCache<number, number>(entriesMax)
        checkAgainstModel(cache, ops, entriesMax, () => 1)
        expect(cache.size).toBeLessThanOrEqual(entriesMax)
      }),
      { numRuns: 500 },
    )
  })

  it('weighed, stays within its weight bound, keeps what was just set unless it outweighs a generation, and answers only the last value', () => {
    fc.assert(
      fc.property(fc.integer({ min: 2, max: 400 }), fc.array(opArbitrary, { maxLength: 300 }), (weightMax, ops) => {
        // A value's weight is its size, as for a statement's text.
        const weigh = (value: number): number => (Math.abs(value) % 97) + 1
        checkAgainstModel(new GenerationCache<number, number>(weightMax, weigh), ops, weightMax, weigh)
      }),
      { numRuns: 500 },
    )
  })

  it('keeps a key read in every generation however many new keys pass through', () => {
    const cache = new GenerationCache<string, number>(10)
    cache.set('buyer', 1)
    for (let index = 0; index < 1000; index++) {
      cache.set(`other-${index}`, index)
      expect(cache.get('buyer')).toBe(1)
    }
    expect(cache.size).toBeLessThanOrEqual(10)
  })

  it('forgets a key nobody reads once two generations have passed', () => {
    const cache = new GenerationCache<string, number>(4)
    cache.set('once', 1)
    for (let index = 0; index < 4; index++) cache.set(`other-${index}`, index)
    expect(cache.get('once')).toBeUndefined()
  })
})
