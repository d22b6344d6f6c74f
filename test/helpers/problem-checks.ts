// Checks shared by the edge tests (bad input, admin, operations): the RFC 9457 problem shape
// every error answer must have, and request options for raw JSON and the admin token.
import { expect } from 'vitest'
import { errorCodes, type ErrorCode } from '../../src/domain/errors.js'
import { statusByCode } from '../../src/http/problem.js'
import { testAdminToken } from './app.js'
import type { Reply, RequestOptions } from './http.js'

export const adminAuthorization = { authorization: `Bearer ${testAdminToken}` }

// A body sent byte for byte as given, labelled JSON (malformed JSON, __proto__ keys, padding).
export function rawJson(rawBody: string, headers: Record<string, string> = {}): RequestOptions {
  return { rawBody, headers: { 'content-type': 'application/json', ...headers } }
}

// What a table row compares: enough to name the failure, small enough to read in a diff.
export interface Outcome {
  status: number
  code: string | undefined
}

export function outcomeOf(reply: Reply): Outcome {
  const body = reply.body as { code?: unknown } | undefined
  return { status: reply.status, code: typeof body?.code === 'string' ? body.code : undefined }
}

// Every field of a problem answer, checked once here so each test names only status and code.
export function expectProblem(reply: Reply, status: number, code: ErrorCode): void {
  expect({ status: reply.status, body: reply.body }).toMatchObject({ status, body: { type: 'about:blank', status, code } })
  expect(reply.headers.get('content-type')).toMatch(/^application\/problem\+json/)
  expect(typeof reply.body.title).toBe('string')
  expect(reply.body.title.length).toBeGreaterThan(0)
}

// A problem whose code is in the catalogue and whose status is the one the catalogue gives it:
// a client can branch on the code without knowing which route answered.
export function catalogueViolation(reply: Reply): string | undefined {
  const contentType = reply.headers.get('content-type') ?? ''
  if (!contentType.startsWith('application/problem+json')) return `content-type ${contentType}, body ${reply.text.slice(0, 200)}`
  const code = (reply.body as { code?: unknown } | undefined)?.code
  if (typeof code !== 'string' || !(errorCodes as readonly string[]).includes(code)) return `code ${String(code)} is not in the catalogue`
  if (statusByCode[code as ErrorCode] !== reply.status) return `code ${code} answered with ${reply.status}, catalogue says ${statusByCode[code as ErrorCode]}`
  if (reply.body.type !== 'about:blank' || reply.body.status !== reply.status) return `problem fields ${reply.text.slice(0, 200)}`
  return undefined
}
