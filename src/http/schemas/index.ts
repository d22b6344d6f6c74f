// Request and response schemas: the same objects validate requests and generate /openapi.json.
import { Type, type Static } from '@sinclair/typebox'
import { errorCodes } from '../../domain/errors.js'

export const Problem = Type.Object(
  {
    type: Type.String(),
    title: Type.String(),
    status: Type.Integer(),
    code: Type.Union(errorCodes.map((code) => Type.Literal(code)), { description: 'Stable machine-readable error code' }),
  },
  { $id: 'Problem', additionalProperties: true },
)

// Free text stored in the database: no NUL (PostgreSQL refuses it in text columns).
const noNul = '^[^\\u0000]*$'

export const idempotencyKeySchema = Type.String({ minLength: 1, maxLength: 255, pattern: '^[\\x21-\\x7E]+$' })

export const ProductParams = Type.Object({ id: Type.String() })
export const ResourceParams = Type.Object({ id: Type.String() })

export const ProductView = Type.Object(
  {
    id: Type.Integer(),
    name: Type.String(),
    price: Type.String({ examples: ['99.99'] }),
    currency: Type.String(),
    stock: Type.Integer(),
    available_stock: Type.Integer(),
    reserved: Type.Integer(),
    sold: Type.Integer(),
    created_at: Type.String({ format: 'date-time' }),
  },
  { $id: 'Product' },
)

export function holdBody(maxQtyPerHold: number) {
  const qty = Type.Integer({ minimum: 1, maximum: maxQtyPerHold })
  return Type.Object({
    product_id: Type.Integer({ minimum: 1 }),
    qty: Type.Optional(qty),
    quantity: Type.Optional({ ...qty, description: 'Alias of qty' }),
    idempotency_key: Type.Optional(idempotencyKeySchema),
  })
}
export type HoldBody = Static<ReturnType<typeof holdBody>>

export const HoldView = Type.Object(
  {
    hold_id: Type.String(),
    product_id: Type.Integer(),
    qty: Type.Integer(),
    status: Type.Union([Type.Literal('active'), Type.Literal('converted'), Type.Literal('expired'), Type.Literal('released')]),
    expires_at: Type.String({ format: 'date-time' }),
    created_at: Type.String({ format: 'date-time' }),
  },
  { $id: 'Hold' },
)

export const OrderBody = Type.Object({
  hold_id: Type.String({ minLength: 1, maxLength: 64 }),
  idempotency_key: Type.Optional(idempotencyKeySchema),
})
export type OrderBody = Static<typeof OrderBody>

export const OrderView = Type.Object(
  {
    order_id: Type.String(),
    hold_id: Type.String(),
    product_id: Type.Integer(),
    qty: Type.Integer(),
    amount: Type.String(),
    currency: Type.String(),
    status: Type.Union([Type.Literal('pending'), Type.Literal('paid'), Type.Literal('cancelled'), Type.Literal('expired')]),
    created_at: Type.String({ format: 'date-time' }),
    expires_at: Type.String({ format: 'date-time' }),
    paid_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
    payment_id: Type.Union([Type.String(), Type.Null()]),
    refund_required: Type.Boolean(),
  },
  { $id: 'Order' },
)

export const WebhookBody = Type.Object({
  order_id: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
  hold_id: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
  status: Type.Union([Type.Literal('success'), Type.Literal('failed')]),
  payment_id: Type.Optional(Type.String({ minLength: 1, maxLength: 255, pattern: noNul })),
  amount: Type.Optional(Type.Union([Type.String({ maxLength: 32 }), Type.Number({ minimum: 0 })])),
  idempotency_key: Type.Optional(idempotencyKeySchema),
})
export type WebhookBody = Static<typeof WebhookBody>

export const WebhookAnswer = Type.Object(
  {
    status: Type.Union([Type.Literal('accepted'), Type.Literal('processed')]),
    hold_id: Type.Union([Type.String(), Type.Null()]),
    order_id: Type.Union([Type.String(), Type.Null()]),
    order_status: Type.Union([Type.String(), Type.Null()]),
    outcome: Type.Union([Type.String(), Type.Null()]),
  },
  { $id: 'WebhookAnswer' },
)

export const NewProductBody = Type.Object({
  name: Type.String({ minLength: 1, maxLength: 200, pattern: noNul }),
  price: Type.Union([Type.String({ maxLength: 32 }), Type.Number({ minimum: 0 })]),
  currency: Type.Optional(Type.String({ pattern: '^[A-Z]{3}$' })),
  stock: Type.Integer({ minimum: 0, maximum: 1_000_000_000 }),
})
export type NewProductBody = Static<typeof NewProductBody>

export const StockBody = Type.Object({
  add_stock: Type.Integer({ minimum: -1_000_000_000, maximum: 1_000_000_000 }),
})
export type StockBody = Static<typeof StockBody>

export const AuditView = Type.Object(
  {
    ok: Type.Boolean(),
    checked_products: Type.Integer(),
    violations: Type.Array(Type.Object({ invariant: Type.String(), product_id: Type.Optional(Type.Integer()), message: Type.String() })),
  },
  { $id: 'Audit' },
)

export const problemResponses = (codes: number[]) => Object.fromEntries(codes.map((code) => [code, { $ref: 'Problem#' }]))
