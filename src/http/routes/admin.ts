// Admin routes live in their own scope: the bearer-token hook cannot reach public routes.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { Config } from '../../config.js'
import { audit } from '../../domain/audit.js'
import type { Clock } from '../../domain/clock.js'
import { DomainError } from '../../domain/errors.js'
import { parseProductId } from '../../domain/ids.js'
import { formatAmount, isSupportedCurrency, parseAmountMinor } from '../../domain/money.js'
import { priceMinorMax, type DropChanges } from '../../domain/products.js'
import { presentAudit, presentProduct } from '../present.js'
import type { Services } from '../../domain/services.js'
import type { Store } from '../../domain/store.js'
import { AuditView, NewProductBody, ProductParams, ProductView, StockBody, problemResponses } from '../schemas/index.js'
import type { MetricsSource } from '../../observability/cluster-metrics.js'
import { constantTimeEqual } from '../signature.js'
import { adminDashboardRoutes } from './admin-dashboard.js'

export interface AdminRoutesOptions {
  config: Config
  clock: Clock
  services: Services
  store: Store
  metricsSource: MetricsSource
}

// ISO 8601 with a zone (Z or +hh:mm), seconds optional, up to milliseconds: kept to the ms.
const instantPattern = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,3}))?)?(Z|[+-](\d{2}):(\d{2}))$/

// The instant a string names, or undefined when it names none (no zone, 30 February, 25:00) or
// one past year 9999 in UTC.
export function parseInstant(text: string): Date | undefined {
  const match = instantPattern.exec(text)
  if (!match) return undefined
  const [year, month, day, hour, minute] = [1, 2, 3, 4, 5].map((index) => Number(match[index])) as [number, number, number, number, number]
  const second = Number(match[6] ?? 0)
  const ms = Number((match[7] ?? '0').padEnd(3, '0'))
  const [zone, offsetHours, offsetMinutes] = [match[8]!, Number(match[9] ?? 0), Number(match[10] ?? 0)]
  if (offsetHours > 23 || offsetMinutes > 59) return undefined
  const offsetMin = zone === 'Z' ? 0 : (zone.startsWith('-') ? -1 : 1) * (offsetHours * 60 + offsetMinutes)
  const wall = new Date(Date.UTC(year, month - 1, day, hour, minute, second, ms))
  // Date.UTC rolls 30 February over into March: a date that does not round-trip does not exist.
  const roundTrips =
    wall.getUTCFullYear() === year &&
    wall.getUTCMonth() === month - 1 &&
    wall.getUTCDate() === day &&
    wall.getUTCHours() === hour &&
    wall.getUTCMinutes() === minute &&
    wall.getUTCSeconds() === second
  if (!roundTrips) return undefined
  const instant = new Date(wall.getTime() - offsetMin * 60_000)
  // Shown in UTC with a four-digit year: 9999-12-31T23:59:59.999-01:00 is in year 10000, which
  // toISOString writes +010000-…; it was saved and then failed the answer's schema (500 after
  // the write, on every later PATCH too; the sixth probe).
  return instant.getUTCFullYear() <= 9999 ? instant : undefined
}

interface DropFields {
  per_buyer_limit?: number | null
  sale_starts_at?: string | null
  sale_ends_at?: string | null
}

