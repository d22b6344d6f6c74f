// An in-process server on a fresh database with a manual clock: real HTTP over loopback, time
// advanced by the test instead of slept through.
import type { TestContext } from 'vitest'
import { onTestFinished } from 'vitest'
import pino from 'pino'
import { loadConfig, type Config, type EngineName } from '../../src/config.js'
import { audit, type AuditReport } from '../../src/domain/audit.js'
import { ManualClock } from '../../src/domain/clock.js'
import type { DomainEvent } from '../../src/domain/events.js'
import type { Clock } from '../../src/domain/clock.js'
import { Catalog } from '../../src/domain/products.js'
import { buildApp, type App } from '../../src/http/app.js'
import { sweepOnce, type SweepResult } from '../../src/jobs/sweeper.js'
import { openRuntime, type Runtime } from '../../src/runtime.js'
import { freshDatabase } from './engines.js'
import { request, type Reply, type RequestOptions } from './http.js'

export const testAdminToken = 'test-admin-token'
export const testWebhookSecret = 'test-webhook-secret'

export interface TestApp {
  app: App
  baseUrl: string
  databaseUrl: string
  engine: EngineName
  config: Config
  clock: ManualClock
  runtime: Runtime
  productId: number
  // Every domain event emitted in this process, in order (hold.created, tx.retry, ...).
  events: DomainEvent[]
  request<T = any>(method: string, path: string, options?: RequestOptions): Promise<Reply<T>>
  admin<T = any>(method: string, path: string, body?: unknown): Promise<Reply<T>>
  audit(): Promise<AuditReport>
  sweep(): Promise<SweepResult>
  createProduct(stock: number, priceMinor?: number): Promise<number>
}

export interface TestAppOptions {
  stock?: number
  priceMinor?: number
  // Extra environment, as the server would read it (HOLD_TTL_SECONDS, WEBHOOK_SECRET, ...).
  env?: Record<string, string>
  // An existing database to share (several apps on one database); fresh when absent.
  databaseUrl?: string
  // Where the server logs (silent when absent): tests that count log lines pass their own.
  logger?: Runtime['logger']
}

export function baseEnv(databaseUrl: string, env: Record<string, string> = {}): Record<string, string> {
  return {
    DATABASE_URL: databaseUrl,
    ADMIN_TOKEN: testAdminToken,
    LOG_LEVEL: 'silent',
    RATE_LIMIT_READ_PER_MIN: '0',
    RATE_LIMIT_HOLD_PER_MIN: '0',
    RATE_LIMIT_ORDER_PER_MIN: '0',
    SEED_STOCK: '0',
    ...env,
  }
}

// Creates products straight through the catalogue (no admin request), named after their stock.
export function productCreator(store: Runtime['store'], clock: Clock): (stock: number, priceMinor?: number) => Promise<number> {
  const catalog = new Catalog(store, clock)
  return async (stock, priceMinor = 9_999) => (await catalog.create({ name: `product ${stock}`, priceMinor, currency: 'USD', stock })).id
}

export async function buildTestApp(engine: EngineName, options: TestAppOptions = {}): Promise<TestApp> {
  const fresh = options.databaseUrl ? undefined : await freshDatabase(engine)
  const databaseUrl = options.databaseUrl ?? fresh!.url
  const config = loadConfig(baseEnv(databaseUrl, options.env))
  const clock = new ManualClock(new Date())
  const events: DomainEvent[] = []
  const runtime = openRuntime(config, { clock, logger: options.logger ?? pino({ level: 'silent' }), onEvent: (event) => events.push(event) })
  await runtime.store.migrate()
  const app = await buildApp({ config, store: runtime.store, clock, logger: runtime.logger, metrics: runtime.metrics, observer: runtime.observer })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  const baseUrl = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`
  const createProduct = productCreator(runtime.store, clock)
  const productId = options.stock === undefined && options.databaseUrl ? 0 : await createProduct(options.stock ?? 100, options.priceMinor)

  onTestFinished(async () => {
    await app.close()
    // Every batcher, so no batch of a finished test still writes while its store closes.
    const { holds, orders, payments, waitlist } = app.services
    await Promise.all([holds.drain(), orders.drain(), payments.drain(), waitlist.drain()])
    await runtime.store.close()
    await fresh?.drop()
  })

  return {
    app,
    baseUrl,
    databaseUrl,
    engine,
    config,
    clock,
    runtime,
    productId,
    events,
    request: (method, path, requestOptions) => request(baseUrl, method, path, requestOptions),
    admin: (method, path, body) => request(baseUrl, method, path, { body, headers: { authorization: `Bearer ${testAdminToken}` } }),
    audit: () => audit(runtime.store),
    sweep: () => sweepOnce(runtime.store, runtime.observer, clock, config.sweepBatchMax),
    createProduct,
  }
}

export type { TestContext }
