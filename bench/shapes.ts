// `npm run bench:shapes`: the hold shapes of a real drop measured in interleaved rounds, for
// ratios that the machine's drift does not decide. `npm run bench` measures each shape once, one
// after another, so on a shared two-core machine a neighbour's burst during one phase moves its
// ratio by ±30% between runs. Here each round runs plain holds, keyed holds (a fresh
// Idempotency-Key each) and buyer holds (a token each, on a product with a per-buyer limit) back
// to back, in a rotating order; each round gives one ratio per shape, and the report is the
// median over the rounds with its range. Same server settings as `npm run bench`.
//
//   [DATABASE_URL=postgres://…] BENCH_ROUNDS=5 BENCH_DURATION_S=4 BENCH_CONNECTIONS=256 npm run bench:shapes
import { randomBytes } from 'node:crypto'
import os from 'node:os'
import { BuyerPool, buyerProduct } from './buyers.js'
import { freshBenchDatabase } from './database.js'
import { assertFreshHolds, cannon, jsonRequest, reservedUnits, type LoadResult } from './load.js'
import { killAllServers, startServer, type ServerProcess } from './server-process.js'
import { connectionLevelsSetting, integerSetting, settingsOrExit } from './settings.js'

type Shape = 'plain' | 'keyed' | 'buyer'
const shapes: Shape[] = ['plain', 'keyed', 'buyer']

const databaseUrl = process.env.DATABASE_URL?.trim() || undefined
const { rounds, durationS, perBuyerLimit, connectionLevels, workers } = settingsOrExit('bench:shapes', () => ({
  rounds: integerSetting('BENCH_ROUNDS', 5, 1, 100),
  durationS: integerSetting('BENCH_DURATION_S', 4, 1, 600),
  perBuyerLimit: integerSetting('BENCH_PER_BUYER_LIMIT', 5, 1, 1_000),
  connectionLevels: connectionLevelsSetting('256'),
  workers: integerSetting('BENCH_WORKERS', databaseUrl === undefined || databaseUrl.startsWith('sqlite:') ? 1 : os.cpus().length, 1, 64),
}))
// Far more than any run takes: no phase ever meets insufficient_stock.
const hotStock = 1_000_000_000
// Longer than the run: no hold lapses, so the sweeper stays idle in every round alike.
const holdTtlS = 600
// Buyers minted per round: twice what the plain rate of the round before needs at the limit.
const buyerPoolHeadroom = 2

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  const middle = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2
}

const log = (line: string): void => void process.stderr.write(`${line}\n`)

