// Buyers for the `buyer` phase: HS256 tokens minted with jose as a shop would issue them (`sub`
// the buyer id, `exp` well past the run), and the product with a per-buyer limit they buy.
// The service may not take buyers yet: every step that shows it does not says why, and the
// phase is skipped with that reason instead of measuring something else under its name.
import { SignJWT } from 'jose'
import { jsonRequest } from './load.js'

// Tokens outlive any run (the bench is bounded far below this).
const tokenTtlS = 3_600
// Tokens minted at once: enough to keep the CPU busy, few enough to bound the memory in flight.
const mintChunk = 1_000
// The most buyers one run mints (about 200 bytes a token): more than a 2-core machine uses up
// at the default limit, and a bound on the minting time (measured 0.17 ms a token on a loaded
// 2-core machine: at most about 17 s).
export const benchBuyersMax = 100_000

export class BuyerPool {
  // `Bearer <token>` header values, buyer i at index i.
  readonly authorizations: string[] = []
  private readonly key: Promise<CryptoKey>
  private next = 0

  constructor(secret: string) {
    // The service verifies with the secret's UTF-8 bytes as the HMAC key. Imported once: jose
    // would import raw bytes again for every token.
    this.key = crypto.subtle.importKey('raw', new TextEncoder().encode(secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign'])
  }

  // Grows the pool to `count` buyers (at most benchBuyersMax).
  async grow(count: number): Promise<void> {
    const target = Math.min(count, benchBuyersMax)
    const expS = Math.floor(Date.now() / 1000) + tokenTtlS
    while (this.authorizations.length < target) {
      const from = this.authorizations.length
      const chunk = Array.from({ length: Math.min(mintChunk, target - from) }, (_, offset) => this.mint(`bench-buyer-${from + offset}`, expS))
      for (const token of await Promise.all(chunk)) this.authorizations.push(`Bearer ${token}`)
    }
  }

  async mint(buyerId: string, expS = Math.floor(Date.now() / 1000) + tokenTtlS): Promise<string> {
    return new SignJWT({ sub: buyerId })
      .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
      .setExpirationTime(expS)
      .sign(await this.key)
  }

  // The next buyer in turn: consecutive requests are different buyers, so concurrent holds of
  // one buyer (which the service must serialize) are as rare as the pool is large.
  nextHeaders = (): Record<string, string> => {
    const authorization = this.authorizations[this.next % this.authorizations.length]!
    this.next += 1
    return { authorization }
  }
}

export type BuyerProduct = { productId: number } | { skipped: string }

function answerSummary(answer: { status: number; json: Record<string, unknown> | undefined; failure?: string }): string {
  const code = answer.json?.code ?? answer.json?.error
  return `${answer.status || answer.failure || 'no answer'}${typeof code === 'string' ? ` ${code}` : ''}`
}

// Creates a product of huge stock with `per_buyer_limit` and proves the service enforces it:
// a hold with a token is 201 for that buyer, a hold without one is 401 buyer_token_required.
export async function buyerProduct(
  baseUrl: string,
  admin: Record<string, string>,
  pool: BuyerPool,
  options: { name: string; stock: number; perBuyerLimit: number },
): Promise<BuyerProduct> {
  const created = await jsonRequest(
    baseUrl,
    'POST',
    '/api/admin/products',
    { name: options.name, price: '99.99', currency: 'USD', stock: options.stock, per_buyer_limit: options.perBuyerLimit },
    admin,
  )
  if (created.status !== 201 || typeof created.json?.id !== 'number') {
    return { skipped: `creating a product with per_buyer_limit was refused (${answerSummary(created)}): the service does not take buyers yet` }
  }
  if (created.json.per_buyer_limit !== options.perBuyerLimit) {
    return { skipped: `the product was created without per_buyer_limit (the answer shows ${JSON.stringify(created.json.per_buyer_limit)}): the service ignores the setting` }
  }
  const productId = created.json.id
  const body = { product_id: productId, qty: 1 }
  const probeBuyer = 'bench-probe-buyer'
  const withToken = await jsonRequest(baseUrl, 'POST', '/api/holds', body, { authorization: `Bearer ${await pool.mint(probeBuyer)}` })
  if (withToken.status !== 201) return { skipped: `a hold with a buyer token answered ${answerSummary(withToken)}, not 201` }
  if (withToken.json?.buyer_id !== probeBuyer)
    return { skipped: `a hold with a buyer token answered buyer_id ${JSON.stringify(withToken.json?.buyer_id)}, not the token's sub "${probeBuyer}"` }
  const withoutToken = await jsonRequest(baseUrl, 'POST', '/api/holds', body)
  if (withoutToken.status !== 401)
    return { skipped: `a hold without a token on a product with per_buyer_limit answered ${answerSummary(withoutToken)}, not 401 buyer_token_required: the limit is not enforced` }
  return { productId }
}
