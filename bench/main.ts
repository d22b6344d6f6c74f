// `npm run bench`: starts the service on the engine DATABASE_URL names (default: a temporary
// SQLite file) with rate limits off, drives it over 127.0.0.1 with autocannon at each of
// BENCH_CONNECTIONS, and prints from one run: the GET /health rate (this machine's ceiling for
// this server), holds/s with p50/p99, the same holds with a fresh Idempotency-Key each (`keyed`),
// with a buyer token on a product with a per-buyer limit (`buyer`), the hold route's parsing and
// validation alone without the database (`ceiling`), product reads/s, buyers/s through the
// whole funnel, joins/s on a sold-out product's waitlist and admissions into its line (waitlist.ts),
// then a sell-out of 1,000 units with the audit. After the holds at each level, a second server on the
// same database with HOLD_BATCH_MAX=1 (one transaction per hold: the lock-per-request design)
// takes the same holds, so the gain of group commit is measured in the run, not quoted. Every
// phase is bounded in time; the servers and the database created for the run are gone when it
// ends, however it ends.
import { randomBytes } from 'node:crypto'
import { mkdirSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import { resolve } from 'node:path'
import { loadConfig } from '../src/config.js'
import { audit, type AuditReport } from '../src/domain/audit.js'
import { openRuntime } from '../src/runtime.js'
import { BuyerPool, buyerProduct } from './buyers.js'
import { freshBenchDatabase, type BenchDatabase } from './database.js'
import { assertFreshHolds, cannon, funnel, jsonRequest, reservedUnits, type FunnelResult, type LoadResult } from './load.js'
import { batchStats, scrapeServer, type BatchStats } from './metrics.js'
import { formatReport, type BenchReport, type LevelReport, type SelloutReport } from './report.js'
import { cpuSample, cpuShare, killAllServers, startServer, type CpuShare, type ServerProcess } from './server-process.js'
import { expiryWaves, joinBody, joinUrl, prepareLine, releaseBursts, topUp, waitingTickets, type Line, type WaitlistContext, type WaitlistReport } from './waitlist.js'
import { connectionLevelsSetting, integerSetting, UsageError } from './settings.js'

type Phase = 'health' | 'holds' | 'keyed' | 'buyer' | 'ceiling' | 'unbatched' | 'reads' | 'funnel' | 'waitlist' | 'sellout'
const allPhases: Phase[] = ['health', 'holds', 'keyed', 'buyer', 'ceiling', 'unbatched', 'reads', 'funnel', 'waitlist', 'sellout']

interface Settings {
  databaseUrl: string | undefined
  durationS: number
  warmupS: number
  connectionLevels: number[]
  workers: number
  phases: Set<Phase>
  selloutStock: number
  perBuyerLimit: number
  cpuProfDir: string | undefined
  jsonFile: string | undefined
}

function readSettings(): Settings {
  const connectionLevels = connectionLevelsSetting('64,256')
  const phasesRaw = process.env.BENCH_PHASES?.trim() || allPhases.join(',')
  const phases = new Set(phasesRaw.split(',').map((part) => part.trim()) as Phase[])
  for (const phase of phases) if (!allPhases.includes(phase)) throw new UsageError(`BENCH_PHASES takes ${allPhases.join(',')}, got "${phasesRaw}"`)
  const databaseUrl = process.env.DATABASE_URL?.trim() || undefined
  return {
    // A sqlite: URL names a file the bench must not fill with a million holds: it uses a
    // temporary file instead, like the default.
    databaseUrl: databaseUrl?.startsWith('sqlite:') ? undefined : databaseUrl,
    durationS: integerSetting('BENCH_DURATION_S', 5, 1, 120),
    warmupS: integerSetting('BENCH_WARMUP_S', 1, 0, 30),
    connectionLevels,
    // SQLite has one writer: a second process only waits for the write lock inside its event
    // loop (measured: 6.0-6.4k vs 4.7-4.8k holds/s), so it gets one process unless told.
    workers: integerSetting('BENCH_WORKERS', databaseUrl === undefined || databaseUrl.startsWith('sqlite:') ? 1 : os.cpus().length, 1, 64),
    phases,
    selloutStock: integerSetting('BENCH_SELLOUT_STOCK', 1000, 1, 1_000_000),
    perBuyerLimit: integerSetting('BENCH_PER_BUYER_LIMIT', 5, 1, 1_000),
    cpuProfDir: process.env.BENCH_CPU_PROF_DIR?.trim() || undefined,
    jsonFile: process.env.BENCH_JSON_FILE?.trim() || undefined,
  }
}

// "Very large" stock for the throughput phases: never the limit, whatever the rate.
const hotStock = 1_000_000_000
// The sell-out keeps asking until refusals outnumber the stock this many times over.
const selloutRefusalsFactor = 10
// Holds outlive the run, so the sweeper's expiry work does not land inside a later phase.
const benchHoldTtlS = 600
// Slack on top of the phases' own durations for start-up, scrapes, audit and shutdown.
const overheadBudgetS = 240
// The unbatched server starts and drains once per level, on top of that slack.
const unbatchedServerOverheadS = 30
// The waitlist phase past its joins: line set-up, top-up (at most 60 s), releases, and the
// expiry server's start, TTL (at most 60 s), sweeps and drain.
const waitlistOverheadS = 240
// Joins are measured at this many connections at least (issue 10), added if BENCH_CONNECTIONS has no level as high.
const waitlistConnectionsMin = 256
// Buyers are minted for this many times the holds the buyer phase could take at the plain hold
// rate, so no buyer reaches the limit and the phase measures granted holds, not refusals.
const buyerPoolHeadroom = 2
// The plain hold rate assumed for sizing the pool when the holds phase is not run.
const assumedHoldsPerS = 20_000

function log(line: string): void {
  process.stderr.write(`${line}\n`)
}

async function main(): Promise<number> {
  let settings: Settings
  try {
    settings = readSettings()
  } catch (error) {
    if (error instanceof UsageError) {
      console.error(`bench: ${error.message}`)
      return 2
    }
    throw error
  }
  const levelCount = settings.connectionLevels.length
  // Per level: health twice, holds, keyed, buyer, ceiling, unbatched holds, reads, funnel.
  const phaseCount = levelCount * 9 + 3
  // Warm-ups: five on the main server, one on each level's unbatched server and buyer product.
  const warmupCount = 5 + (settings.phases.has('unbatched') ? levelCount : 0) + (settings.phases.has('buyer') ? levelCount : 0)
  const unbatchedOverheadS = settings.phases.has('unbatched') ? levelCount * unbatchedServerOverheadS : 0
  const waitlistS = settings.phases.has('waitlist') ? (levelCount + 1) * settings.durationS + waitlistOverheadS : 0
  const budgetS = phaseCount * settings.durationS + warmupCount * settings.warmupS + overheadBudgetS + unbatchedOverheadS + waitlistS
  // The hard bound: whatever hangs, the bench ends and takes its server with it.
  setTimeout(() => {
    console.error(`bench: still running after ${budgetS} s; stopping`)
    killAllServers()
    process.exit(1)
  }, budgetS * 1000).unref()

  const database = await freshBenchDatabase(settings.databaseUrl)
  let server: ServerProcess | undefined
  let interrupted = false
  const onSignal = (signal: NodeJS.Signals): void => {
    if (interrupted) process.exit(130)
    interrupted = true
    log(`bench: ${signal}: stopping the server and dropping the bench database`)
    killAllServers()
    const cap = setTimeout(() => process.exit(130), 5000)
    void database.drop().finally(() => {
      clearTimeout(cap)
      process.exit(130)
    })
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)

  try {
    const report = await run(settings, database, (started) => (server = started))
    const text = formatReport(report)
    process.stdout.write(`${text}\n`)
    if (settings.jsonFile) writeFileSync(settings.jsonFile, `${JSON.stringify(report, null, 2)}\n`)
    const sold = report.sellout
    if (report.waitlist && report.waitlistAuditOk === false) return 1
    return sold && (sold.oversold > 0 || !sold.auditOk || sold.grantedInDatabase !== sold.stock) ? 1 : 0
  } finally {
    if (server) await server.stop()
    killAllServers()
    await database.drop().catch((error: unknown) => log(`bench: could not drop the bench database: ${String(error)}`))
  }
}

async function run(settings: Settings, database: BenchDatabase, onStarted: (server: ServerProcess) => void): Promise<BenchReport> {
  const adminToken = randomBytes(16).toString('hex')
  const webhookSecret = randomBytes(16).toString('hex')
  const buyerSecret = randomBytes(32).toString('hex')
  const nodeFlags: string[] = []
  if (settings.cpuProfDir) {
    mkdirSync(settings.cpuProfDir, { recursive: true })
    nodeFlags.push('--cpu-prof', `--cpu-prof-dir=${resolve(settings.cpuProfDir)}`)
  }
  log(`bench: ${database.version} at ${database.displayUrl}, WORKERS=${settings.workers}, ${settings.durationS} s per phase`)
  const serverEnv: Record<string, string> = {
    NODE_ENV: 'production',
    LOG_LEVEL: 'warn',
    ADMIN_TOKEN: adminToken,
    WEBHOOK_SECRET: webhookSecret,
    RATE_LIMIT_READ_PER_MIN: '0',
    RATE_LIMIT_HOLD_PER_MIN: '0',
    RATE_LIMIT_ORDER_PER_MIN: '0',
    HOLD_TTL_SECONDS: String(benchHoldTtlS),
    SEED_STOCK: '0',
    BUYER_TOKEN_SECRET: buyerSecret,
    // Adds POST /bench/hold-ceiling: the hold route's parsing and validation, no database.
    BENCH_CEILING_ROUTE: '1',
  }
  const server = await startServer({ databaseUrl: database.url, workers: settings.workers, nodeFlags, env: serverEnv })
  onStarted(server)
  const group = server.child.pid
  const { baseUrl } = server
  const admin = { authorization: `Bearer ${adminToken}` }

  const createProduct = async (name: string, stock: number): Promise<number> => {
    const answer = await jsonRequest(baseUrl, 'POST', '/api/admin/products', { name, price: '99.99', currency: 'USD', stock }, admin)
    if (answer.status !== 201 || typeof answer.json?.id !== 'number') throw new Error(`could not create a product: ${answer.status} ${JSON.stringify(answer.json)}`)
    return answer.json.id
  }
  const hotProductId = await createProduct('bench hot product', hotStock)
  const hotProductCreatedAtMs = Date.now()
  const funnelProductId = await createProduct('bench funnel product', hotStock)
  const holdBody = JSON.stringify({ product_id: hotProductId, qty: 1 })
  const urls = { health: `${baseUrl}/health`, holds: `${baseUrl}/api/holds`, product: `${baseUrl}/api/products/${hotProductId}`, ceiling: `${baseUrl}/bench/hold-ceiling` }
  // Keys unique over the run (levels and warm-ups share the database's key table).
  const keyPrefix = randomBytes(6).toString('hex')
  let keySequence = 0
  const freshKey = (): Record<string, string> => ({ 'idempotency-key': `bench-${keyPrefix}-${++keySequence}` })
  const skipped: Record<string, string> = {}

  // The ceiling route exists only where the service has it and BENCH_CEILING_ROUTE=1 turned it on.
  if (settings.phases.has('ceiling')) {
    const probe = await jsonRequest(baseUrl, 'POST', '/bench/hold-ceiling', { product_id: hotProductId, qty: 1 }, freshKey())
    if (probe.status === 404) skipped.ceiling = 'POST /bench/hold-ceiling answered 404: this server has no ceiling route (BENCH_CEILING_ROUTE=1 adds it where the service supports it)'
    else if (probe.status < 200 || probe.status > 299) skipped.ceiling = `POST /bench/hold-ceiling answered ${probe.status || probe.failure}, not 2xx`
    if (skipped.ceiling) log(`bench: ceiling phase skipped: ${skipped.ceiling}`)
  }
  const buyers = new BuyerPool(buyerSecret)

  const measured = async <T>(work: () => Promise<T>, serverGroup = group): Promise<{ result: T; cpu: CpuShare }> => {
    const before = cpuSample(serverGroup)
    const result = await work()
    const cpu = cpuShare(before, cpuSample(serverGroup))
    // SQLite runs inside the server: database server processes on this host serve someone else.
    if (database.engine === 'sqlite') return { result, cpu: { ...cpu, databaseCores: 0, otherCores: cpu.otherCores + cpu.databaseCores } }
    return { result, cpu }
  }
  const describe = (result: LoadResult): string => {
    const other = Object.entries(result.statusCounts)
      .filter(([status]) => !status.startsWith('2'))
      .map(([status, count]) => `${status}×${count}`)
    const problems = [...other, ...(result.errors ? [`errors×${result.errors}`] : []), ...(result.timeouts ? [`timeouts×${result.timeouts}`] : [])]
    return `${result.label} @${result.connections}: ${Math.round(result.okPerS)} 2xx/s, p50 ${result.latencyP50Ms} ms, p99 ${result.latencyP99Ms} ms${problems.length ? `, ${problems.join(' ')}` : ''}`
  }

  const unbatchedLogEvents: Record<string, number> = {}
  let unbatchedStderr = ''
  // The reference for group commit: the same holds on a second server whose every hold is its
  // own transaction (lock the product row, update its counts, insert the hold, commit). It runs
  // while the main server is idle, on the same database and machine, with the same env and
  // WORKERS, so the two rates differ only by HOLD_BATCH_MAX. One difference from a handler that
  // opens its own transaction: each worker still queues a product's holds and runs one
  // transaction at a time, so at most WORKERS of them wait on the row lock, not every pooled
  // connection. It starts fresh at each level (nothing of it runs during the main server's other
  // phases) and gets its own warm-up, so a cold JIT and pool do not flatter the gain. No
  // --cpu-prof: the profiles are the main server's.
  const unbatchedHolds = async (connections: number): Promise<{ result: LoadResult; cpu: CpuShare; batches: BatchStats }> => {
    const second = await startServer({ databaseUrl: database.url, workers: settings.workers, nodeFlags: [], env: { ...serverEnv, HOLD_BATCH_MAX: '1' } })
    try {
      const url = `${second.baseUrl}/api/holds`
      if (settings.warmupS > 0) {
        await cannon({ label: 'warm-up unbatched holds', url, connections: Math.min(...settings.connectionLevels), durationS: settings.warmupS, method: 'POST', body: holdBody })
      }
      const metricsBefore = await scrapeServer(second.baseUrl, settings.workers)
      const { result, cpu } = await measured(
        () => cannon({ label: 'POST /api/holds unbatched', url, connections, durationS: settings.durationS, method: 'POST', body: holdBody }),
        second.child.pid,
      )
      return { result, cpu, batches: batchStats(metricsBefore, await scrapeServer(second.baseUrl, settings.workers)) }
    } finally {
      // Stopped before the main server's next phase, whatever happened; killAllServers covers
      // a bench that dies before this runs.
      const stopped = await second.stop()
      if (stopped.forced) log('bench: the unbatched server did not stop within its drain time and was killed')
      for (const [event, count] of Object.entries(second.logEvents())) unbatchedLogEvents[event] = (unbatchedLogEvents[event] ?? 0) + count
      unbatchedStderr = second.stderrTail()
    }
  }

  if (settings.warmupS > 0) {
    // Warm-up (not reported): JIT, connection pools, prepared statements.
    const connections = Math.min(...settings.connectionLevels)
    await cannon({ label: 'warm-up health', url: urls.health, connections, durationS: settings.warmupS })
    if (settings.phases.has('holds')) await cannon({ label: 'warm-up holds', url: urls.holds, connections, durationS: settings.warmupS, method: 'POST', body: holdBody })
    if (settings.phases.has('reads')) await cannon({ label: 'warm-up reads', url: urls.product, connections, durationS: settings.warmupS })
    if (settings.phases.has('keyed'))
      await cannon({ label: 'warm-up keyed holds', url: urls.holds, connections, durationS: settings.warmupS, method: 'POST', body: holdBody, headersPerRequest: freshKey })
    if (settings.phases.has('ceiling') && !skipped.ceiling) {
      await cannon({ label: 'warm-up ceiling', url: urls.ceiling, connections, durationS: settings.warmupS, method: 'POST', body: holdBody, headersPerRequest: freshKey })
    }
  }

  // The waitlist's sold-out product and the head of its line, before the levels' joins add the rest.
  const waitlistContext: WaitlistContext = { baseUrl, serverEnv, databaseUrl: database.url, workers: settings.workers, createProduct, log }
  const line: Line | undefined = settings.phases.has('waitlist') ? await prepareLine(waitlistContext, 'bench waitlist product') : undefined
  const joins = (connections: number): Promise<{ result: LoadResult; cpu: CpuShare }> =>
    measured(() =>
      cannon({
        label: 'POST /api/products/:id/waitlist (sold out)',
        url: joinUrl(baseUrl, line!.productId),
        connections,
        durationS: settings.durationS,
        method: 'POST',
        body: joinBody(),
      }),
    )

  const levels: LevelReport[] = []
  for (const connections of settings.connectionLevels) {
    const level: LevelReport = {
      connections,
      health: [],
      holds: undefined,
      keyed: undefined,
      buyer: undefined,
      ceiling: undefined,
      unbatched: undefined,
      joins: undefined,
      reads: undefined,
      funnel: undefined,
      batches: undefined,
      unbatchedBatches: undefined,
      cpu: {},
    }
    const health = async (): Promise<void> => {
      if (!settings.phases.has('health')) return
      const { result, cpu } = await measured(() => cannon({ label: 'GET /health', url: urls.health, connections, durationS: settings.durationS }))
      level.health.push(result)
      level.cpu[`health${level.health.length}`] = cpu
      log(`  ${describe(result)}`)
    }
    // The ceiling is measured before and after the hold and read phases and averaged, so a
    // neighbour's burst of CPU during one of them moves the ratio less.
    await health()
    if (settings.phases.has('holds')) {
      const metricsBefore = await scrapeServer(baseUrl, settings.workers)
      const { result, cpu } = await measured(() => cannon({ label: 'POST /api/holds', url: urls.holds, connections, durationS: settings.durationS, method: 'POST', body: holdBody }))
      level.holds = result
      level.cpu.holds = cpu
      level.batches = batchStats(metricsBefore, await scrapeServer(baseUrl, settings.workers))
      log(`  ${describe(result)}; batches: mean ${level.batches.meanSize.toFixed(1)}, ${Math.round(level.batches.batches / result.durationS)} tx/s`)
    }
    // Right after the holds, so both see the machine in about the same state.
    if (line) {
      const { result, cpu } = await joins(connections)
      level.joins = result
      level.cpu.joins = cpu
      log(`  ${describe(result)}`)
    }
    // The hold shapes of a real drop, each next to the plain holds: a retry-safe client's key,
    // then a buyer on a limited product, then the same request without the database.
    if (settings.phases.has('keyed')) {
      const reservedBefore = await reservedUnits(baseUrl, hotProductId)
      const { result, cpu } = await measured(() =>
        cannon({
          label: 'POST /api/holds, fresh Idempotency-Key',
          url: urls.holds,
          connections,
          durationS: settings.durationS,
          method: 'POST',
          body: holdBody,
          headersPerRequest: freshKey,
        }),
      )
      const checked = assertFreshHolds(`keyed holds @${connections}`, result, reservedBefore, await reservedUnits(baseUrl, hotProductId), {
        firstHoldAtMs: hotProductCreatedAtMs,
        holdTtlS: benchHoldTtlS,
      })
      if (!checked) log(`  keyed holds @${connections}: not checked for replays (holds of earlier phases may have lapsed)`)
      level.keyed = result
      level.cpu.keyed = cpu
      log(`  ${describe(result)}`)
    }
    if (settings.phases.has('buyer') && !skipped.buyer) {
      const product = await buyerProduct(baseUrl, admin, buyers, { name: `bench buyer product @${connections}`, stock: hotStock, perBuyerLimit: settings.perBuyerLimit })
      if ('skipped' in product) {
        skipped.buyer = product.skipped
        log(`bench: buyer phase skipped: ${product.skipped}`)
      } else {
        const expectedHolds = (level.holds?.okPerS ?? assumedHoldsPerS) * (settings.durationS + settings.warmupS) * buyerPoolHeadroom
        await buyers.grow(Math.ceil(expectedHolds / settings.perBuyerLimit))
        const url = urls.holds
        const body = JSON.stringify({ product_id: product.productId, qty: 1 })
        if (settings.warmupS > 0)
          await cannon({ label: 'warm-up buyer holds', url, connections, durationS: settings.warmupS, method: 'POST', body, headersPerRequest: buyers.nextHeaders })
        const { result, cpu } = await measured(() =>
          cannon({
            label: `POST /api/holds, buyer token (per_buyer_limit ${settings.perBuyerLimit}, ${buyers.authorizations.length} buyers)`,
            url,
            connections,
            durationS: settings.durationS,
            method: 'POST',
            body,
            headersPerRequest: buyers.nextHeaders,
          }),
        )
        level.buyer = result
        level.cpu.buyer = cpu
        log(`  ${describe(result)}`)
      }
    }
    if (settings.phases.has('ceiling') && !skipped.ceiling) {
      const { result, cpu } = await measured(() =>
        cannon({
          label: 'POST /bench/hold-ceiling (hold parse + validate, no database)',
          url: urls.ceiling,
          connections,
          durationS: settings.durationS,
          method: 'POST',
          body: holdBody,
          headersPerRequest: freshKey,
        }),
      )
      level.ceiling = result
      level.cpu.ceiling = cpu
      log(`  ${describe(result)}`)
    }
    // Soon after the batched holds (the hold shapes come between), so both see the machine in about the same state.
    if (settings.phases.has('unbatched')) {
      const { result, cpu, batches } = await unbatchedHolds(connections)
      level.unbatched = result
      level.cpu.unbatched = cpu
      level.unbatchedBatches = batches
      log(`  ${describe(result)}; batches: mean ${batches.meanSize.toFixed(1)}, ${Math.round(batches.batches / result.durationS)} tx/s`)
    }
    if (settings.phases.has('reads')) {
      const { result, cpu } = await measured(() => cannon({ label: 'GET /api/products/:id', url: urls.product, connections, durationS: settings.durationS }))
      level.reads = result
      level.cpu.reads = cpu
      log(`  ${describe(result)}`)
    }
    await health()
    if (settings.phases.has('funnel')) {
      const { result, cpu } = await measured(() => funnel({ baseUrl, productId: funnelProductId, buyers: connections, durationS: settings.durationS, webhookSecret }))
      level.funnel = result
      level.cpu.funnel = cpu
      log(
        `  funnel @${connections}: ${result.buyersPerS.toFixed(0)} buyers/s, p50 ${result.latencyP50Ms.toFixed(1)} ms, p99 ${result.latencyP99Ms.toFixed(1)} ms${describeFailures(result)}`,
      )
    }
    levels.push(level)
  }

  let waitlist: WaitlistReport | undefined
  if (line) {
    let extraJoins: LoadResult | undefined
    if (Math.max(...settings.connectionLevels) < waitlistConnectionsMin) {
      extraJoins = (await joins(waitlistConnectionsMin)).result
      log(`  ${describe(extraJoins)}`)
    }
    const waitingAfterJoins = await waitingTickets(baseUrl, line.productId)
    const topUpJoins = await topUp(baseUrl, line.productId, Math.max(waitlistConnectionsMin, ...settings.connectionLevels))
    const release = await releaseBursts(waitlistContext, line)
    log(
      `  waitlist releases: ${release.admitted} admitted of ${release.waitingBefore} waiting in ${release.wallS.toFixed(2)} s, DELETE sent -> GET shows admitted p50 ${release.admittedP50Ms.toFixed(1)} ms, p99 ${release.admittedP99Ms.toFixed(1)} ms`,
    )
    const measuredJoinsPerS = extraJoins?.okPerS ?? levels[levels.length - 1]?.joins?.okPerS ?? 0
    const expiry = await expiryWaves(waitlistContext, measuredJoinsPerS)
    log(`  waitlist expiry: ${expiry.admitted} admitted, expires_at -> admitted p50 ${expiry.latencyP50Ms} ms, p99 ${expiry.latencyP99Ms} ms (TTL ${expiry.holdTtlS} s)`)
    waitlist = { extraJoins, waitingAfterJoins, topUpJoins, release, expiry }
  }

  let sellout: SelloutReport | undefined
  let selloutProductId: number | undefined
  if (settings.phases.has('sellout')) {
    const stock = settings.selloutStock
    const connections = Math.max(...settings.connectionLevels)
    selloutProductId = await createProduct('bench sell-out product', stock)
    const refusalsToStop = stock * selloutRefusalsFactor
    const result = await cannon({
      label: 'sell-out POST /api/holds',
      url: `${baseUrl}/api/holds`,
      connections,
      // At least 5 s, so a slow engine still sells out; it normally stops much earlier.
      durationS: Math.max(settings.durationS, 5),
      method: 'POST',
      body: JSON.stringify({ product_id: selloutProductId, qty: 1 }),
      stopWhen: (seen) => (seen['409'] ?? 0) >= refusalsToStop,
    })
    log(`  ${describe(result)}`)
    const view = await jsonRequest(baseUrl, 'GET', `/api/products/${selloutProductId}`)
    sellout = {
      stock,
      connections,
      durationS: result.durationS,
      grantedAnswers: result.statusCounts['201'] ?? 0,
      refusedAnswers: result.statusCounts['409'] ?? 0,
      otherAnswers: Object.entries(result.statusCounts)
        .filter(([status]) => status !== '201' && status !== '409')
        .reduce((sum, [, count]) => sum + count, 0),
      availableAfter: typeof view.json?.available_stock === 'number' ? view.json.available_stock : Number.NaN,
      grantedInDatabase: Number.NaN,
      oversold: Number.NaN,
      auditOk: false,
      auditViolations: [],
    }
  }

  // Stop the server before the audit: it recomputes I1-I4 from several queries, which only
  // agree with each other once nothing writes (the sweeper included).
  const stopped = await server.stop()
  if (stopped.forced) log('bench: the server did not stop within its drain time and was killed')
  let auditReport: AuditReport | undefined
  let waitlistAuditOk: boolean | undefined
  if ((sellout && selloutProductId !== undefined) || waitlist) {
    const config = loadConfig({ DATABASE_URL: database.url, LOG_LEVEL: 'silent' })
    const runtime = openRuntime(config)
    try {
      auditReport = await audit(runtime.store)
      if (waitlist) {
        // The waitlist's lines (I1-I8 and the line checks) are audited with everything else.
        waitlistAuditOk = auditReport.ok
        if (!auditReport.ok) log(`bench: audit after the waitlist phase: ${auditReport.violations.map((violation) => `${violation.invariant}: ${violation.message}`).join('; ')}`)
      }
      if (sellout && selloutProductId !== undefined) {
        const facts = await runtime.store.auditFacts()
        const row = facts.products.find((product) => product.productId === selloutProductId)
        const committed = row ? row.activeHoldQty + row.pendingOrderQty + row.paidOrderQty : Number.NaN
        sellout.grantedInDatabase = committed
        // Oversold: units promised beyond the stock, as the rows record them or as answered.
        sellout.oversold = Math.max(0, committed - sellout.stock, sellout.grantedAnswers - sellout.stock, row ? row.reserved + row.sold - row.stock : 0)
        sellout.auditOk = auditReport.ok
        sellout.auditViolations = auditReport.violations.map((violation) => `${violation.invariant}: ${violation.message}`)
      }
    } finally {
      await runtime.store.close()
    }
  }

  const cpus = os.cpus()
  return {
    machine: {
      cpuModel: cpus[0]?.model.trim() ?? 'unknown',
      cpuCount: cpus.length,
      memoryGiB: os.totalmem() / 2 ** 30,
      os: `${os.type()} ${os.release()} ${os.arch()}`,
      node: process.version,
      loadAverage: os.loadavg(),
    },
    engine: database.engine,
    engineVersion: database.version,
    workers: settings.workers,
    durationS: settings.durationS,
    perBuyerLimit: settings.perBuyerLimit,
    buyers: buyers.authorizations.length,
    skipped,
    levels,
    waitlist,
    waitlistAuditOk,
    sellout,
    serverLogEvents: server.logEvents(),
    serverStderr: worthSeeing(server.stderrTail()),
    unbatchedServerLogEvents: unbatchedLogEvents,
    unbatchedServerStderr: worthSeeing(unbatchedStderr),
  }
}

// Fastify's deprecation notices are the same on every run; anything else is worth seeing.
function worthSeeing(stderr: string): string {
  return stderr
    .split('\n')
    .filter((line) => line.trim() !== '' && !/FSTDEP\d+|--trace-warnings/.test(line))
    .join('\n')
}

function describeFailures(result: FunnelResult): string {
  const entries = Object.entries(result.failures)
  return entries.length ? `, failures: ${entries.map(([key, count]) => `${key}×${count}`).join(' ')}` : ''
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error('bench failed:', error)
    killAllServers()
    process.exit(1)
  },
)
