// A seeded stream of integers drawn from fast-check's random source in blocks: the same seed
// gives the same run, and a run of any length costs one fc.sample call per block.
import fc from 'fast-check'

const blockSize = 4096

export class SimRandom {
  private block: number[] = []
  private index = 0
  private blockCount = 0

  constructor(readonly seed: number) {}

  private next(): number {
    if (this.index >= this.block.length) {
      // Each block its own seed, derived from the run's seed and the block's number.
      this.block = fc.sample(fc.nat({ max: 0x7fffffff }), { seed: (this.seed + this.blockCount * 0x9e3779b1) | 0, numRuns: blockSize })
      this.blockCount += 1
      this.index = 0
    }
    return this.block[this.index++]!
  }

  // An integer in [min, max].
  int(min: number, max: number): number {
    return min + (this.next() % (max - min + 1))
  }

  chance(probability: number): boolean {
    return this.next() / 0x80000000 < probability
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(0, items.length - 1)]!
  }

  // A weighted choice among named kinds.
  weighted<K extends string>(weights: Readonly<Record<K, number>>): K {
    const entries = Object.entries(weights) as Array<[K, number]>
    const total = entries.reduce((sum, [, weight]) => sum + weight, 0)
    let roll = this.int(0, total - 1)
    for (const [kind, weight] of entries) {
      if (roll < weight) return kind
      roll -= weight
    }
    return entries[entries.length - 1]![0]
  }
}
