// Money is integer minor units plus an ISO 4217 currency; it becomes a decimal string only at the edge.
const supportedCurrencies = new Set(Intl.supportedValuesOf('currency'))

export function isSupportedCurrency(currency: string): boolean {
  return /^[A-Z]{3}$/.test(currency) && supportedCurrencies.has(currency)
}

const decimalsByCurrency = new Map<string, number>()

// Building an Intl.NumberFormat costs more than the rest of a product read: cached per currency.
export function currencyDecimals(currency: string): number {
  let decimals = decimalsByCurrency.get(currency)
  if (decimals === undefined) {
    decimals = new Intl.NumberFormat('en', { style: 'currency', currency }).resolvedOptions().maximumFractionDigits ?? 2
    decimalsByCurrency.set(currency, decimals)
  }
  return decimals
}

// Accepts "99.99", "100", 99.99 or 100; refuses more decimals than the currency has, signs,
// exponents and thousands separators. Returns undefined when the value is not a valid amount.
export function parseAmountMinor(value: string | number, currency: string): number | undefined {
  const text = typeof value === 'number' ? (Number.isFinite(value) ? String(value) : '') : value
  const decimals = currencyDecimals(currency)
  const match = /^(\d+)(?:\.(\d+))?$/.exec(text)
  if (!match) return undefined
  const [, whole = '', fraction = ''] = match
  if (fraction.length > decimals) return undefined
  const minor = Number(whole) * 10 ** decimals + Number(fraction.padEnd(decimals, '0') || '0')
  return Number.isSafeInteger(minor) ? minor : undefined
}

// An amount's meaning, not its text, for a webhook's fingerprint: "10", "10.0", "10.00" and the
// JSON number 10.00 are one amount, so a retry that writes it otherwise still replays. Text that
// is not a plain decimal is kept as sent (such an amount is refused 422 and never stored).
export function canonicalAmountText(amount: string | number): string {
  const text = typeof amount === 'number' ? (Number.isFinite(amount) ? String(amount) : '') : amount
  const match = /^(\d+)(?:\.(\d+))?$/.exec(text)
  if (!match) return String(amount)
  const whole = match[1]!.replace(/^0+(?=\d)/, '')
  const fraction = (match[2] ?? '').replace(/0+$/, '')
  return fraction === '' ? whole : `${whole}.${fraction}`
}

export function formatAmount(amountMinor: number, currency: string): string {
  const decimals = currencyDecimals(currency)
  if (decimals === 0) return String(amountMinor)
  const scale = 10 ** decimals
  const whole = Math.trunc(amountMinor / scale)
  const fraction = String(Math.abs(amountMinor % scale)).padStart(decimals, '0')
  return `${amountMinor < 0 && whole === 0 ? '-' : ''}${whole}.${fraction}`
}
