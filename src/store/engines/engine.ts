// What differs between engines, asked as capabilities; shared code never tests a name.
import type { Dialect, QueryResult } from 'kysely'

export type EngineName = 'sqlite' | 'postgres' | 'mysql'

// The file a sqlite: URL names (here, not in sqlite.ts, so reading it loads no driver).
export function sqlitePath(databaseUrl: string): string {
  return databaseUrl.replace(/^sqlite:(\/\/)?/, '')
}

// A column of a multi-row insert that sends one array per column, with its SQL type.
export interface ArrayColumn {
  readonly name: string
  readonly type: 'varchar' | 'integer' | 'bigint'
}

// A write that waits to be merged with the transaction's next ones (store/write-behind.ts).
export interface MergedWrite {
  readonly sql: string
  readonly parameters: readonly unknown[]
  // Set when the rows it changes are checked: the merged statement must then report them.
  readonly expectedRows?: number
}

// How an engine sends several writes of a transaction as one statement.
export interface WriteMerging {
  // The text running `writes` in order, whose parameters are theirs one after another; with
  // `commit`, it also commits the transaction (only where commitJoins).
  mergedSql(writes: readonly MergedWrite[], commit: boolean): string
  // The rows each write changed, from the merged statement's result (where expectedRows is set).
  rowsChanged(result: QueryResult<unknown>, writes: readonly MergedWrite[]): number[]
  // Whether the commit may ride along. Then a write whose expectedRows is not met must fail in
  // the server, before the commit runs: the merged text checks it there, and isGuardFailure
  // tells that failure apart.
  readonly commitJoins: boolean
  isGuardFailure?(error: unknown): boolean
}

