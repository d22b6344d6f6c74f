// Request and response schemas: the same objects validate requests and generate /openapi.json.
import { Type, type Static } from '@sinclair/typebox'
import { errorCodes } from '../../domain/errors.js'
import { stockMax } from '../../domain/products.js'

export const Problem = Type.Object(
  {
    type: Type.String(),
    title: Type.String(),
    status: Type.Integer(),
    code: Type.Union(
      errorCodes.map((code) => Type.Literal(code)),
      { description: 'Stable machine-readable error code' },
    ),
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
    per_buyer_limit: Type.Union([Type.Integer(), Type.Null()]),
    sale_starts_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
    sale_ends_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
    sale_status: Type.Union([Type.Literal('upcoming'), Type.Literal('open'), Type.Literal('ended'), Type.Literal('sold_out')]),
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
    buyer_id: Type.Union([Type.String(), Type.Null()]),
  },
  { $id: 'Hold' },
)

export function waitlistBody(maxQtyPerHold: number) {
  const qty = Type.Integer({ minimum: 1, maximum: maxQtyPerHold })
  return Type.Object({
    qty: Type.Optional(qty),
    quantity: Type.Optional({ ...qty, description: 'Alias of qty' }),
    idempotency_key: Type.Optional(idempotencyKeySchema),
  })
}
export type WaitlistBody = Static<ReturnType<typeof waitlistBody>>

export const TicketView = Type.Object(
  {
    ticket_id: Type.String(),
    product_id: Type.Integer(),
    qty: Type.Integer(),
    status: Type.Union([Type.Literal('waiting'), Type.Literal('admitted'), Type.Literal('closed'), Type.Literal('left')]),
    position: Type.Union([Type.Integer({ minimum: 1 }), Type.Null()], {
      description: '1 = next; null unless waiting. Before the sale starts: join order (the draw at the start decides)',
    }),
    created_at: Type.String({ format: 'date-time' }),
    buyer_id: Type.Union([Type.String(), Type.Null()]),
    hold_id: Type.Union([Type.String(), Type.Null()], { description: 'The hold the ticket became (admitted only)' }),
    expires_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()], { description: "The admitted hold's expiry" }),
  },
  { $id: 'Ticket' },
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
    buyer_id: Type.Union([Type.String(), Type.Null()]),
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

// Drop settings (SPEC §8): null clears one. Instants are checked further in the admin route
// (a real calendar instant with a zone), so the field is named whatever is wrong with it.
const perBuyerLimit = Type.Union([Type.Integer({ minimum: 1, maximum: 1_000_000_000 }), Type.Null()], {
  description: 'Units one buyer may hold, have pending and have bought; null: no limit',
})
const saleInstant = Type.Union([Type.String({ maxLength: 64, examples: ['2030-01-01T10:00:00Z'] }), Type.Null()], { description: 'ISO 8601 instant with a zone; null: unset' })
const dropSettingsFields = {
  per_buyer_limit: Type.Optional(perBuyerLimit),
  sale_starts_at: Type.Optional(saleInstant),
  sale_ends_at: Type.Optional(saleInstant),
}

export const NewProductBody = Type.Object({
  name: Type.String({ minLength: 1, maxLength: 200, pattern: noNul }),
  price: Type.Union([Type.String({ maxLength: 32 }), Type.Number({ minimum: 0 })]),
  currency: Type.Optional(Type.String({ pattern: '^[A-Z]{3}$' })),
  stock: Type.Integer({ minimum: 0, maximum: stockMax }),
  ...dropSettingsFields,
})
export type NewProductBody = Static<typeof NewProductBody>

// At least one field: the admin route names add_stock when none is given.
export const StockBody = Type.Object({
  add_stock: Type.Optional(Type.Integer({ minimum: -stockMax, maximum: stockMax })),
  ...dropSettingsFields,
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