async function main(): Promise<void> {
  const database = await freshBenchDatabase(databaseUrl)
  let server: ServerProcess | undefined
  try {
    const adminToken = randomBytes(16).toString('hex')
    const buyerSecret = randomBytes(32).toString('hex')
    server = await startServer({
      databaseUrl: database.url,
      workers,
      nodeFlags: [],
      env: {
        NODE_ENV: 'production',
        LOG_LEVEL: 'warn',
        ADMIN_TOKEN: adminToken,
        WEBHOOK_SECRET: randomBytes(16).toString('hex'),
        RATE_LIMIT_READ_PER_MIN: '0',
        RATE_LIMIT_HOLD_PER_MIN: '0',
        RATE_LIMIT_ORDER_PER_MIN: '0',
        HOLD_TTL_SECONDS: String(holdTtlS),
        SEED_STOCK: '0',
        BUYER_TOKEN_SECRET: buyerSecret,
      },
    })
    const { baseUrl } = server
    const admin = { authorization: `Bearer ${adminToken}` }
    log(`bench:shapes: ${database.version}, WORKERS=${workers}, ${rounds} rounds of ${durationS} s per shape`)
    const created = await jsonRequest(baseUrl, 'POST', '/api/admin/products', { name: 'shapes hot product', price: '99.99', currency: 'USD', stock: hotStock }, admin)
    if (created.status !== 201 || typeof created.json?.id !== 'number') throw new Error(`could not create the product: ${created.status}`)
    const createdAtMs = Date.now()
    const holdBody = JSON.stringify({ product_id: created.json.id, qty: 1 })
    const buyers = new BuyerPool(buyerSecret)
    const limited = await buyerProduct(baseUrl, admin, buyers, { name: 'shapes buyer product', stock: hotStock, perBuyerLimit })
    if ('skipped' in limited) throw new Error(limited.skipped)
    const buyerBody = JSON.stringify({ product_id: limited.productId, qty: 1 })
    const keyPrefix = randomBytes(6).toString('hex')
    let keySequence = 0
    const freshKey = (): Record<string, string> => ({ 'idempotency-key': `shapes-${keyPrefix}-${++keySequence}` })
    const url = `${baseUrl}/api/holds`
    const keyedRun = async (connections: number, seconds: number): Promise<LoadResult> => {
      const before = await reservedUnits(baseUrl, created.json!.id as number)
      const result = await cannon({ label: 'keyed', url, connections, durationS: seconds, method: 'POST', body: holdBody, headersPerRequest: freshKey })
      const checked = assertFreshHolds('keyed holds', result, before, await reservedUnits(baseUrl, created.json!.id as number), { firstHoldAtMs: createdAtMs, holdTtlS })
      if (!checked) log('  keyed holds: not checked for replays (holds of earlier rounds may have lapsed)')
      return result
    }
    const run = (shape: Shape, connections: number, seconds: number): Promise<LoadResult> => {
      if (shape === 'plain') return cannon({ label: 'plain', url, connections, durationS: seconds, method: 'POST', body: holdBody })
      if (shape === 'keyed') return keyedRun(connections, seconds)
      return cannon({ label: 'buyer', url, connections, durationS: seconds, method: 'POST', body: buyerBody, headersPerRequest: buyers.nextHeaders })
    }

    const lines: string[] = []
    for (const connections of connectionLevels) {
      // Warm-up (not reported): JIT, pools, the first buyers.
      await buyers.grow(20_000 * buyerPoolHeadroom)
      for (const shape of shapes) await run(shape, connections, 1)
      const results: Record<Shape, LoadResult[]> = { plain: [], keyed: [], buyer: [] }
      const ratios: Record<'keyed' | 'buyer', number[]> = { keyed: [], buyer: [] }
      for (let round = 0; round < rounds; round++) {
        const lastPlain = results.plain.at(-1)?.okPerS ?? 20_000
        await buyers.grow(buyers.authorizations.length + Math.ceil((lastPlain * durationS * buyerPoolHeadroom) / perBuyerLimit))
        // A rotating order, so no shape always runs first (or right after another one).
        const order = shapes.map((_, index) => shapes[(index + round) % shapes.length]!)
        const got: Partial<Record<Shape, LoadResult>> = {}
        for (const shape of order) {
          const result = await run(shape, connections, durationS)
          const refused = Object.entries(result.statusCounts).filter(([status]) => !status.startsWith('2'))
          if (refused.length > 0 || result.errors > 0) log(`  round ${round + 1} ${shape}: non-2xx ${JSON.stringify(Object.fromEntries(refused))}, errors ${result.errors}`)
          got[shape] = result
          results[shape].push(result)
        }
        ratios.keyed.push(got.keyed!.okPerS / got.plain!.okPerS)
        ratios.buyer.push(got.buyer!.okPerS / got.plain!.okPerS)
        log(
          `  @${connections} round ${round + 1} (${order.join(', ')}): plain ${Math.round(got.plain!.okPerS)}/s p99 ${got.plain!.latencyP99Ms} ms, keyed ${Math.round(got.keyed!.okPerS)}/s (${ratios.keyed.at(-1)!.toFixed(2)}×) p99 ${got.keyed!.latencyP99Ms} ms, buyer ${Math.round(got.buyer!.okPerS)}/s (${ratios.buyer.at(-1)!.toFixed(2)}×) p99 ${got.buyer!.latencyP99Ms} ms`,
        )
      }
      const row = (shape: Shape, label: string): string => {
        const rates = results[shape].map((result) => result.okPerS)
        const p99s = results[shape].map((result) => result.latencyP99Ms)
        const ratio = shape === 'plain' ? '1.00×' : `${median(ratios[shape]).toFixed(2)}× (${Math.min(...ratios[shape]).toFixed(2)}–${Math.max(...ratios[shape]).toFixed(2)})`
        return `| ${label} | ${Math.round(median(rates)).toLocaleString('en-US')} | ${median(results[shape].map((result) => result.latencyP50Ms))} / ${median(p99s)} | ${ratio} |`
      }
      lines.push(
        '',
        `| ${connections} connections, ${rounds} interleaved rounds of ${durationS} s: medians | 2xx/s | p50 / p99, ms | ÷ plain, median of the rounds (range) |`,
        '|---|---:|---:|---:|',
        row('plain', 'plain holds'),
        row('keyed', 'keyed: a fresh Idempotency-Key each'),
        row('buyer', `buyer: a token each, per_buyer_limit ${perBuyerLimit}`),
      )
    }
    lines.push(
      '',
      `${database.version}, WORKERS=${workers}; load average at the end ${os
        .loadavg()
        .map((value) => value.toFixed(2))
        .join(' ')}.`,
    )
    process.stdout.write(`${lines.join('\n')}\n`)
  } finally {
    if (server) await server.stop()
    killAllServers()
    await database.drop().catch((error: unknown) => log(`bench:shapes: could not drop the bench database: ${String(error)}`))
  }
}

await main()
