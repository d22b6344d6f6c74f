import { mkdirSync } from 'node:fs'
import { dirname } from 'node:path'
import BetterSqlite3 from 'better-sqlite3'
import { SqliteDialect } from 'kysely'
import { GenerationCache } from '../../domain/generation-cache.js'
import { errorCode, isConnectionError, sqlitePath, type Engine } from './engine.js'

// Prepared statements kept per connection, by SQL text, and the longest text kept (see
// cachePreparedStatements). A statement's memory grows with its parameters: the 512 key inserts
// and reads of 1 to 256 rows took 30.5 MB together, so at most 256 texts of at most 8,192
// characters (a 256-row insert of 8 columns is about 7,000) are kept, whatever HOLD_BATCH_MAX is.
export const preparedStatementsMax = 256
export const preparedStatementSqlCharsMax = 8_192

// Pages of WAL after which a commit checkpoints (SQLite's default is 1,000); see createDialect.
export const walAutocheckpointPages = 10_000

export const sqliteEngine: Engine = {
  name: 'sqlite',
  supportsReturning: true,
  supportsForUpdate: false,
  insertIgnoreStyle: 'on_conflict',
  upsertStyle: 'on_conflict',
  // SQLITE_MAX_VARIABLE_NUMBER of the SQLite that better-sqlite3 bundles (32,767 fails).
  statementParametersMax: 32_766,
  // IMMEDIATE takes the write lock at BEGIN, so two processes never both read then fail to
  // upgrade (SQLITE_BUSY without waiting); every transaction here writes anyway.
  beginSql: 'begin immediate',
  autoIncrementColumn: () => ({ type: 'integer', keyword: true }),
  tableOptionsSql: null,
  exactTextCollations: null,
  partialIndexes: true,
  dropIndexNamesTable: false,
  clusteredByKeySql: 'without rowid',
  isTransientConflict: (error) => {
    const code = errorCode(error)
    return code === 'SQLITE_BUSY' || code === 'SQLITE_BUSY_SNAPSHOT' || code === 'SQLITE_LOCKED'
  },
  isUniqueViolation: (error) => {
    const code = errorCode(error)
    return code === 'SQLITE_CONSTRAINT_UNIQUE' || code === 'SQLITE_CONSTRAINT_PRIMARYKEY'
  },
  isUnavailable: (error) => {
    const code = errorCode(error)
    return code === 'SQLITE_CANTOPEN' || code === 'SQLITE_IOERR' || code === 'SQLITE_FULL' || isConnectionError(error)
  },
  schemaOf: () => undefined,
  createDialect(databaseUrl, { lockWaitMs }) {
    const path = sqlitePath(databaseUrl)
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true })
    return new SqliteDialect({
      database: async () => {
        const database = new BetterSqlite3(path)
        // WAL lets readers run beside the writer and several processes share the file;
        // synchronous=FULL makes a commit durable before the reply is sent (I5).
        database.pragma('journal_mode = WAL')
        database.pragma('synchronous = FULL')
        // How long a writer waits for another process's write lock before SQLITE_BUSY (then
        // retried). better-sqlite3 waits synchronously: the whole event loop waits with it.
        database.pragma(`busy_timeout = ${lockWaitMs}`)
        database.pragma('foreign_keys = ON')
        // Checkpoints copy the WAL's pages into the file and sync it, in the committing call,
        // so the event loop waits for them. Keyed batches dirty a page of the key index per key
        // (random keys), so at the default 1,000 pages a checkpoint came every few batches;
        // at 10,000 (about 40 MB of WAL) a page rewritten by several batches is copied once:
        // 54 -> 41 µs per stored key, measured with 170-key batches and synchronous=FULL.
        database.pragma(`wal_autocheckpoint = ${walAutocheckpointPages}`)
        cachePreparedStatements(database, preparedStatementsMax, preparedStatementSqlCharsMax)
        return database
      },
    })
  },
}

// Kysely's SQLite driver prepares every statement it runs. The hot path's texts repeat (one per
// batch size, hot-sql.ts), and preparing is parsing: 105 µs for a 170-row key insert, 31 µs for a
// 170-key read, paid by the one event loop on every batch. A statement is reused only once the
// previous use has finished, which better-sqlite3's synchronous calls guarantee (nothing here
// iterates a statement lazily). At most `statementsMax` are kept (GenerationCache), none longer than
// `sqlCharsMax`.
export function cachePreparedStatements(database: BetterSqlite3.Database, statementsMax: number, sqlCharsMax: number): void {
  const prepare = database.prepare.bind(database)
  const statements = new GenerationCache<string, BetterSqlite3.Statement>(statementsMax)
  database.prepare = ((sqlText: string) => {
    if (sqlText.length > sqlCharsMax) return prepare(sqlText)
    let statement = statements.get(sqlText)
    if (statement === undefined) {
      statement = prepare(sqlText)
      statements.set(sqlText, statement)
    }
    return statement
  }) as typeof database.prepare
}
