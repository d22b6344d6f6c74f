// The live dashboard. The admin token lives in this module's memory only (not in storage, a
// cookie or a URL) and leaves the page only as an Authorization header. Data is written with
// textContent, never as HTML, so a product name cannot inject markup.

const refreshMs = 2000
// The rate chart keeps this much history per product; points beyond it are dropped.
const historyWindowMs = 10 * 60 * 1000
const historyPointsMax = Math.ceil(historyWindowMs / refreshMs) + 10
// After failures, refreshes back off up to this delay.
const retryDelayMsMax = 30_000
// Fields the product card shows in their own place; every other field goes under "More",
// so a field the API gains later (per-buyer limit, sale window, ...) appears without a change.
const placedFields = new Set([
  'id',
  'name',
  'stock',
  'available_stock',
  'reserved',
  'sold',
  'holds_created',
  'hold_refusals',
  'refunds_required',
  'sweeper_lag_seconds',
  'sale_status',
  'waitlist',
])

const $ = (selector, root = document) => root.querySelector(selector)
const form = $('#token-form')
const tokenInput = $('#token')
const disconnectButton = $('#disconnect')
const statusLine = $('#status')
const errorLine = $('#error')
const board = $('#board')
const productsRoot = $('#products')
const template = $('#product-template')
const number = new Intl.NumberFormat('en-US')
const rate = new Intl.NumberFormat('en-US', { minimumFractionDigits: 1, maximumFractionDigits: 1 })
const clockTime = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false })

let token = null
let timer = undefined
// Bumped on every connect and disconnect, so an answer to an older request is dropped.
let generation = 0
let failures = 0
const cards = new Map()

form.addEventListener('submit', (event) => {
  event.preventDefault()
  const entered = tokenInput.value.trim()
  tokenInput.value = ''
  if (!entered) return
  connect(entered)
})
disconnectButton.addEventListener('click', () => disconnect('Disconnected. Enter the admin token to watch the sale.'))

function connect(entered) {
  token = entered
  generation += 1
  failures = 0
  clearTimeout(timer)
  hideError()
  statusLine.textContent = 'Connecting…'
  disconnectButton.hidden = false
  void refresh(generation)
}

function disconnect(message) {
  token = null
  generation += 1
  clearTimeout(timer)
  board.hidden = true
  for (const card of cards.values()) card.chart?.destroy()
  cards.clear()
  productsRoot.replaceChildren()
  disconnectButton.hidden = true
  statusLine.textContent = message
}

async function refresh(forGeneration) {
  let delayMs = refreshMs
  try {
    const response = await fetch('/api/admin/dashboard', {
      headers: { authorization: `Bearer ${token}`, accept: 'application/json' },
      cache: 'no-store',
      credentials: 'omit',
    })
    if (forGeneration !== generation) return
    if (response.status === 401) {
      disconnect('Enter the admin token to watch the sale.')
      showError('The token was refused (401 unauthorized). Check ADMIN_TOKEN and enter it again.')
      return
    }
    if (!response.ok) throw new Error(`the service answered ${response.status}`)
    const data = await response.json()
    if (forGeneration !== generation) return
    // Rates use the page's own clock between answers: the interval is what matters, and it
    // stays right even when the server's clock is not the wall clock (tests use a manual one).
    render(data, Date.now())
    failures = 0
    hideError()
    statusLine.textContent = `Updated ${new Date().toLocaleTimeString()} · every ${refreshMs / 1000} s`
  } catch (error) {
    if (forGeneration !== generation) return
    failures += 1
    delayMs = Math.min(retryDelayMsMax, refreshMs * 2 ** Math.min(failures, 4))
    showError(`Cannot refresh (${error.message}); retrying in ${Math.round(delayMs / 1000)} s.`)
  }
  if (forGeneration === generation) timer = setTimeout(() => void refresh(forGeneration), delayMs)
}

function showError(message) {
  errorLine.textContent = message
  errorLine.hidden = false
}

function hideError() {
  errorLine.hidden = true
  errorLine.textContent = ''
}

