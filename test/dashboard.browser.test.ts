// Proves the live dashboard works in a real browser: headless Chromium (driven by playwright-core)
// opens GET /dashboard of an in-process server, a wrong token shows an error and no data, the right
// one shows each number of a short sale as it changes (holds, refusals, payments, a refund), the
// token never appears in a URL, and the page fits a phone's width. DASHBOARD_SCREENSHOT_DIR=docs
// also saves the screenshots the README shows.
import { existsSync, mkdirSync } from 'node:fs'
import { join } from 'node:path'
import { chromium, type Browser, type Page } from 'playwright-core'
import { describe, expect, it, onTestFinished } from 'vitest'
import { buildTestApp, testAdminToken, type TestApp } from './helpers/app.js'
import { holdOf, orderOf } from './helpers/checkout.js'
import { times } from './helpers/http.js'
import { pollUntil } from './helpers/lifecycle.js'

const chromiumPath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'
// The flags a container needs (no sandbox, no GPU) and those that stop Chromium calling home.
const chromiumArgs = ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']
// The page refreshes every 2 s; a number must show within a few refreshes.
const pageTimeoutMs = 15_000

async function launch(): Promise<Browser> {
  const browser = await chromium.launch({ executablePath: chromiumPath, headless: true, args: chromiumArgs })
  onTestFinished(() => browser.close())
  return browser
}

async function openDashboard(browser: Browser, t: TestApp, viewport: { width: number; height: number }): Promise<{ page: Page; urls: string[]; pageErrors: string[] }> {
  const page = await browser.newPage({ viewport })
  const urls: string[] = []
  const pageErrors: string[] = []
  page.on('request', (request) => urls.push(request.url()))
  page.on('pageerror', (error) => pageErrors.push(error.message))
  page.on('console', (message) => {
    if (message.type() === 'error') pageErrors.push(message.text())
  })
  await page.goto(`${t.baseUrl}/dashboard`)
  return { page, urls, pageErrors }
}

async function connect(page: Page, token: string): Promise<void> {
  await page.fill('#token', token)
  await page.click('#token-form button[type="submit"]')
}

// The text of one field of a product's card, or undefined while the card is not shown.
async function productField(page: Page, productId: number, field: string): Promise<string | undefined> {
  const locator = page.locator(`article.product[data-product-id="${productId}"] [data-field="${field}"]`)
  return (await locator.count()) === 0 ? undefined : (await locator.first().textContent())?.trim()
}

async function productCounts(page: Page, productId: number) {
  const [stock, available, reserved, sold] = await Promise.all(['stock', 'available_stock', 'reserved', 'sold'].map((field) => productField(page, productId, field)))
  return { stock, available, reserved, sold }
}

async function refusalCount(page: Page, scope: string, reason: string): Promise<string | undefined> {
  const cell = page.locator(`${scope} tr[data-reason="${reason}"] td`)
  return (await cell.count()) === 0 ? undefined : (await cell.textContent())?.trim()
}

async function serviceTile(page: Page, label: string): Promise<string | undefined> {
  const tile = page.locator('#service-tiles > div', { hasText: label }).locator('dd')
  return (await tile.count()) === 0 ? undefined : (await tile.first().textContent())?.trim()
}

function waitForPage<T>(read: () => Promise<T>, expected: T, what: string): Promise<T> {
  return pollUntil(read, (value) => JSON.stringify(value) === JSON.stringify(expected), { timeoutMs: pageTimeoutMs, intervalMs: 100, what })
}

function webhook(t: TestApp, body: Record<string, unknown>, key: string) {
  return t.request('POST', '/api/payments/webhook', { body, headers: { 'idempotency-key': key } })
}

