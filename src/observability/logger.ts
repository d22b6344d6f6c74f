import { closeSync, openSync } from 'node:fs'
import pino, { type Logger } from 'pino'
import { ConfigError, type Config } from '../config.js'

// JSON lines to stdout, and to LOG_FILE as well when set. Secrets never reach a log line:
// the authorization and signature headers are redacted wherever they appear.
export function createLogger(config: Pick<Config, 'logLevel' | 'logFile'>): Logger {
  const options = {
    level: config.logLevel,
    redact: { paths: ['req.headers.authorization', 'req.headers["webhook-signature"]', 'headers.authorization', 'headers["webhook-signature"]'], censor: '[redacted]' },
  }
  if (!config.logFile) return pino(options)
  // Opened here first, so a path that cannot be written stops the start naming LOG_FILE (it was
  // an unhandled 'error' event from the stream, and missing folders were created anywhere).
  try {
    closeSync(openSync(config.logFile, 'a'))
  } catch (error) {
    throw new ConfigError(`LOG_FILE cannot be opened for appending (${(error as NodeJS.ErrnoException).code ?? String(error)}; its folder must exist), got "${config.logFile}"`)
  }
  return pino(options, pino.multistream([{ stream: process.stdout }, { stream: pino.destination({ dest: config.logFile, sync: false }) }]))
}