function render(data, receivedAtMs) {
  board.hidden = false
  $('#processes').textContent = data.processes > 1 ? `· ${data.processes} processes, counters summed` : '· 1 process'
  const totals = data.totals ?? {}
  renderTiles($('#service-tiles'), [
    ['Holds granted', formatCount(totals.holds_created)],
    ['Refunds needed', formatCount(totals.refunds_required)],
    ['Payments applied', formatCount(totals.payments_applied)],
    ['Holds expired', formatCount(totals.holds_expired)],
    ['Sweeper lag', formatSeconds(data.sweeper_lag_seconds)],
    ['Tx retries', formatCount(totals.tx_retries)],
    ['Busy (503)', formatCount(totals.tx_busy)],
    ['Rate limited', formatCount(totals.rate_limited)],
    ['Waitlist admitted', formatCount(totals.waitlist_admitted)],
  ])
  renderCounts($('#service-refusals'), totals.hold_refusals)
  const truncated = $('#truncated')
  truncated.hidden = !data.products_truncated
  truncated.textContent = data.products_truncated ? `Showing the first ${data.products.length} products.` : ''

  const seen = new Set()
  for (const product of data.products ?? []) {
    seen.add(product.id)
    let card = cards.get(product.id)
    if (!card) {
      card = createCard(product.id)
      cards.set(product.id, card)
    }
    updateCard(card, product, receivedAtMs)
  }
  for (const [productId, card] of cards) {
    if (seen.has(productId)) continue
    card.chart?.destroy()
    card.element.remove()
    cards.delete(productId)
  }
}

function renderTiles(list, tiles) {
  list.replaceChildren(
    ...tiles.map(([label, value]) => {
      const tile = document.createElement('div')
      const term = document.createElement('dt')
      const detail = document.createElement('dd')
      term.textContent = label
      detail.textContent = value
      tile.append(term, detail)
      return tile
    }),
  )
}

function renderCounts(table, counts) {
  const entries = Object.entries(counts ?? {}).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
  const body = table.tBodies[0]
  if (entries.length === 0) {
    const row = body.insertRow()
    body.replaceChildren(row)
    const cell = row.insertCell()
    cell.colSpan = 2
    cell.className = 'muted'
    cell.textContent = 'none'
    return
  }
  body.replaceChildren(
    ...entries.map(([reason, count]) => {
      const row = document.createElement('tr')
      row.dataset.reason = reason
      const name = document.createElement('th')
      name.scope = 'row'
      name.textContent = reason
      const value = document.createElement('td')
      value.textContent = formatCount(count)
      row.append(name, value)
      return row
    }),
  )
}

function renderFacts(list, entries) {
  list.replaceChildren(
    ...entries.map(([name, value]) => {
      const tile = document.createElement('div')
      tile.dataset.name = name
      const term = document.createElement('dt')
      const detail = document.createElement('dd')
      term.textContent = name.replaceAll('_', ' ')
      detail.textContent = formatValue(value)
      tile.append(term, detail)
      return tile
    }),
  )
}

function createCard(productId) {
  const element = template.content.firstElementChild.cloneNode(true)
  element.dataset.productId = String(productId)
  productsRoot.append(element)
  const field = (name) => element.querySelector(`[data-field="${name}"]`)
  field('window_minutes').textContent = String(historyWindowMs / 60_000)
  const card = { element, field, history: { times: [], holds: [], sales: [] }, last: undefined, chart: undefined, chartArea: element.querySelector('.chart-area') }
  if (window.uPlot) {
    card.chart = new window.uPlot(chartOptions(card.chartArea.clientWidth), [[], [], []], card.chartArea)
    new ResizeObserver(() => card.chart.setSize({ width: Math.max(200, card.chartArea.clientWidth), height: chartHeight() })).observe(card.chartArea)
  }
  return card
}

function chartHeight() {
  return window.matchMedia('(max-width: 40rem)').matches ? 140 : 180
}

function chartOptions(width) {
  return {
    width: Math.max(200, width),
    height: chartHeight(),
    legend: { show: true, live: false },
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true }, y: { range: (_plot, _min, max) => [0, Math.max(1, max * 1.15)] } },
    axes: [
      { stroke: '#555', space: 70, values: (_plot, splits) => splits.map((atS) => clockTime.format(new Date(atS * 1000))) },
      { stroke: '#555', size: 48 },
    ],
    series: [
      {},
      { label: 'holds/s', stroke: '#2563eb', width: 2, fill: 'rgba(37, 99, 235, 0.08)', points: { show: false } },
      { label: 'sales/s', stroke: '#16a34a', width: 2, fill: 'rgba(22, 163, 74, 0.08)', points: { show: false } },
    ],
  }
}

