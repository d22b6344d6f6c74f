// Buyer tokens as a shop would issue them (HS256 JWTs signed with BUYER_TOKEN_SECRET, `sub` the
// buyer id, `exp` required), and every bad shape a client or an attacker could send instead.
// Times are taken from the caller, so a test on a manual clock mints tokens for the server's time.
import { SignJWT, UnsecuredJWT } from 'jose'

export const testBuyerSecret = 'test-buyer-token-secret-of-32-bytes-or-more'
export const buyerEnv = { BUYER_TOKEN_SECRET: testBuyerSecret }

// How long a minted token lasts unless a test says otherwise: longer than any test runs.
const defaultTtlS = 3_600
// SPEC §8: the clock tolerance the server allows on `exp` (and `nbf`).
export const toleranceS = 60
// SPEC §8: a buyer id is 1-128 characters.
export const buyerIdCharsMax = 128

const encoder = new TextEncoder()

export interface MintOptions {
  // The instant the token is judged at (the server's clock); defaults to the real clock.
  nowMs?: number
  // exp as absolute unix seconds; defaults to nowMs + 1 h.
  expS?: number
  secret?: string
  alg?: 'HS256' | 'HS384' | 'HS512'
  // Extra claims, merged over { sub }; `sub: undefined` leaves sub out.
  claims?: Record<string, unknown>
  omitExp?: boolean
}

export async function buyerToken(sub: string | undefined, options: MintOptions = {}): Promise<string> {
  const nowS = Math.floor((options.nowMs ?? Date.now()) / 1000)
  const claims: Record<string, unknown> = { ...(sub === undefined ? {} : { sub }), ...options.claims }
  const jwt = new SignJWT(claims).setProtectedHeader({ alg: options.alg ?? 'HS256', typ: 'JWT' }).setIssuedAt(nowS)
  if (!options.omitExp) jwt.setExpirationTime(options.expS ?? nowS + defaultTtlS)
  return jwt.sign(encoder.encode(options.secret ?? testBuyerSecret))
}

export function bearer(token: string): Record<string, string> {
  return { authorization: `Bearer ${token}` }
}

// A request option fragment: the buyer's token in the Authorization header.
export async function asBuyer(sub: string, options: MintOptions = {}): Promise<Record<string, string>> {
  return bearer(await buyerToken(sub, options))
}

export interface BadToken {
  label: string
  // The whole Authorization header value.
  authorization: string
}

// Every shape of token SPEC §8 refuses with 401 invalid_buyer_token, judged at nowMs.
export async function badTokens(nowMs: number = Date.now()): Promise<BadToken[]> {
  const nowS = Math.floor(nowMs / 1000)
  const valid = await buyerToken('alice', { nowMs })
  const [header, , signature] = valid.split('.')
  const forgedPayload = Buffer.from(JSON.stringify({ sub: 'mallory', iat: nowS, exp: nowS + defaultTtlS })).toString('base64url')
  const unsigned = new UnsecuredJWT({ sub: 'alice' })
    .setIssuedAt(nowS)
    .setExpirationTime(nowS + defaultTtlS)
    .encode()
  const shapes: Array<[string, string]> = [
    ['garbage', 'not-a-jwt'],
    ['three segments of garbage', 'aaaa.bbbb.cccc'],
    ['empty token', ''],
    ['signed with another secret', await buyerToken('alice', { nowMs, secret: 'another-secret-of-32-bytes-or-more!!' })],
    ['payload swapped under a valid signature', `${header}.${forgedPayload}.${signature}`],
    ['signature removed', `${header}.${valid.split('.')[1]}.`],
    ['alg none (unsigned)', unsigned],
    // Signed with the right secret, but not HS256: only the algorithm SPEC names is accepted,
    // so a token's own header never chooses how it is checked.
    ['HS512 with the right secret', await buyerToken('alice', { nowMs, alg: 'HS512' })],
    ['expired beyond the 60 s tolerance', await buyerToken('alice', { nowMs, expS: nowS - toleranceS - 30 })],
    ['expired an hour ago', await buyerToken('alice', { nowMs, expS: nowS - 3_600 })],
    ['no exp', await buyerToken('alice', { nowMs, omitExp: true })],
    ['exp not a number', await buyerToken('alice', { nowMs, omitExp: true, claims: { exp: 'tomorrow' } })],
    ['not valid before two minutes from now', await buyerToken('alice', { nowMs, claims: { nbf: nowS + 120 } })],
    ['no sub', await buyerToken(undefined, { nowMs })],
    ['empty sub', await buyerToken('', { nowMs })],
    ['sub of 129 characters', await buyerToken('b'.repeat(buyerIdCharsMax + 1), { nowMs })],
    // 258 UTF-16 units: counted as characters, not units.
    ['sub of 129 characters outside the BMP', await buyerToken('\u{1F600}'.repeat(buyerIdCharsMax + 1), { nowMs })],
    ['sub a number', await buyerToken(undefined, { nowMs, claims: { sub: 42 } })],
    ['sub null', await buyerToken(undefined, { nowMs, claims: { sub: null } })],
    // Signed by a shop that built the id from user input: no engine stores these exactly (a lone
    // surrogate became U+FFFD; PostgreSQL refuses NUL in text).
    ['sub with a lone surrogate', await buyerToken('mallory\ud800', { nowMs })],
    ['sub with a lone low surrogate first', await buyerToken('\udc00mallory', { nowMs })],
    ['sub with a NUL', await buyerToken('mallory\u0000', { nowMs })],
  ]
  return [
    ...shapes.map(([label, token]) => ({ label, authorization: `Bearer ${token}` })),
    // A buyer who meant to identify must not silently become anonymous: an Authorization header
    // the service cannot read as a buyer token is refused, not ignored.
    { label: 'token without the Bearer scheme', authorization: valid },
    { label: 'Basic credentials', authorization: `Basic ${Buffer.from('alice:secret').toString('base64')}` },
  ]
}
