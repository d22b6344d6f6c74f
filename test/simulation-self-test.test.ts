// The simulation's self-test: the deterministic simulation (test/sim) must be able to fail. Its
// runs on each engine are simulation-sqlite, -postgres and -mysql.test.ts.
import { describe, expect, it } from 'vitest'
import { scratchDatabase } from './sim/databases.js'
import { runSimulation, SimFailure } from './sim/driver.js'

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