function updateCard(card, product, atMs) {
  const { field, element } = card
  for (const name of ['id', 'name']) field(name).textContent = String(product[name])
  for (const name of ['stock', 'available_stock', 'reserved', 'sold']) field(name).textContent = formatCount(product[name])
  const badge = field('sale_status')
  badge.hidden = product.sale_status === undefined
  badge.textContent = product.sale_status ?? ''

  const stock = Math.max(1, product.stock)
  const [soldBar, reservedBar, availableBar] = element.querySelectorAll('.meter span')
  soldBar.style.width = `${(100 * product.sold) / stock}%`
  reservedBar.style.width = `${(100 * product.reserved) / stock}%`
  availableBar.style.width = `${(100 * Math.max(0, product.available_stock)) / stock}%`

  // Rates from the change since the previous answer. A counter that went down (a process
  // restarted) gives no rate for that interval rather than a negative one.
  let holdsPerS = null
  let salesPerS = null
  if (card.last && atMs > card.last.atMs) {
    const elapsedS = (atMs - card.last.atMs) / 1000
    if (typeof product.holds_created === 'number' && typeof card.last.holdsCreated === 'number' && product.holds_created >= card.last.holdsCreated) {
      holdsPerS = (product.holds_created - card.last.holdsCreated) / elapsedS
    }
    if (product.sold >= card.last.sold) salesPerS = (product.sold - card.last.sold) / elapsedS
    pushHistory(card.history, atMs, holdsPerS, salesPerS)
    card.chart?.setData([card.history.times, card.history.holds, card.history.sales])
  }
  card.last = { atMs, holdsCreated: product.holds_created, sold: product.sold }
  field('holds_per_s').textContent = typeof product.holds_created === 'number' ? formatRate(holdsPerS) : '–'
  field('sales_per_s').textContent = formatRate(salesPerS)
  field('refunds_required').textContent = formatCount(product.refunds_required)
  field('sweeper_lag').textContent = formatSeconds(product.sweeper_lag_seconds)
  renderCounts(field('hold_refusals'), product.hold_refusals)

  // The waitlist, when the API reports one: an object of facts, or fields named waitlist_*.
  const waitlistEntries = []
  if (product.waitlist && typeof product.waitlist === 'object') waitlistEntries.push(...Object.entries(product.waitlist))
  else if (product.waitlist !== undefined) waitlistEntries.push(['waitlist', product.waitlist])
  for (const [name, value] of Object.entries(product)) if (name.startsWith('waitlist_')) waitlistEntries.push([name.slice('waitlist_'.length), value])
  element.querySelector('[data-section="waitlist"]').hidden = waitlistEntries.length === 0
  renderFacts(field('waitlist'), waitlistEntries)

  const more = Object.entries(product).filter(([name]) => !placedFields.has(name) && !name.startsWith('waitlist_'))
  element.querySelector('[data-section="more"]').hidden = more.length === 0
  renderFacts(field('more'), more)
}

function pushHistory(history, atMs, holdsPerS, salesPerS) {
  history.times.push(atMs / 1000)
  history.holds.push(holdsPerS)
  history.sales.push(salesPerS)
  const oldestS = (atMs - historyWindowMs) / 1000
  while (history.times.length > historyPointsMax || (history.times.length > 0 && history.times[0] < oldestS)) {
    history.times.shift()
    history.holds.shift()
    history.sales.shift()
  }
}

function formatCount(value) {
  return typeof value === 'number' ? number.format(value) : '–'
}

function formatRate(value) {
  return typeof value === 'number' ? rate.format(value) : '–'
}

function formatSeconds(value) {
  if (typeof value !== 'number') return '–'
  if (value < 10) return `${value.toFixed(1)} s`
  return `${Math.round(value)} s`
}

function formatValue(value) {
  if (value === null) return '—'
  if (typeof value === 'number') return number.format(value)
  if (typeof value === 'object') return JSON.stringify(value)
  return String(value)
}
