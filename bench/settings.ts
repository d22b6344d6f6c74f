// Settings the bench scripts read from the environment, checked the same way in each: a bad value
// stops the script with a message naming the variable, before any server starts.
export class UsageError extends Error {}

// For scripts that read their settings at the top of the module: a bad value ends the process
// with its message and exit status 2, not a stack trace.
export function settingsOrExit<T>(script: string, read: () => T): T {
  try {
    return read()
  } catch (error) {
    if (!(error instanceof UsageError)) throw error
    process.stderr.write(`${script}: ${error.message}\n`)
    process.exit(2)
  }
}

export function integerSetting(name: string, fallback: number, min: number, max: number): number {
  const raw = process.env[name]?.trim()
  if (!raw) return fallback
  if (!/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max) throw new UsageError(`${name} must be an integer from ${min} to ${max}, got "${raw}"`)
  return Number(raw)
}

// BENCH_CONNECTIONS: a comma-separated list of connection counts.
export function connectionLevelsSetting(fallback: string): number[] {
  const raw = process.env.BENCH_CONNECTIONS?.trim() || fallback
  const levels = raw.split(',').map((part) => Number(part.trim()))
  if (levels.some((level) => !Number.isInteger(level) || level < 1 || level > 4096)) {
    throw new UsageError(`BENCH_CONNECTIONS must be a comma-separated list of integers from 1 to 4096, got "${raw}"`)
  }
  return levels
}
