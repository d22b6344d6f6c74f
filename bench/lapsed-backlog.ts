// `npx tsx bench/lapsed-backlog.ts` (after `npm run build`): product reads/s and holds/s on a
// product with 100,000 lapsed, unswept holds against a clean product, in one run on the engine
// DATABASE_URL names (a temporary SQLite file by default), then how long a server's own sweeper
// takes to bring the backlog up to date (sweeper lag back to 0). SPEC §4: reads and holds stay
// as fast with the backlog as without, and the sweeper keeps up.
// BENCH_BACKLOG (100000), BENCH_DURATION_S (5), BENCH_CONNECTIONS (64), BENCH_ROUNDS (2).
import { loadConfig } from '../src/config.js'
import { audit } from '../src/domain/audit.js'
import { newHoldIds } from '../src/domain/ids.js'
import type { Hold } from '../src/domain/store.js'
import { Catalog } from '../src/domain/products.js'
import { openRuntime } from '../src/runtime.js'
import { freshBenchDatabase } from './database.js'
import { cannon, textRequest, type LoadResult } from './load.js'
import { killAllServers, sleep, startServer } from './server-process.js'
import { integerSetting, settingsOrExit } from './settings.js'

const { backlog, durationS, connections, rounds } = settingsOrExit('bench:lapsed-backlog', () => ({
  backlog: integerSetting('BENCH_BACKLOG', 100_000, 1, 10_000_000),
  durationS: integerSetting('BENCH_DURATION_S', 5, 1, 600),
  connections: integerSetting('BENCH_CONNECTIONS', 64, 1, 4096),
  rounds: integerSetting('BENCH_ROUNDS', 2, 1, 100),
}))
const hugeStock = 1_000_000_000
const insertChunkRows = 2_000
const catchUpTimeoutMs = 300_000

function metric(text: string, series: string): number | undefined {
  const line = text.split('\n').find((candidate) => candidate.startsWith(`${series} `))
  return line === undefined ? undefined : Number(line.slice(series.length + 1))
}

