// Admin routes live in their own scope: the bearer-token hook cannot reach public routes.
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { Config } from '../../config.js'
import type { Clock } from '../../domain/clock.js'
import { audit } from '../../domain/audit.js'
import { DomainError } from '../../domain/errors.js'
import { parseProductId } from '../../domain/ids.js'
import { isSupportedCurrency, parseAmountMinor } from '../../domain/money.js'
import { presentProduct } from '../present.js'
import type { Services } from '../../domain/services.js'
import type { Store } from '../../domain/store.js'
import { AuditView, NewProductBody, ProductParams, ProductView, StockBody, problemResponses } from '../schemas/index.js'
import type { MetricsSource } from '../../observability/cluster-metrics.js'
import { constantTimeEqual } from '../signature.js'
import { adminDashboardRoutes } from './admin-dashboard.js'

export interface AdminRoutesOptions {
  config: Config
  services: Services
  store: Store
  clock: Clock
  metricsSource: MetricsSource
}

export const adminRoutes: FastifyPluginAsyncTypebox<AdminRoutesOptions> = async (app, { config, services, store, clock, metricsSource }) => {
  app.addHook('onRequest', async (request) => {
    const header = request.headers.authorization ?? ''
    const token = header.startsWith('Bearer ') ? header.slice('Bearer '.length) : ''
    // With ADMIN_TOKEN unset every admin request is refused: there is no default password.
    if (!config.adminToken || !constantTimeEqual(token, config.adminToken)) throw new DomainError('unauthorized')
  })

  const security = [{ bearer: [] }]

  app.post(
    '/products',
    { schema: { tags: ['admin'], security, body: NewProductBody, response: { 201: ProductView, ...problemResponses([400, 401, 415, 422]) } } },
    async (request, reply) => {
      const { name, price, stock } = request.body
      const currency = request.body.currency ?? 'USD'
      if (!isSupportedCurrency(currency)) throw new DomainError('validation_failed', { errors: [{ field: 'currency', message: 'is not an ISO 4217 currency' }], invalid_fields: ['currency'] })
      const priceMinor = parseAmountMinor(price, currency)
      if (priceMinor === undefined) {
        throw new DomainError('validation_failed', { errors: [{ field: 'price', message: `must be a non-negative amount with at most the decimals of ${currency}` }], invalid_fields: ['price'] })
      }
      const product = await services.catalog.create({ name, priceMinor, currency, stock })
      return reply.code(201).send(presentProduct(product))
    },
  )

  app.patch(
    '/products/:id',
    { schema: { tags: ['admin'], security, params: ProductParams, body: StockBody, response: { 200: ProductView, ...problemResponses([400, 401, 404, 409, 415, 422]) } } },
    async (request) => {
      const productId = parseProductId(request.params.id)
      if (productId === undefined) throw new DomainError('product_not_found')
      return presentProduct(await services.catalog.addStock(productId, request.body.add_stock))
    },
  )

  app.get('/audit', { schema: { tags: ['admin'], security, response: { 200: AuditView, ...problemResponses([401]) } } }, async () => {
    const report = await audit(store)
    return {
      ok: report.ok,
      checked_products: report.checkedProducts,
      violations: report.violations.map((violation) => ({ invariant: violation.invariant, product_id: violation.productId, message: violation.message })),
    }
  })

  // Inside this scope, so the bearer-token hook above guards it too.
  await app.register(adminDashboardRoutes, { store, clock, metricsSource })
}
