// Buyer tokens (SPEC §8): an `Authorization: Bearer <JWT>` header, HS256 with BUYER_TOKEN_SECRET,
// `exp` and `sub` (1-128 characters) required, 60 s of clock tolerance judged by the service's
// clock. The domain only ever sees the buyer id.
import { jwtVerify } from 'jose'
import type { Clock } from '../domain/clock.js'
import { DomainError } from '../domain/errors.js'

export const buyerIdCharsMax = 128
const clockToleranceS = 60
// Verified tokens kept so a buyer's burst costs one HMAC, not one per request. A named bound:
// past it the oldest entry goes (Map iteration is insertion order).
export const buyerTokenCacheMax = 10_000

declare module 'fastify' {
  interface FastifyRequest {
    // Set by the buyer-token hook of the routes that take buyers; null when anonymous.
    buyerId: string | null
  }
}

interface Verified {
  buyerId: string
  // exp in unix seconds: every hit is judged again against the clock.
  expS: number
}

export class BuyerTokens {
  // Imported once: handing jose the raw secret re-imports it on every verification (3-4x the CPU).
  private readonly key: Promise<CryptoKey>
  private readonly cache = new Map<string, Verified>()

  constructor(
    secret: string,
    private readonly clock: Clock,
    private readonly cacheMax = buyerTokenCacheMax,
  ) {
    this.key = crypto.subtle.importKey('raw', new TextEncoder().encode(secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['verify'])
  }

  // The buyer named by an Authorization header; null without one. A header that is not a
  // readable, valid buyer token is 401 invalid_buyer_token, never silently anonymous.
  async buyerOf(authorization: string | undefined): Promise<string | null> {
    if (authorization === undefined) return null
    const match = /^Bearer (.*)$/i.exec(authorization)
    if (!match) throw new DomainError('invalid_buyer_token')
    return this.verify(match[1]!.trim())
  }

  private async verify(token: string): Promise<string> {
    const now = this.clock.now()
    // jose's rule: expired once exp <= now - tolerance, in whole seconds.
    const nowS = Math.floor(now.getTime() / 1000)
    const cached = this.cache.get(token)
    if (cached) {
      if (cached.expS > nowS - clockToleranceS) return cached.buyerId
      this.cache.delete(token)
      throw new DomainError('invalid_buyer_token')
    }
    let verified: Verified
    try {
      const { payload } = await jwtVerify(token, await this.key, { algorithms: ['HS256'], clockTolerance: clockToleranceS, currentDate: now, requiredClaims: ['exp', 'sub'] })
      const { sub, exp } = payload
      if (typeof sub !== 'string' || sub.length < 1 || [...sub].length > buyerIdCharsMax || typeof exp !== 'number') throw new Error('bad sub')
      verified = { buyerId: sub, expS: exp }
    } catch {
      throw new DomainError('invalid_buyer_token')
    }
    if (this.cache.size >= this.cacheMax) this.cache.delete(this.cache.keys().next().value!)
    this.cache.set(token, verified)
    return verified.buyerId
  }
}
