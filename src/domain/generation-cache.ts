// A cache bounded by the total weight of its entries (by default 1 each: a bound on entries) that
// forgets in bulk. New entries go into the current generation; once it would pass half the bound
// it becomes the previous generation, and the one before is dropped whole. A hit in the previous
// generation moves forward, so entries in use stay. An entry heavier than half the bound is not
// kept at all.
// Why not a Map evicting its first key (FIFO): V8 walks the deleted slots at the front of a Map
// on every keys().next(), so at 10,000 entries each insert cost 6.6 µs (0.2 µs here), and the
// buyer-token cache inserts once per new buyer.
import { assert } from './assert.js'

export class GenerationCache<K, V> {
  private current = new Map<K, V>()
  private previous = new Map<K, V>()
  private currentWeight = 0
  private previousWeight = 0
  private readonly generationMax: number

  // `weigh` must give the same weight for a value every time it is asked.
  constructor(
    weightMax: number,
    private readonly weigh: (value: V) => number = () => 1,
  ) {
    assert(Number.isSafeInteger(weightMax) && weightMax >= 2, 'a cache holds two generations of at least one entry')
    this.generationMax = Math.floor(weightMax / 2)
  }

  get size(): number {
    return this.current.size + this.previous.size
  }

  // The weight of what is kept, summed from the entries themselves.
  keptWeight(): number {
    let weight = 0
    for (const value of this.current.values()) weight += this.weigh(value)
    for (const value of this.previous.values()) weight += this.weigh(value)
    return weight
  }

  get(key: K): V | undefined {
    const value = this.current.get(key)
    if (value !== undefined) return value
    const older = this.previous.get(key)
    if (older !== undefined) {
      this.previous.delete(key)
      this.previousWeight -= this.weigh(older)
      this.set(key, older)
    }
    return older
  }

  set(key: K, value: V): void {
    this.delete(key)
    const weight = this.weigh(value)
    if (weight > this.generationMax) return
    if (this.currentWeight + weight > this.generationMax) {
      this.previous = this.current
      this.previousWeight = this.currentWeight
      this.current = new Map()
      this.currentWeight = 0
    }
    this.current.set(key, value)
    this.currentWeight += weight
  }

  delete(key: K): void {
    const value = this.current.get(key)
    if (value !== undefined) {
      this.current.delete(key)
      this.currentWeight -= this.weigh(value)
    }
    const older = this.previous.get(key)
    if (older !== undefined) {
      this.previous.delete(key)
      this.previousWeight -= this.weigh(older)
    }
  }
}
