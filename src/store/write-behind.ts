// Write-behind inside a transaction: the writes a transaction makes last (a batch's holds, its
// idempotency keys, the product's counts, the expiry buckets) wait on the connection and go to
// the server together, in one statement, right before the next statement of the transaction or
// its commit. On PostgreSQL and MySQL every statement is a round trip, and the product row lock
// is held from the first statement to the commit: each round trip inside it cost about 1 ms of
// the lock at 256 connections (the worker's event loop answers it between HTTP requests), so a
// keyed batch's extra insert cost keyed holds a fifth of their rate. Merged, a batch holds the
// lock for its reads, one write statement and the commit, keyed or not.
//
// Order is kept: any other statement on the connection first sends what waits, so a read always
// sees the writes before it, and a failing write fails the statement that sent it (the commit at
// the latest), which the transaction runner rolls back. A rollback drops what waits.
import { CompiledQuery, type DatabaseConnection, type Kysely, type Dialect, type Driver, type QueryResult, type TransactionSettings } from 'kysely'
import { assert } from '../domain/assert.js'
import type { Engine, MergedWrite, WriteMerging } from './engines/engine.js'
import type { Database } from './schema.js'

export interface DeferredWrite extends MergedWrite {
  // What the statement writes, for the error when `expectedRows` is not met.
  what: string
  // The table it writes, and whether it only inserts new rows. Two writes of one table share a
  // statement only if both only insert: PostgreSQL runs the parts of a statement on one
  // snapshot, so an update merged with another write of its table would not see it (two
  // updates of one row: only one would count).
  table: string
  insertsOnly: boolean
  // How many rows the statement must change (checked when it has run), if it matters.
  expectedRows?: number
  // Turns the error of the statement that carried this write into the caller's (a stored key's
  // unique violation into StoredKeyConflict). Merged writes fail together, so each mapper sees
  // the error of the whole merged statement.
  mapError?: (error: unknown) => unknown
}

// Writes of one transaction merged at most: past it, they are sent before the next is taken.
// A batch makes four (holds, keys, counts, buckets) and more only for many expiry buckets.
export const deferredWritesMax = 16

const deferredWrites = new WeakMap<CompiledQuery, DeferredWrite>()
const transactionEnds = new WeakMap<CompiledQuery, 'commit' | 'rollback'>()

// A write that may wait on the connection: run it with executeQuery, which answers at once with
// no rows. Only inside a transaction (kysely-tx.ts), whose commit or next statement sends it.
function deferredWrite(write: DeferredWrite): CompiledQuery {
  const query = CompiledQuery.raw(write.sql, [...write.parameters])
  deferredWrites.set(query, write)
  return query
}

// Runs a write at once, or with `defer` leaves it waiting on the transaction's write-behind
// connection; either way its row count is checked and its error mapped alike.
export async function runWrite(db: Kysely<Database>, write: DeferredWrite, defer: boolean): Promise<void> {
  if (defer) {
    await db.executeQuery(deferredWrite(write))
    return
  }
  let changed: number
  try {
    const result = await db.executeQuery(CompiledQuery.raw(write.sql, [...write.parameters]))
    changed = Number(result.numAffectedRows ?? 0)
  } catch (error) {
    throw write.mapError ? write.mapError(error) : error
  }
  checkRowsChanged(write, changed)
}

function checkRowsChanged(write: DeferredWrite, changed: number | undefined): void {
  if (write.expectedRows === undefined || changed === write.expectedRows) return
  throw new Error(`${write.what}: ${rowsText(write.expectedRows)} expected to change, ${changed} did`)
}

function rowsText(count: number): string {
  return `${count} row${count === 1 ? '' : 's'}`
}

// The transaction runner ends every transaction with one of these: a commit sends what waits
// first (in the same statement where the engine can), a rollback drops it.
export const commitQuery = endQuery('commit')
export const rollbackQuery = endQuery('rollback')

function endQuery(end: 'commit' | 'rollback'): CompiledQuery {
  const query = CompiledQuery.raw(end, [])
  transactionEnds.set(query, end)
  return query
}

// The dialect with every connection made write-behind, for engines that can merge writes.
export function writeBehindDialect(dialect: Dialect, engine: Engine): Dialect {
  const merging = engine.writeMerging
  if (!merging) return dialect
  return {
    createAdapter: () => dialect.createAdapter(),
    createQueryCompiler: () => dialect.createQueryCompiler(),
    createIntrospector: (db) => dialect.createIntrospector(db),
    createDriver: () => new WriteBehindDriver(dialect.createDriver(), merging, engine.statementParametersMax),
  }
}

class WriteBehindDriver implements Driver {
  constructor(
    private readonly inner: Driver,
    private readonly merging: WriteMerging,
    private readonly parametersMax: number,
  ) {}

  init(): Promise<void> {
    return this.inner.init()
  }

