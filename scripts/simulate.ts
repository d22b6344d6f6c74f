// npm run simulate -- --ops N [--seed S] [--engine sqlite|postgres|mysql] [--audit-every K]
// Runs the deterministic simulation (test/sim) as long as asked; prints the seed first and, on
// failure, the command that replays it. PostgreSQL and MySQL need TEST_POSTGRES_URL / TEST_MYSQL_URL.
import { parseArgs } from 'node:util'
import type { EngineName } from '../src/config.js'
import { scratchDatabase } from '../test/sim/databases.js'
import { coverageGaps, runSimulation, type SimStats } from '../test/sim/driver.js'

const { values } = parseArgs({
  options: {
    ops: { type: 'string', default: '10000' },
    seed: { type: 'string' },
    engine: { type: 'string', default: 'sqlite' },
    'audit-every': { type: 'string', default: '1' },
  },
})
const ops = Number(values.ops)
const seed = values.seed === undefined ? Math.floor(Math.random() * 0x7fffffff) : Number(values.seed)
const engine = values.engine as EngineName
const auditEvery = Number(values['audit-every'])
if (!Number.isSafeInteger(ops) || ops < 1) throw new Error(`--ops must be a positive integer, got ${values.ops}`)
if (!Number.isSafeInteger(seed)) throw new Error(`--seed must be an integer, got ${values.seed}`)
if (!['sqlite', 'postgres', 'mysql'].includes(engine)) throw new Error(`--engine must be sqlite, postgres or mysql, got ${engine}`)
if (!Number.isSafeInteger(auditEvery) || auditEvery < 1) throw new Error(`--audit-every must be a positive integer, got ${values['audit-every']}`)

const replay = `npm run simulate -- --engine ${engine} --seed ${seed} --ops ${ops}`
console.log(`simulate: engine ${engine}, seed ${seed}, ${ops} operations (replay: ${replay})`)

function summary(stats: SimStats): string {
  const rate = stats.ops / (stats.elapsedMs / 1000)
  return `${stats.ops} ops in ${(stats.elapsedMs / 1000).toFixed(1)} s (${rate.toFixed(0)} ops/s), ${stats.restarts} restarts (${stats.abandoned} requests abandoned), ${stats.sweeps} sweeps, ${stats.audits} audits`
}

const database = await scratchDatabase(engine)
let exitCode = 0
try {
  const progressEvery = Math.max(1000, Math.floor(ops / 100))
  const stats = await runSimulation({
    engine,
    databaseUrl: database.url,
    seed,
    ops,
    auditEvery,
    onProgress: (done, current) => {
      if (done % progressEvery === 0) console.log(`  ${summary(current)}`)
    },
  })
  console.log(`ok: ${summary(stats)}`)
  console.log(`  commands: ${JSON.stringify(stats.byKind)}`)
  console.log(`  answers by status: ${JSON.stringify(stats.byStatus)}`)
  console.log(`  refusals by code: ${JSON.stringify(stats.byCode)}`)
  console.log(`  late payments refused a recovery by the buyer's limit: ${stats.recoveriesRefusedByLimit}`)
  console.log(`  waitlist tickets admitted: ${stats.admissions}; closed by a per_buyer_limit changed since they were taken (at the change, or when reached): ${stats.closedByLimit}`)
  if (stats.anomalies.length > 0) {
    exitCode = 1
    console.error(`ANOMALIES (the test fails on these): ${stats.anomalies.length}, first: ${stats.anomalies[0]}`)
  }
  // What the test would refuse: a seed CI could run must exercise everything it claims to.
  const gaps = coverageGaps(stats)
  if (gaps.length > 0) {
    exitCode = 1
    console.error(`COVERAGE GAPS (the test fails on these): ${gaps.join('; ')}`)
  }
} catch (error) {
  exitCode = 1
  console.error(error instanceof Error ? (error.stack ?? error.message) : error)
  console.error(`\nFAILED. Replay: ${replay}`)
} finally {
  await database.drop()
}
process.exit(exitCode)
