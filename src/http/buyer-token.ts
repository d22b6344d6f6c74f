// Buyer tokens (SPEC §8): an `Authorization: Bearer <JWT>` header, HS256 with BUYER_TOKEN_SECRET,
// `exp` and `sub` (1-128 characters) required, 60 s of clock tolerance judged by the service's
// clock. The domain only ever sees the buyer id.
// Verified with fast-jwt (NearForm; the verifier behind @fastify/jwt): it checks the HMAC
// synchronously with node:crypto in about 9 µs, where jose's WebCrypto verify cost about 43 µs of
// CPU and a thread-pool round trip per token, the largest cost of a buyer's hold (README, Buyers).
import { createVerifier, type VerifierSync } from 'fast-jwt'
import type { Clock } from '../domain/clock.js'
import { DomainError } from '../domain/errors.js'
import { GenerationCache } from '../domain/generation-cache.js'

export const buyerIdCharsMax = 128
const clockToleranceS = 60
// A lone surrogate (with the u flag a pair is one code point, never Cs) or NUL.
const unstorableChars = /[\p{Cs}\u0000]/u
// Verified tokens kept so a buyer's burst costs one HMAC, not one per request. A named bound:
// past it the oldest half goes (GenerationCache).
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
  // Signature, algorithm (HS256 only, so `alg: none` and every other one fail), structure and the
  // presence of `exp` and `sub`; the times are judged below against the service's clock, which
  // tests move by hand, so the library's own wall-clock checks are off.
  private readonly verifier: typeof VerifierSync
  private readonly cache: GenerationCache<string, Verified>

  constructor(
    secret: string,
    private readonly clock: Clock,
    cacheMax = buyerTokenCacheMax,
  ) {
    this.cache = new GenerationCache(cacheMax)
    this.verifier = createVerifier({
      key: secret,
      algorithms: ['HS256'],
      requiredClaims: ['exp', 'sub'],
      ignoreExpiration: true,
      ignoreNotBefore: true,
      cache: false,
    })
  }

  // The buyer named by an Authorization header; null without one. A header that is not a
  // readable, valid buyer token is 401 invalid_buyer_token, never silently anonymous.
  buyerOf(authorization: string | undefined): string | null {
    if (authorization === undefined) return null
    const match = /^Bearer (.*)$/i.exec(authorization)
    if (!match) throw new DomainError('invalid_buyer_token')
    return this.verify(match[1]!.trim())
  }

  private verify(token: string): string {
    const now = this.clock.now()
    // Expired once exp <= now - tolerance, in whole seconds (the rule jose applied; the tests pin the edges).
    const nowS = Math.floor(now.getTime() / 1000)
    const cached = this.cache.get(token)
    if (cached) {
      if (cached.expS > nowS - clockToleranceS) return cached.buyerId
      this.cache.delete(token)
      throw new DomainError('invalid_buyer_token')
    }
    let verified: Verified
    try {
      const { sub, exp, nbf } = this.verifier(token) as Record<string, unknown>
      // Characters, not UTF-16 units; a string of at most that many units needs no counting.
      if (typeof sub !== 'string' || sub.length < 1 || (sub.length > buyerIdCharsMax && [...sub].length > buyerIdCharsMax)) throw new Error('bad sub')
      // A buyer id every engine stores exactly as it is compared: a lone surrogate was stored as
      // U+FFFD (or other bytes), so the stored buyer was not the one the limit looked up, and
      // PostgreSQL refuses NUL in text, which failed every request of the batch with a 500.
      if (unstorableChars.test(sub)) throw new Error('bad sub')
      if (typeof exp !== 'number' || !Number.isFinite(exp) || exp <= nowS - clockToleranceS) throw new Error('expired')
      if (nbf !== undefined && (typeof nbf !== 'number' || nbf > nowS + clockToleranceS)) throw new Error('not yet valid')
      verified = { buyerId: sub, expS: exp }
    } catch {
      throw new DomainError('invalid_buyer_token')
    }
    this.cache.set(token, verified)
    return verified.buyerId
  }
}