  async acquireConnection(): Promise<DatabaseConnection> {
    return new WriteBehindConnection(await this.inner.acquireConnection(), this.merging, this.parametersMax)
  }

  beginTransaction(connection: DatabaseConnection, settings: TransactionSettings): Promise<void> {
    return this.inner.beginTransaction(innerOf(connection), settings)
  }

  // Kysely's own transactions (db.transaction(), the migrator) end here, not through
  // commitQuery: none queues writes, and a commit must never leave one behind unsent.
  commitTransaction(connection: DatabaseConnection): Promise<void> {
    assert(!(connection instanceof WriteBehindConnection) || !connection.hasWaiting(), 'a transaction with writes waiting ends with commitQuery')
    return this.inner.commitTransaction(innerOf(connection))
  }

  rollbackTransaction(connection: DatabaseConnection): Promise<void> {
    if (connection instanceof WriteBehindConnection) connection.dropWaiting()
    return this.inner.rollbackTransaction(innerOf(connection))
  }

  async releaseConnection(connection: DatabaseConnection): Promise<void> {
    // Writes still waiting belong to a transaction that neither committed nor rolled back (its
    // runner failed in between): the server rolls it back with the connection, so they go too.
    if (connection instanceof WriteBehindConnection) connection.dropWaiting()
    await this.inner.releaseConnection(innerOf(connection))
  }

  destroy(): Promise<void> {
    return this.inner.destroy()
  }
}

function innerOf(connection: DatabaseConnection): DatabaseConnection {
  return connection instanceof WriteBehindConnection ? connection.inner : connection
}

const noRows: QueryResult<never> = { rows: [] }

class WriteBehindConnection implements DatabaseConnection {
  private waiting: DeferredWrite[] = []

  constructor(
    readonly inner: DatabaseConnection,
    private readonly merging: WriteMerging,
    private readonly parametersMax: number,
  ) {}

  hasWaiting(): boolean {
    return this.waiting.length > 0
  }

  dropWaiting(): void {
    this.waiting = []
  }

  async executeQuery<R>(query: CompiledQuery): Promise<QueryResult<R>> {
    const write = deferredWrites.get(query)
    if (write !== undefined) {
      if (this.waiting.length >= deferredWritesMax || this.parametersOf(this.waiting) + write.parameters.length > this.parametersMax || this.touchesWaiting(write))
        await this.send(false)
      this.waiting.push(write)
      return noRows
    }
    const end = transactionEnds.get(query)
    if (end === 'rollback') this.dropWaiting()
    else if (this.waiting.length > 0) {
      const committed = await this.send(end === 'commit' && this.merging.commitJoins)
      if (committed) return noRows
    }
    return this.inner.executeQuery<R>(query)
  }

  streamQuery<R>(query: CompiledQuery, chunkSize?: number): AsyncIterableIterator<QueryResult<R>> {
    assert(this.waiting.length === 0, 'no stream reads inside a transaction with writes waiting')
    return this.inner.streamQuery<R>(query, chunkSize)
  }

  private touchesWaiting(write: DeferredWrite): boolean {
    for (const waiting of this.waiting) if (waiting.table === write.table && !(waiting.insertsOnly && write.insertsOnly)) return true
    return false
  }

  private parametersOf(writes: readonly DeferredWrite[]): number {
    let count = 0
    for (const write of writes) count += write.parameters.length
    return count
  }

  // Sends what waits, as one statement when there are several; with `commit`, the commit rides
  // along (and the answer is true). Throws the first mapped error.
  private async send(commit: boolean): Promise<boolean> {
    const writes = this.waiting
    this.waiting = []
    if (writes.length === 0) return false
    let affected: number[]
    try {
      if (writes.length === 1 && !commit) {
        const result = await this.inner.executeQuery(CompiledQuery.raw(writes[0]!.sql, [...writes[0]!.parameters]))
        affected = [Number(result.numAffectedRows ?? 0)]
      } else {
        const text = this.merging.mergedSql(writes, commit)
        const parameters: unknown[] = []
        for (const write of writes) for (const parameter of write.parameters) parameters.push(parameter)
        const result = await this.inner.executeQuery(CompiledQuery.raw(text, parameters))
        affected = this.merging.rowsChanged(result, writes)
      }
    } catch (error) {
      const guarded = writes.filter((write) => write.expectedRows !== undefined)
      if (guarded.length > 0 && this.merging.isGuardFailure?.(error)) {
        const expected = guarded.map((write) => `${write.what}: ${rowsText(write.expectedRows!)} expected to change`).join('; ')
        throw new Error(`${expected}; another number did (refused before the commit)`, { cause: error })
      }
      for (const write of writes) {
        const mapped = write.mapError ? write.mapError(error) : error
        if (mapped !== error) throw mapped
      }
      throw error
    }
    for (const [index, write] of writes.entries()) checkRowsChanged(write, affected[index])
    return commit
  }
}