async function main(): Promise<void> {
  const database = await freshBenchDatabase(process.env.DATABASE_URL?.startsWith('sqlite:') ? undefined : process.env.DATABASE_URL?.trim() || undefined)
  try {
    const env = { DATABASE_URL: database.url, LOG_LEVEL: 'silent', SEED_STOCK: '0' }
    const runtime = openRuntime(loadConfig(env))
    await runtime.store.migrate()
    const catalog = new Catalog(runtime.store, runtime.clock)
    const backlogProductId = (await catalog.create({ name: 'backlog', priceMinor: 100, currency: 'USD', stock: hugeStock })).id
    const cleanProductId = (await catalog.create({ name: 'clean', priceMinor: 100, currency: 'USD', stock: hugeStock })).id
    // Lapsed holds as a 10 s burst leaves them, expired a minute ago: what the read must not walk.
    const now = runtime.clock.now()
    const firstExpiresAtMs = now.getTime() - 70_000
    const startedMs = Date.now()
    for (let start = 0; start < backlog; start += insertChunkRows) {
      const rows = Math.min(insertChunkRows, backlog - start)
      const holds: Hold[] = newHoldIds(rows, now).map((id, index) => ({
        id,
        productId: backlogProductId,
        qty: 1,
        status: 'active',
        expiresAt: new Date(firstExpiresAtMs + Math.floor(((start + index) * 10_000) / backlog)),
        createdAt: now,
        buyerId: null,
      }))
      await runtime.store.transaction({ label: 'bench.backlog' }, async (tx) => {
        await tx.lockProduct(backlogProductId)
        await tx.insertHolds(holds)
        await tx.applyProductDelta(backlogProductId, { reserved: rows, sold: 0, stock: 0 })
      })
    }
    console.log(`${database.version}: ${backlog} lapsed holds inserted in ${Date.now() - startedMs} ms`)

    // No sweeper during the load (an hour between passes), holds that outlive the run.
    const serverEnv = {
      LOG_LEVEL: 'warn',
      SEED_STOCK: '0',
      SWEEP_INTERVAL_MS: '3600000',
      HOLD_TTL_SECONDS: '3600',
      RATE_LIMIT_READ_PER_MIN: '0',
      RATE_LIMIT_HOLD_PER_MIN: '0',
      RATE_LIMIT_ORDER_PER_MIN: '0',
    }
    const server = await startServer({ databaseUrl: database.url, workers: 1, env: serverEnv, nodeFlags: [] })
    const results: Array<{ what: string; product: string; result: LoadResult }> = []
    try {
      for (let round = 0; round < rounds; round++) {
        for (const [product, productId] of [
          ['backlog', backlogProductId],
          ['clean', cleanProductId],
        ] as const) {
          results.push({ what: 'read', product, result: await cannon({ label: `read ${product}`, url: `${server.baseUrl}/api/products/${productId}`, connections, durationS }) })
        }
        for (const [product, productId] of [
          ['backlog', backlogProductId],
          ['clean', cleanProductId],
        ] as const) {
          const body = JSON.stringify({ product_id: productId, qty: 1 })
          results.push({ what: 'hold', product, result: await cannon({ label: `hold ${product}`, url: `${server.baseUrl}/api/holds`, method: 'POST', body, connections, durationS }) })
        }
      }
    } finally {
      await server.stop()
    }
    console.log(`\n${connections} connections, ${durationS} s each, ${rounds} rounds interleaved`)
    console.log('what  product   ok/s      p50 ms  p99 ms  non-2xx')
    for (const { what, product, result } of results) {
      const non2xx = Object.entries(result.statusCounts)
        .filter(([status]) => !status.startsWith('2'))
        .reduce((sum, [, count]) => sum + count, 0)
      console.log(
        `${what.padEnd(5)} ${product.padEnd(9)} ${result.okPerS.toFixed(0).padStart(8)}  ${result.latencyP50Ms.toFixed(2).padStart(6)}  ${result.latencyP99Ms.toFixed(2).padStart(6)}  ${non2xx}`,
      )
    }
    for (const what of ['read', 'hold']) {
      const mean = (product: string) => {
        const rows = results.filter((row) => row.what === what && row.product === product)
        return rows.reduce((sum, row) => sum + row.result.okPerS, 0) / rows.length
      }
      console.log(`${what}s/s: backlog ${mean('backlog').toFixed(0)} vs clean ${mean('clean').toFixed(0)} (${((mean('backlog') / mean('clean')) * 100).toFixed(0)}%)`)
    }

    // The sweeper on: time until nothing lapsed waits (lag 0), as /metrics reports it.
    const sweeping = await startServer({ databaseUrl: database.url, workers: 1, env: { ...serverEnv, SWEEP_INTERVAL_MS: '1000' }, nodeFlags: [] })
    try {
      const sweepStartedMs = Date.now()
      let lagS = metric(await textRequest(`${sweeping.baseUrl}/metrics`), 'flash_sale_sweeper_lag_seconds')
      console.log(`\nsweeper lag at start ${lagS} s`)
      while (lagS !== 0 && Date.now() - sweepStartedMs < catchUpTimeoutMs) {
        await sleep(100)
        lagS = metric(await textRequest(`${sweeping.baseUrl}/metrics`), 'flash_sale_sweeper_lag_seconds')
      }
      const sweptMs = Date.now() - sweepStartedMs
      const expired = metric(await textRequest(`${sweeping.baseUrl}/metrics`), 'flash_sale_sweeper_expired_total')
      console.log(`sweeper caught up (lag ${lagS} s) in ${sweptMs} ms from start-up: ${expired} rows expired (first pass after SWEEP_INTERVAL_MS=1000)`)
    } finally {
      await sweeping.stop()
    }
    const report = await audit(runtime.store)
    console.log(`audit: ${report.ok ? 'ok' : JSON.stringify(report.violations.slice(0, 5))}`)
    await runtime.store.close()
  } finally {
    await database.drop()
  }
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    console.error(error)
    killAllServers()
    process.exit(1)
  },
)