// The drop settings an admin body sets, each field checked and named when wrong (422).
function dropChangesOf(body: DropFields, config: Config): DropChanges {
  const errors: Array<{ field: string; message: string }> = []
  const instant = (field: 'sale_starts_at' | 'sale_ends_at'): Date | null | undefined => {
    const text = body[field]
    if (text === undefined || text === null) return text
    const parsed = parseInstant(text)
    if (parsed === undefined) errors.push({ field, message: 'must be an ISO 8601 instant with a time zone, e.g. 2030-01-01T10:00:00Z' })
    return parsed
  }
  const changes: DropChanges = {}
  if (body.per_buyer_limit !== undefined) {
    // Without a secret no request can name a buyer, so a limit could only refuse everyone.
    if (body.per_buyer_limit !== null && !config.buyerTokenSecret)
      errors.push({ field: 'per_buyer_limit', message: 'needs BUYER_TOKEN_SECRET to be set: without it the service takes no buyers' })
    changes.perBuyerLimit = body.per_buyer_limit
  }
  const saleStartsAt = instant('sale_starts_at')
  const saleEndsAt = instant('sale_ends_at')
  if (saleStartsAt !== undefined) changes.saleStartsAt = saleStartsAt
  if (saleEndsAt !== undefined) changes.saleEndsAt = saleEndsAt
  if (errors.length > 0) throw new DomainError('validation_failed', { errors, invalid_fields: errors.map((error) => error.field) })
  return changes
}

export const adminRoutes: FastifyPluginAsyncTypebox<AdminRoutesOptions> = async (app, { config, services, store, clock, metricsSource }) => {
  app.addHook('onRequest', async (request) => {
    const header = request.headers.authorization ?? ''
    // The scheme is case-insensitive (RFC 9110 §11.1), as buyer tokens read it: `bearer <token>` was refused.
    const token = /^bearer /i.test(header) ? header.slice('Bearer '.length) : ''
    // With ADMIN_TOKEN unset every admin request is refused: there is no default password.
    if (!config.adminToken || !constantTimeEqual(token, config.adminToken)) throw new DomainError('unauthorized')
  })

  const security = [{ bearer: [] }]

  app.post(
    '/products',
    { schema: { tags: ['admin'], security, body: NewProductBody, response: { 201: ProductView, ...problemResponses([400, 401, 413, 415, 422, 503]) } } },
    async (request, reply) => {
      const { name, price, stock } = request.body
      const currency = request.body.currency ?? 'USD'
      if (!isSupportedCurrency(currency))
        throw new DomainError('validation_failed', { errors: [{ field: 'currency', message: 'is not an ISO 4217 currency' }], invalid_fields: ['currency'] })
      const priceMinor = parseAmountMinor(price, currency)
      if (priceMinor === undefined) {
        throw new DomainError('validation_failed', {
          errors: [{ field: 'price', message: `must be a non-negative amount with at most the decimals of ${currency}` }],
          invalid_fields: ['price'],
        })
      }
      if (priceMinor > priceMinorMax) {
        throw new DomainError('validation_failed', {
          errors: [{ field: 'price', message: `must be at most ${formatAmount(priceMinorMax, currency)} ${currency}, so that an order's total stays exact` }],
          invalid_fields: ['price'],
        })
      }
      const product = await services.catalog.create({ name, priceMinor, currency, stock, drop: dropChangesOf(request.body, config) })
      return reply.code(201).send(presentProduct(product))
    },
  )

  app.patch(
    '/products/:id',
    { schema: { tags: ['admin'], security, params: ProductParams, body: StockBody, response: { 200: ProductView, ...problemResponses([400, 401, 404, 409, 413, 415, 422, 503]) } } },
    async (request) => {
      const productId = parseProductId(request.params.id)
      if (productId === undefined) throw new DomainError('product_not_found')
      const addStock = request.body.add_stock
      const drop = dropChangesOf(request.body, config)
      if (addStock === undefined && Object.keys(drop).length === 0) {
        throw new DomainError('validation_failed', {
          errors: [{ field: 'add_stock', message: "must have required property 'add_stock' (or a drop setting)" }],
          invalid_fields: ['add_stock'],
        })
      }
      return presentProduct(await services.catalog.update(productId, addStock === undefined ? { drop } : { addStock, drop }, request.log))
    },
  )

  app.get('/audit', { schema: { tags: ['admin'], security, response: { 200: AuditView, ...problemResponses([401, 503]) } } }, async () => {
    return presentAudit(await audit(store, clock.now()))
  })

  // Inside this scope, so the bearer-token hook above guards it too.
  await app.register(adminDashboardRoutes, { store, clock, metricsSource })
}
