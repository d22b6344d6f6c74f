// GET /dashboard: the live page for the team running a drop. The page itself holds no data and
// needs no token; the holder of ADMIN_TOKEN types it into the page, which sends it only as an
// Authorization header to GET /api/admin/dashboard (never in a URL, so never in a log line).
// Every file is served from this package (the page's own files and uPlot from node_modules):
// no CDN, so the page works offline and nothing else runs in it (a strict CSP says so).
import { readFileSync, existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { FastifyInstance } from 'fastify'
import { DomainError } from '../../domain/errors.js'

interface Asset {
  body: Buffer
  contentType: string
}

// The page's folder, found from this file whether it runs from src/ (tsx, tests) or dist/.
function dashboardDirectory(): string {
  let directory = dirname(fileURLToPath(import.meta.url))
  for (let depth = 0; depth < 6; depth++) {
    const candidate = join(directory, 'public', 'dashboard')
    if (existsSync(join(candidate, 'index.html'))) return candidate
    directory = dirname(directory)
  }
  throw new Error('public/dashboard/index.html not found above the dashboard route')
}

function loadAssets(): Map<string, Asset> {
  const directory = dashboardDirectory()
  const require = createRequire(import.meta.url)
  const uplotDirectory = dirname(require.resolve('uplot/dist/uPlot.iife.min.js'))
  const javascript = 'text/javascript; charset=utf-8'
  const css = 'text/css; charset=utf-8'
  // An allow-list read once at start: no path from a request ever reaches the file system.
  return new Map<string, Asset>([
    ['index.html', { body: readFileSync(join(directory, 'index.html')), contentType: 'text/html; charset=utf-8' }],
    ['dashboard.js', { body: readFileSync(join(directory, 'dashboard.js')), contentType: javascript }],
    ['dashboard.css', { body: readFileSync(join(directory, 'dashboard.css')), contentType: css }],
    ['uplot.js', { body: readFileSync(join(uplotDirectory, 'uPlot.iife.min.js')), contentType: javascript }],
    ['uplot.css', { body: readFileSync(join(uplotDirectory, 'uPlot.min.css')), contentType: css }],
  ])
}

const contentSecurityPolicy = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ')

export async function dashboardRoutes(app: FastifyInstance): Promise<void> {
  const assets = loadAssets()
  const hidden = { hide: true }

  app.addHook('onSend', async (_request, reply) => {
    reply.header('content-security-policy', contentSecurityPolicy)
    reply.header('x-content-type-options', 'nosniff')
    reply.header('referrer-policy', 'no-referrer')
    reply.header('cache-control', 'no-cache')
  })

  const send = (name: string) => {
    const asset = assets.get(name)
    if (!asset) throw new DomainError('not_found')
    return asset
  }

  app.get('/dashboard', { schema: hidden }, async (_request, reply) => {
    const asset = send('index.html')
    return reply.type(asset.contentType).send(asset.body)
  })

  app.get<{ Params: { asset: string } }>('/dashboard/:asset', { schema: hidden }, async (request, reply) => {
    const asset = send(request.params.asset === 'index.html' ? '' : request.params.asset)
    return reply.type(asset.contentType).send(asset.body)
  })
}
