import pino from 'pino'
import { loadConfig } from '../src/config.js'
import { openRuntime } from '../src/runtime.js'
import { createServices } from '../src/domain/services.js'
const file = `/tmp/mb/mb-${process.pid}.db`
const config = loadConfig({ DATABASE_URL: process.env.MB_URL ?? `sqlite://${file}`, LOG_LEVEL: 'silent', SEED_STOCK: '0' })
const runtime = openRuntime(config, { logger: pino({ level: 'silent' }) })
await runtime.store.migrate()
const services = createServices(runtime.store, runtime.clock, runtime.observer, config)
const plain = await services.catalog.create({ name: 'p', priceMinor: 100, currency: 'USD', stock: 10_000_000 })
const limited = await services.catalog.create({ name: 'b', priceMinor: 100, currency: 'USD', stock: 10_000_000, perBuyerLimit: 5 } as any)
const batch = 170, rounds = Number(process.env.MB_ROUNDS ?? 150)
let buyer = 0
for (const round of [0, 1]) for (const [label, productId, withBuyer, keyed] of [['plain', plain.id, false, false], ['keyed', plain.id, false, true], ['buyer', limited.id, true, false]] as const) {
  const t = performance.now()
  for (let r = 0; r < rounds; r++) {
    await Promise.all(Array.from({ length: batch }, (_, i) => services.holds.create({ productId, qty: 1, idempotencyKey: keyed ? `k-${round}-${r}-${i}-${Math.random()}` : null, buyerId: withBuyer ? `bench-buyer-${(buyer++) % 25000}` : null })))
  }
  const ms = performance.now() - t
  console.log(`round ${round} ${label}: ${((ms * 1000) / (rounds * batch)).toFixed(1)} µs per hold (${(ms / rounds).toFixed(2)} ms per batch of ${batch})`)
}
await runtime.store.close()
