// The deterministic simulation (test/sim) on every engine: seeded random holds, releases,
// orders, webhooks (duplicate, concurrent, reordered, early, late, failed, wrong amount), clock
// advances across the TTLs, sweeps and restarts that abandon requests in flight, each answer
// compared with the reference model, the counts checked after every step and the audit after
// every SIM_AUDIT_EVERY steps (and after every restart, sweep and clock advance).
// SIM_OPS sets the operations per engine (10,000 by default); SIM_SEED replays a seed.
// A failure names its seed and the `npm run simulate` command that replays it.
import { describe, expect, it } from 'vitest'
import { testEngines } from './helpers/engines.js'
import { scratchDatabase } from './sim/databases.js'
import { runSimulation, SimFailure } from './sim/driver.js'

const ops = Number(process.env.SIM_OPS ?? 10_000)
const auditEvery = Number(process.env.SIM_AUDIT_EVERY ?? 10)
// 10,000 operations took 4 min on SQLite and about 15 on PostgreSQL and MySQL (10-12 ops/s) on
// two cores under a load average of 25; the timeout leaves room for that.
const timeoutMs = 40 * 60_000

function seedFor(): number {
  return process.env.SIM_SEED === undefined ? Math.floor(Math.random() * 0x7fffffff) : Number(process.env.SIM_SEED)
}

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: simulation`, () => {
    it(
      `${ops} random operations with restarts: every answer as the model predicts, counts and audit clean`,
      async () => {
        const seed = seedFor()
        console.log(`simulation on ${engine.name}: seed ${seed}, ${ops} operations (replay: npm run simulate -- --engine ${engine.name} --seed ${seed} --ops ${ops})`)
        const database = await scratchDatabase(engine.name)
        try {
          const stats = await runSimulation({ engine: engine.name, databaseUrl: database.url, seed, ops, auditEvery })
          console.log(
            `simulation on ${engine.name}: ${stats.ops} ops in ${(stats.elapsedMs / 1000).toFixed(1)} s (${(stats.ops / (stats.elapsedMs / 1000)).toFixed(0)} ops/s), ` +
              `${stats.restarts} restarts, ${stats.abandoned} requests abandoned, ${stats.sweeps} sweeps, ${stats.audits} audits; answers ${JSON.stringify(stats.byStatus)}`,
          )
          expect(stats.ops).toBe(ops)
          // The run must have exercised what it claims to.
          if (ops >= 10_000) {
            expect(stats.restarts).toBeGreaterThan(0)
            expect(stats.abandoned).toBeGreaterThan(0)
            for (const status of ['200', '201', '202', '404', '409', '410', '422']) expect(stats.byStatus[status] ?? 0).toBeGreaterThan(0)
          }
          expect(stats.anomalies).toEqual([])
        } finally {
          await database.drop()
        }
      },
      timeoutMs,
    )
  })
}

// The simulation can fail: a model one millisecond off on the hold TTL disagrees with the service
// at the first clock advance that lands on an expiry instant.
describe('simulation self-test', () => {
  it('a model with a skewed hold TTL is caught, with its seed in the message', async () => {
    const database = await scratchDatabase('sqlite')
    try {
      const run = runSimulation({
        engine: 'sqlite',
        databaseUrl: database.url,
        seed: 7,
        ops: 2000,
        auditEvery: 50,
        skewModel: (settings) => ({ ...settings, holdTtlMs: settings.holdTtlMs + 1 }),
      })
      await expect(run).rejects.toThrow(SimFailure)
      await expect(run).rejects.toThrow(/seed 7 \(replay: npm run simulate -- --engine sqlite --seed 7/)
    } finally {
      await database.drop()
    }
  }, 120_000)
})