// Skipped where Chromium is missing, except where REQUIRE_BROWSER=1 (CI installs it and sets
// this), so a lost browser fails the run instead of quietly skipping its test.
describe.skipIf(!existsSync(chromiumPath) && process.env.REQUIRE_BROWSER !== '1')('dashboard in Chromium', () => {
  it('refuses a wrong token with an error and no data, then follows a short sale number by number', async () => {
    const t = await buildTestApp('sqlite', { stock: 5 })
    const browser = await launch()
    const { page, urls, pageErrors } = await openDashboard(browser, t, { width: 1280, height: 900 })
    expect(await page.locator('#status').textContent()).toMatch(/Enter the admin token/)
    expect(await page.locator('#board').isHidden()).toBe(true)

    await connect(page, 'not-the-token')
    await pollUntil(
      () => page.locator('#error').isVisible(),
      (visible) => visible,
      { timeoutMs: pageTimeoutMs, what: 'the error line' },
    )
    expect(await page.locator('#error').textContent()).toContain('401')
    expect(await page.locator('#board').isHidden()).toBe(true)
    expect(await page.locator('article.product').count()).toBe(0)

    await connect(page, testAdminToken)
    await waitForPage(() => productCounts(page, t.productId), { stock: '5', available: '5', reserved: '0', sold: '0' }, 'the first numbers')
    expect(await page.locator('#error').isHidden()).toBe(true)
    // Fields the page does not place itself are listed under "More": a later field shows up too.
    expect(await page.locator(`article.product[data-product-id="${t.productId}"] [data-field="more"] [data-name="price"] dd`).textContent()).toBe('99.99')

    // Eight buyers race for five units: five holds, three refusals.
    const replies = await Promise.all(times(8, () => t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 1 } })))
    const holdIds = replies.filter((reply) => reply.status === 201).map((reply) => reply.body.hold_id as string)
    expect(holdIds).toHaveLength(5)
    await waitForPage(() => productCounts(page, t.productId), { stock: '5', available: '0', reserved: '5', sold: '0' }, 'the holds')
    const card = `article.product[data-product-id="${t.productId}"]`
    await waitForPage(() => Promise.all([refusalCount(page, card, 'insufficient_stock'), refusalCount(page, '#service-refusals', 'insufficient_stock')]), ['3', '3'], 'three refusals')
    await waitForPage(() => serviceTile(page, 'Holds granted'), '5', 'holds granted')

    // Three orders are paid, a fourth payment fails and frees its unit.
    const orders = await Promise.all(holdIds.slice(0, 4).map((holdId) => orderOf(t, holdId)))
    for (const [index, order] of orders.slice(0, 3).entries()) expect((await webhook(t, { order_id: order.order_id, status: 'success' }, `pay-${index}`)).body.order_status).toBe('paid')
    expect((await webhook(t, { order_id: orders[3].order_id, status: 'failed' }, 'pay-failed')).body.order_status).toBe('cancelled')
    await waitForPage(() => productCounts(page, t.productId), { stock: '5', available: '1', reserved: '1', sold: '3' }, 'the payments')
    await waitForPage(() => serviceTile(page, 'Payments applied'), '4', 'payments applied')

    // Someone else takes the freed unit; the failed order's late success cannot be honoured.
    await holdOf(t, t.productId, 1)
    const late = await webhook(t, { order_id: orders[3].order_id, status: 'success' }, 'pay-late')
    expect(late.body.outcome).toBe('refund_required')
    await waitForPage(() => productCounts(page, t.productId), { stock: '5', available: '0', reserved: '2', sold: '3' }, 'the resale')
    await waitForPage(() => Promise.all([serviceTile(page, 'Refunds needed'), productField(page, t.productId, 'refunds_required')]), ['1', '1'], 'a refund needed')
    await waitForPage(() => serviceTile(page, 'Holds granted'), '6', 'holds granted after the resale')

    // The chart has drawn, with both series named in its legend, and the rates are numbers.
    expect(await page.locator(`${card} .uplot canvas`).count()).toBe(1)
    expect(await page.locator(`${card} .u-legend`).textContent()).toMatch(/holds\/s[\s\S]*sales\/s/)
    expect(await productField(page, t.productId, 'sales_per_s')).toMatch(/^\d+\.\d$/)
    expect(await productField(page, t.productId, 'holds_per_s')).toMatch(/^\d+\.\d$/)
    await saveScreenshot(page, 'dashboard.png')

    // The two remaining holds lapse 5 s ago and no sweeper has run: their units already show as
    // available, and the sweeper lag says how long they have waited.
    t.clock.advanceMs(t.config.holdTtlMs + 5_000)
    await waitForPage(
      () => Promise.all([productField(page, t.productId, 'sweeper_lag'), serviceTile(page, 'Sweeper lag'), productField(page, t.productId, 'available_stock')]),
      ['5.0 s', '5.0 s', '2'],
      'the sweeper lag',
    )
    expect((await t.sweep()).expiredCount).toBe(2)
    await waitForPage(
      () => Promise.all([productField(page, t.productId, 'sweeper_lag'), productField(page, t.productId, 'reserved'), serviceTile(page, 'Holds expired')]),
      ['0.0 s', '0', '2'],
      'the sweep',
    )

    // The waitlist: the last 2 units held, 3 tickets wait; releasing one hold admits the first.
    const lastHolds = await Promise.all([1, 2].map(() => t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 1 } })))
    for (let index = 0; index < 3; index++) expect((await t.request('POST', `/api/products/${t.productId}/waitlist`, { body: { qty: 1 } })).body.status).toBe('waiting')
    const waitlistFact = async (name: string) =>
      (await page.locator(`article.product[data-product-id="${t.productId}"] [data-field="waitlist"] [data-name="${name}"] dd`).textContent())?.trim()
    await waitForPage(() => Promise.all([waitlistFact('waiting_tickets'), waitlistFact('waiting_units'), serviceTile(page, 'Waitlist admitted')]), ['3', '3', '0'], 'the waiting line')
    expect((await t.request('DELETE', `/api/holds/${lastHolds[0]!.body.hold_id}`)).status).toBe(200)
    await waitForPage(
      () => Promise.all([waitlistFact('waiting_tickets'), serviceTile(page, 'Waitlist admitted'), productField(page, t.productId, 'reserved')]),
      ['2', '1', '2'],
      'an admission',
    )

    // The token travelled only in a header: no URL the page asked for contains it.
    expect(urls.filter((url) => url.includes(testAdminToken) || url.includes('not-the-token'))).toEqual([])
    // The browser logs the wrong token's 401 itself; anything else would be a fault of the page.
    expect(pageErrors.filter((message) => !message.includes('status of 401'))).toEqual([])
    expect(await t.audit()).toMatchObject({ ok: true, violations: [] })
  })

  it('fits a phone screen: no sideways scrolling, cards one above the other', async () => {
    const t = await buildTestApp('sqlite', { stock: 3 })
    await t.createProduct(7)
    const browser = await launch()
    const { page, pageErrors } = await openDashboard(browser, t, { width: 390, height: 844 })
    await connect(page, testAdminToken)
    await pollUntil(
      () => page.locator('article.product').count(),
      (count) => count === 2,
      { timeoutMs: pageTimeoutMs, what: 'two product cards' },
    )
    expect(await page.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(390)
    const boxes = await page.locator('article.product').evaluateAll((cards) => cards.map((card) => card.getBoundingClientRect().toJSON() as DOMRect))
    expect(boxes[1]!.top).toBeGreaterThanOrEqual(boxes[0]!.bottom)
    expect(boxes.every((box) => box.right <= 390)).toBe(true)
    await saveScreenshot(page, 'dashboard-phone.png')
    expect(pageErrors).toEqual([])
  })

  it('serves its files from the service itself with a strict content security policy, and nothing else under /dashboard', async () => {
    const t = await buildTestApp('sqlite', { stock: 1 })
    const page = await t.request('GET', '/dashboard')
    expect(page.status).toBe(200)
    expect(page.headers.get('content-type')).toContain('text/html')
    expect(page.headers.get('content-security-policy')).toContain("script-src 'self'")
    expect(page.headers.get('content-security-policy')).toContain("connect-src 'self'")
    expect(page.text).not.toMatch(/https?:\/\//)
    for (const asset of ['uplot.js', 'uplot.css', 'dashboard.js', 'dashboard.css']) expect((await t.request('GET', `/dashboard/${asset}`)).status, asset).toBe(200)
    for (const path of ['/dashboard/..%2fpackage.json', '/dashboard/index.js', '/dashboard/%2e%2e%2fsrc%2fconfig.ts']) {
      const reply = await t.request('GET', path)
      expect(reply.status, path).toBe(404)
      expect(reply.body.code).toBe('not_found')
    }
    expect((await t.request('GET', '/api/admin/dashboard')).status).toBe(401)
  })
})

async function saveScreenshot(page: Page, name: string): Promise<void> {
  const directory = process.env.DASHBOARD_SCREENSHOT_DIR
  if (!directory) return
  mkdirSync(directory, { recursive: true })
  await page.screenshot({ path: join(directory, name), fullPage: true })
}
