// The simulation's test on one engine, one file per engine (simulation-*.test.ts) so the test
// runner spreads the three long runs over its workers instead of running them one after another.
// SIM_OPS sets the operations per engine (10,000 by default, as in CI); SIM_SEED replays a seed,
// or draws one with SIM_SEED=random; SIM_AUDIT_EVERY how often the whole audit runs (the counts
// are compared after every step). A failure names its seed and the `npm run simulate` command
// that replays it.
import { describe, expect, it } from 'vitest'
import type { EngineName } from '../../src/config.js'
import { testEngines } from '../helpers/engines.js'
import { scratchDatabase } from './databases.js'
import { coverageGaps, runSimulation } from './driver.js'

const ops = Number(process.env.SIM_OPS ?? 10_000)
const auditEvery = Number(process.env.SIM_AUDIT_EVERY ?? 10)
// 10,000 operations take about 1 min on SQLite and 2 on PostgreSQL and MySQL on a quiet two-core
// machine (about 170 and 90 ops/s); in CI, beside the other test files, up to 4 times that.
const timeoutMs = 40 * 60_000

// Without SIM_SEED each engine runs its own fixed seed, so a red run is the change's doing and
// the same seed replays it. A seed drawn at random in every CI run found a defect (the ninth
// session's) only when a later, unrelated change was being landed, and held that change back;
// exploring new seeds is `npm run simulate` (a random seed by default) or SIM_SEED=random.
const fixedSeeds: Record<EngineName, number> = { sqlite: 101, postgres: 201, mysql: 301 }

function seedFor(engineName: EngineName): number {
  const wanted = process.env.SIM_SEED
  if (wanted === undefined) return fixedSeeds[engineName]
  if (wanted === 'random') return Math.floor(Math.random() * 0x7fffffff)
  const seed = Number(wanted)
  if (!Number.isSafeInteger(seed)) throw new Error(`SIM_SEED must be an integer or random, got ${wanted}`)
  return seed
}

export function simulationSuite(engineName: EngineName): void {
  const engine = testEngines().find((candidate) => candidate.name === engineName)
  describe.skipIf(!engine?.available)(`${engineName}: simulation`, () => {
    it(
      `${ops} random operations with restarts: every answer as the model predicts, counts and audit clean`,
      async () => {
        const seed = seedFor(engineName)
        console.log(`simulation on ${engineName}: seed ${seed}, ${ops} operations (replay: npm run simulate -- --engine ${engineName} --seed ${seed} --ops ${ops})`)
        const database = await scratchDatabase(engineName)
        try {
          const stats = await runSimulation({ engine: engineName, databaseUrl: database.url, seed, ops, auditEvery })
          console.log(
            `simulation on ${engineName}: ${stats.ops} ops in ${(stats.elapsedMs / 1000).toFixed(1)} s (${(stats.ops / (stats.elapsedMs / 1000)).toFixed(0)} ops/s), ` +
              `${stats.restarts} restarts, ${stats.abandoned} requests abandoned, ${stats.sweeps} sweeps, ${stats.audits} audits, ` +
              `${stats.admissions} tickets admitted, ${stats.closedByLimit} closed by a changed limit; answers ${JSON.stringify(stats.byStatus)}`,
          )
          expect(stats.ops).toBe(ops)
          // The run must have exercised what it claims to (from coverageOpsMin operations on).
          expect(coverageGaps(stats)).toEqual([])
          expect(stats.anomalies).toEqual([])
        } finally {
          await database.drop()
        }
      },
      timeoutMs,
    )
  })
}
