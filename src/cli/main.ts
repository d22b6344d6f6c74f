// npx flash-sale serve | migrate | seed | audit | sweep --once | sign
// Exit status: 0 all well, 1 the audit found a violation, 2 misuse, 3 the command could not run
// (the database unreachable, missing or not migrated): said in one line, never a stack trace.
import { existsSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { ConfigError, loadConfig, loadDotEnv } from '../config.js'
import { audit } from '../domain/audit.js'
import { sweepOnce } from '../jobs/sweeper.js'
import { presentAudit } from '../http/present.js'
import { signPayload } from '../http/signature.js'
import { openRuntime, seedIfEmpty } from '../runtime.js'
import { parseRaceArgs, raceUsage, RaceUsageError, runRace } from './race.js'
import { startServer } from '../server.js'
import { sqlitePath } from '../store/engines/engine.js'

const usage = `usage: flash-sale <command>
  serve                 start the HTTP server (migrates and seeds an empty database)
  migrate               apply database migrations
  seed                  create product 1 (SEED_STOCK units) if the database has no product
  audit                 recompute invariants I1-I4; exit 1 on any violation
  sweep --once          expire lapsed holds and orders once
  sign --body JSON [--secret S] [--timestamp T]
                        print a Webhook-Signature header value (secret defaults to WEBHOOK_SECRET)
  ${raceUsage}`

export async function runCli(argv: string[]): Promise<number> {
  const [command, ...rest] = argv
  loadDotEnv()
  try {
    // Commands without options still refuse unknown flags: `audit --fix` must not pass silently.
    if (command === 'serve' || command === 'migrate' || command === 'seed' || command === 'audit') parseArgs({ args: rest, options: {}, strict: true })
    switch (command) {
      case 'serve':
        await startServer()
        return 0
      case 'migrate':
        return await withRuntime({}, async (runtime) => {
          await runtime.store.migrate()
          console.log(`migrated ${runtime.config.engine} database`)
          return 0
        })
      case 'seed':
        return await withRuntime({}, async (runtime) => {
          // On a new database the migration itself creates product 1 (0002_seed_product): that is
          // this command seeding too, not "already has products" (the twelfth session's probe).
          // Counted before migrating, an unmigrated database has none.
          const productsBefore = await runtime.store.countProducts().catch(() => 0)
          await runtime.store.migrate()
          const seeded = (await seedIfEmpty(runtime)) || (productsBefore === 0 && (await runtime.store.countProducts()) > 0)
          const why = runtime.config.seedStock === 0 ? 'SEED_STOCK=0' : 'the database already has products'
          console.log(seeded ? `seeded product 1 with ${runtime.config.seedStock} units` : `${why}; nothing seeded`)
          return 0
        })
      case 'audit':
        return await withRuntime({ existingDatabase: true }, async (runtime) => {
          const report = await audit(runtime.store)
          console.log(JSON.stringify(presentAudit(report), null, 2))
          return report.ok ? 0 : 1
        })
      case 'sweep': {
        const { values } = parseArgs({ args: rest, options: { once: { type: 'boolean' } }, strict: true })
        if (!values.once) {
          console.error('sweep runs inside every server; use `sweep --once` for a single pass')
          return 2
        }
        return await withRuntime({ existingDatabase: true }, async (runtime) => {
          const result = await sweepOnce(runtime.store, runtime.observer, runtime.clock, runtime.config.sweepBatchMax)
          console.log(JSON.stringify(result))
          return 0
        })
      }
      case 'sign': {
        const { values } = parseArgs({ args: rest, options: { body: { type: 'string' }, secret: { type: 'string' }, timestamp: { type: 'string' } }, strict: true })
        const secret = values.secret ?? process.env.WEBHOOK_SECRET
        if (values.body === undefined || !secret) {
          console.error('sign needs --body and a secret (--secret or WEBHOOK_SECRET)')
          return 2
        }
        if (values.timestamp !== undefined && !/^\d{1,12}$/.test(values.timestamp)) {
          console.error(`sign --timestamp takes whole unix seconds, got "${values.timestamp}"`)
          return 2
        }
        const timestampS = values.timestamp !== undefined ? Number(values.timestamp) : Math.floor(Date.now() / 1000)
        console.log(signPayload(secret, timestampS, values.body))
        return 0
      }
      case 'race':
        return await runRace(parseRaceArgs(rest, process.env), {
          out: (line) => console.log(line),
          err: (line) => console.error(line),
          progressIsTty: process.stderr.isTTY === true,
          writeProgress: (text) => process.stderr.write(text),
        })
      // Asked for, the usage is an answer (stdout, 0), not a misuse (the twelfth session's probe).
      case 'help':
      case '--help':
      case '-h':
        console.log(usage)
        return 0
      default:
        console.error(usage)
        return 2
    }
  } catch (error) {
    if (error instanceof ConfigError) {
      console.error(`configuration error: ${error.message}`)
      return 2
    }
    if (error instanceof RaceUsageError) {
      console.error(`${error.message}\n${raceUsage}`)
      return 2
    }
    if (error instanceof TypeError && (error as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      console.error(`${error.message}\n${usage}`)
      return 2
    }
    if (command === 'migrate' || command === 'seed' || command === 'audit' || command === 'sweep') {
      // Not 1, which says the audit found a violation (the seventh probe: a database that was not
      // migrated, or unreachable, printed a stack trace and exited 1).
      const message = error instanceof Error ? error.message : String(error)
      // A table missing, not a database (PostgreSQL's `database "x" does not exist` is no hint).
      const notMigrated = error instanceof CommandCannotRun || /no such table|relation "[^"]*" does not exist|Table '[^']*' doesn't exist/i.test(message)
      console.error(`flash-sale ${command}: ${message.split('\n')[0]}${notMigrated ? ' (is the database migrated? npx flash-sale migrate)' : ''}`)
      return 3
    }
    throw error
  }
}

// A command refused before it opened the database (exit 3 like any failure to run).
class CommandCannotRun extends Error {}

async function withRuntime(options: { existingDatabase?: boolean }, fn: (runtime: ReturnType<typeof openRuntime>) => Promise<number>): Promise<number> {
  const config = loadConfig()
  // A mistyped SQLite path is not a new, empty database to audit (opening it would create one).
  const path = config.engine === 'sqlite' ? sqlitePath(config.databaseUrl) : undefined
  if (options.existingDatabase && path !== undefined && path !== ':memory:' && !existsSync(path)) {
    throw new CommandCannotRun(`no SQLite database at ${path}`)
  }
  // Errors only: a command's answer is its one line (tx.retry warnings while a server is
  // unreachable came first).
  const runtime = openRuntime({ ...config, logLevel: 'error' })
  try {
    return await fn(runtime)
  } finally {
    await runtime.store.close()
  }
}