export interface Engine {
  readonly name: EngineName
  // MySQL has no RETURNING: insert, then read the generated key from the insert result.
  readonly supportsReturning: boolean
  // SQLite has no row locks: its write transactions take the database lock at BEGIN instead.
  readonly supportsForUpdate: boolean
  // How a conflicting insert becomes "nothing inserted": ON CONFLICT DO NOTHING, or (where a
  // failed statement leaves the transaction usable) catching the duplicate-key error.
  readonly insertIgnoreStyle: 'on_conflict' | 'catch_duplicate'
  // How an insert adds to an existing row instead: ON CONFLICT ... DO UPDATE, or MySQL's
  // ON DUPLICATE KEY UPDATE.
  readonly upsertStyle: 'on_conflict' | 'on_duplicate_key'
  // Many rows in one INSERT. Undefined: a VALUES list, a parameter per cell. Where the driver
  // sends arrays, the statement this returns takes one array per column (parameter $n is the
  // n-th column's values): its text is then the same for every batch size and the server
  // parses seven parameters instead of seven per row (PostgreSQL, 60-row inserts: 11.2 -> 7.9
  // µs of backend CPU a row).
  columnArraysInsertSql?(table: string, columns: readonly ArrayColumn[]): string
  // Rows whose two-column primary key is ($1, each element of the array $2), one lookup per
  // element through a lateral join. Undefined: an IN list. On PostgreSQL an IN list on the key's
  // second column was planned, while the table had no statistics yet (a fresh or fast-growing
  // table), as a scan of every row with the first column's value: 4-10 ms a 64-key batch at
  // 30k idempotency keys, growing with the table. Each lateral lookup is an equality on the whole
  // key, which the planner knows finds one row at most (OFFSET 0 keeps it from flattening the
  // join into a hash join over that same scan).
  rowsByKeyArraySql?(table: string, fixedColumn: string, arrayColumn: ArrayColumn): string
  // The rows `inner` finds for each element of the array parameter $n (`u.v` in `inner`), one
  // lateral subquery per element, for the same reason: the per-buyer count's IN lists were
  // planned as a scan of every active hold of the product (3.4 ms for 128 buyers among 20,000
  // holds; 0.1 ms as 128 index lookups). Undefined: an IN list.
  perElementSql?(arrayParameter: number, arrayType: ArrayColumn['type'], inner: string): string
  // The most parameters one statement may carry. A batch whose largest statement needs more
  // fails at run time, so start-up refuses batch sizes that cannot fit (statement-limits.ts).
  readonly statementParametersMax: number
  // Several writes sent as one statement, a round trip less each (store/write-behind.ts).
  // Undefined where a statement costs no round trip (SQLite runs in the process).
  readonly writeMerging?: WriteMerging
  readonly beginSql: string
  // SQL type of an auto-increment primary key, and whether it needs the AUTOINCREMENT keyword
  // (PostgreSQL's serial types do not; SQLite needs exactly "integer" to alias the rowid).
  autoIncrementColumn(wide: boolean): { type: 'integer' | 'bigint' | 'serial' | 'bigserial'; keyword: boolean }
  // Appended to CREATE TABLE (MySQL: InnoDB, utf8mb4, and a binary collation so ids that
  // differ only in case are different ids).
  readonly tableOptionsSql: string | null
  // The collations, best first, that compare text byte for byte including trailing spaces, for
  // engines whose default binary collation pads (MySQL, MariaDB: "bob" = "bob "); null where
  // text already compares exactly. The first the server has is used (migration 0008).
  readonly exactTextCollations: readonly string[] | null
  // CREATE INDEX ... WHERE (PostgreSQL, SQLite): an index of the rows that have a value only.
  // MySQL and MariaDB have none, and index NULLs too.
  readonly partialIndexes: boolean
  // MySQL's DROP INDEX names the table (DROP INDEX i ON t); SQLite's and PostgreSQL's refuse it.
  readonly dropIndexNamesTable: boolean
  // Also appended to CREATE TABLE for a small table read by ranges of its primary key: SQLite's
  // WITHOUT ROWID stores the rows in key order, so a range is read without a look-up per row
  // (InnoDB always clusters by the primary key).
  readonly clusteredByKeySql: string | null
  // Deadlock, serialization failure, lock wait timeout, busy database: retried.
  isTransientConflict(error: unknown): boolean
  isUniqueViolation(error: unknown): boolean
  // A lost or refused connection: the request fails with 503 and is safe to retry.
  isUnavailable(error: unknown): boolean
  // onConnectionError hears errors of pooled connections that no query is waiting on (a server
  // restart terminates idle connections): unheard, they would be an unhandled 'error' event that
  // ends the process (SPEC I7).
  // lockWaitMs: how long SQLite waits for another process's write lock (other engines wait on
  // row locks server-side, bounded by their own lock timeouts).
  createDialect(databaseUrl: string, options: { poolSizeMax: number; lockWaitMs: number; onConnectionError: (error: Error) => void }): Dialect
  // The schema the service's tables live in, when the URL names one: the migrator must look
  // for its own tables there, not in whichever schema first has tables of that name.
  schemaOf(databaseUrl: string): string | undefined
}

export function errorCode(error: unknown): string | number | undefined {
  if (typeof error !== 'object' || error === null) return undefined
  const record = error as { code?: unknown; errno?: unknown }
  if (typeof record.code === 'string' || typeof record.code === 'number') return record.code
  return undefined
}

export function errorNumber(error: unknown): number | undefined {
  if (typeof error !== 'object' || error === null) return undefined
  const errno = (error as { errno?: unknown }).errno
  return typeof errno === 'number' ? errno : undefined
}

const connectionErrorCodes = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'PROTOCOL_CONNECTION_LOST', '57P01', '57P03', '08006', '08003', '08001'])

export function isConnectionError(error: unknown): boolean {
  const code = errorCode(error)
  if (typeof code === 'string' && connectionErrorCodes.has(code)) return true
  const message = error instanceof Error ? error.message : ''
  // pg-pool's connect timeout (a restarting server slow to accept connections) and a client
  // whose socket already broke are the database being away too: 503, not 500.
  return /Connection terminated|connection is closed|Pool is closed|Cannot enqueue|driver has already been destroyed|database connection is not open|timeout exceeded when trying to connect|not queryable/i.test(
    message,
  )
}
