import pino, { type Logger } from 'pino'
import type { Config } from '../config.js'

// JSON lines to stdout, and to LOG_FILE as well when set. Secrets never reach a log line:
// the authorization and signature headers are redacted wherever they appear.
export function createLogger(config: Pick<Config, 'logLevel' | 'logFile'>): Logger {
  const options = {
    level: config.logLevel,
    redact: { paths: ['req.headers.authorization', 'req.headers["webhook-signature"]', 'headers.authorization', 'headers["webhook-signature"]'], censor: '[redacted]' },
  }
  if (!config.logFile) return pino(options)
  return pino(options, pino.multistream([{ stream: process.stdout }, { stream: pino.destination({ dest: config.logFile, mkdir: true, sync: false }) }]))
}
