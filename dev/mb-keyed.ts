import pino from 'pino'
import { loadConfig } from '../src/config.js'
import { openRuntime } from '../src/runtime.js'
import { createServices } from '../src/domain/services.js'
const config = loadConfig({ DATABASE_URL: process.env.MB_URL ?? `sqlite:///tmp/mb/k-${process.pid}.db`, LOG_LEVEL: 'silent', SEED_STOCK: '0' })
const runtime = openRuntime(config, { logger: pino({ level: 'silent' }) })
await runtime.store.migrate()
const services = createServices(runtime.store, runtime.clock, runtime.observer, config)
const plain = await services.catalog.create({ name: 'p', priceMinor: 100, currency: 'USD', stock: 100_000_000 })
const batch = 170, rounds = Number(process.env.MB_ROUNDS ?? 300)
const keyed = process.env.MB_KEYED === '1'
const t = performance.now()
for (let r = 0; r < rounds; r++) await Promise.all(Array.from({ length: batch }, (_, i) => services.holds.create({ productId: plain.id, qty: 1, idempotencyKey: keyed ? `k-${r}-${i}-${Math.random()}` : null })))
console.log(keyed ? 'keyed' : 'plain', (((performance.now() - t) * 1000) / (rounds * batch)).toFixed(1), 'µs per hold')
await runtime.store.close()
