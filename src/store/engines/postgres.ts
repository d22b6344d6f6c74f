import { PostgresDialect, type PostgresPool } from 'kysely'
import pg from 'pg'
import { assert } from '../../domain/assert.js'
import { GenerationCache } from '../../domain/generation-cache.js'
import { errorCode, isConnectionError, type Engine, type MergedWrite, type WriteMerging } from './engine.js'

const int8Oid = 20
const numericOid = 1700

// BIGINT (our millisecond instants and money) and NUMERIC (SUM results) come back as strings by
// default; every value here is far below 2^53, so numbers are exact.
const types = {
  getTypeParser(oid: number, format?: 'text' | 'binary') {
    if (oid === int8Oid || oid === numericOid) return (value: string) => Number(value)
    return pg.types.getTypeParser(oid, format)
  },
}

// The merged texts of write-behind kept per process (postgresWriteMerging below).
export const mergedTextCacheBytesMax = 4 * 1024 * 1024

export const postgresEngine: Engine = {
  name: 'postgres',
  supportsReturning: true,
  supportsForUpdate: true,
  insertIgnoreStyle: 'on_conflict',
  upsertStyle: 'on_conflict',
  // The wire protocol's Bind message counts parameters in 16 bits.
  statementParametersMax: 65_535,
  columnArraysInsertSql: (table, columns) =>
    `insert into ${table} (${columns.map((column) => column.name).join(', ')}) ` +
    `select * from unnest(${columns.map((column, index) => `$${index + 1}::${column.type}[]`).join(', ')})`,
  rowsByKeyArraySql: (table, fixedColumn, arrayColumn) =>
    `select t.* from unnest($2::${arrayColumn.type}[]) as u(v) cross join lateral ` + `(select * from ${table} where ${fixedColumn} = $1 and ${arrayColumn.name} = u.v offset 0) as t`,
  perElementSql: (arrayParameter, arrayType, inner) => `select t.* from unnest($${arrayParameter}::${arrayType}[]) as u(v) cross join lateral (${inner} offset 0) as t`,
  writeMerging: postgresWriteMerging(),
  // READ COMMITTED with row locks: every transaction locks the product row first, so the
  // rows it reads afterwards are the latest committed ones.
  beginSql: 'begin',
  autoIncrementColumn: (wide) => ({ type: wide ? 'bigserial' : 'serial', keyword: false }),
  tableOptionsSql: null,
  exactTextCollations: null,
  partialIndexes: true,
  dropIndexNamesTable: false,
  clusteredByKeySql: null,
  isTransientConflict: (error) => {
    const code = errorCode(error)
    return code === '40P01' || code === '40001' || code === '55P03'
  },
  isUniqueViolation: (error) => errorCode(error) === '23505',
  isUnavailable: isConnectionError,
  schemaOf: (databaseUrl) => new URL(databaseUrl).searchParams.get('schema') ?? undefined,
  createDialect(databaseUrl, { poolSizeMax, onConnectionError }) {
    // `?schema=name` selects a schema (the tests give each test its own).
    const url = new URL(databaseUrl)
    const schema = url.searchParams.get('schema')
    url.searchParams.delete('schema')
    const pool = new pg.Pool({
      connectionString: url.toString(),
      max: poolSizeMax,
      types,
      connectionTimeoutMillis: 5000,
      ...(schema ? { options: `-c search_path=${schema}` } : {}),
    })
    // A restart sends 57P01 to every connection; pg-pool drops the broken client and re-emits
    // the error on the pool, where an unheard 'error' event would end the process.
    pool.on('error', onConnectionError)
    // pg-pool listens only while a client is idle: a socket error on a client checked out for a
    // transaction (ECONNRESET between two statements) is emitted on the client with no listener,
    // and ends the process. Heard here; its query fails, and the pool drops it on release.
    pool.on('connect', (client) => client.on('error', onConnectionError))
    return new PostgresDialect({ pool: closingPool(pool) })
  },
}

// pg-pool never settles the requests still queued for a connection when it ends (its connect
// timeout timer is unref'd): in a server they fail only after connectionTimeoutMillis, and in a
// process with nothing else to do they never do (Node exits 13 with the await unsettled). This
// wrapper fails them at once with "Pool is closed" (503 busy, isConnectionError) and hands back
// a client that arrives for a request it has already failed.
function closingPool(pool: pg.Pool): PostgresPool {
  const waiting = new Set<(error: Error) => void>()
  return {
    connect: () =>
      new Promise<pg.PoolClient>((resolve, reject) => {
        const fail = (error: Error): void => {
          if (waiting.delete(fail)) reject(error)
        }
        waiting.add(fail)
        pool.connect().then(
          (client) => {
            if (waiting.delete(fail)) resolve(client)
            else client.release()
          },
          (error: Error) => fail(error),
        )
      }),
    end: async () => {
      for (const fail of [...waiting]) fail(new Error('Pool is closed'))
      await pool.end()
    },
  }
}

// Writes merged into one statement of data-modifying CTEs: `with w0 as (insert ...), w1 as
// (update ... returning 1) select (select count(*) from w1) as n1`. Every CTE runs once, in the
// statement's snapshot, whether or not the final select reads it; the writes merged here touch
// different rows (new rows, the product's counts, its expiry buckets), so none depends on seeing
// another. Each write's placeholders are renumbered past the ones before it; the merged texts
// are kept (mergedTextCacheBytesMax), one per sequence of write texts seen (the same few every
// batch), so that is done once per sequence.
function postgresWriteMerging(): WriteMerging {
  // Keys and texts are about the same length: both are weighed.
  const texts = new GenerationCache<string, string>(mergedTextCacheBytesMax, (text) => 2 * text.length)
  return {
    commitJoins: false,
    mergedSql(writes, commit) {
      assert(!commit, 'PostgreSQL commits apart (one statement per extended-protocol query)')
      let key = ''
      for (const write of writes) key += `\u0000${write.expectedRows ?? ''}\u0000${write.sql}`
      let text = texts.get(key)
      if (text === undefined) {
        text = mergedCtes(writes)
        texts.set(key, text)
      }
      return text
    },
    rowsChanged(result, writes) {
      const row = (result.rows[0] ?? {}) as Record<string, unknown>
      return writes.map((write, index) => (write.expectedRows === undefined ? -1 : Number(row[`n${index}`])))
    },
  }
}

function mergedCtes(writes: readonly MergedWrite[]): string {
  let offset = 0
  const parts: string[] = []
  const counted: string[] = []
  for (const [index, write] of writes.entries()) {
    parts.push(`w${index} as (${renumbered(write, offset)}${write.expectedRows === undefined ? '' : ' returning 1'})`)
    if (write.expectedRows !== undefined) counted.push(`(select count(*) from w${index}) as n${index}`)
    offset += write.parameters.length
  }
  return `with ${parts.join(', ')} select ${counted.length > 0 ? counted.join(', ') : '1 as n'}`
}

// The write's text with $1..$k as $(offset+1)..$(offset+k). Texts here are compiled statements
// whose only `$` are placeholders (no string literals), and use each of their k parameters.
function renumbered(write: MergedWrite, offset: number): string {
  assert(!write.sql.includes("'"), 'a merged write has no string literal')
  let highest = 0
  const text = write.sql.replace(/\$(\d+)/g, (_, digits: string) => {
    const number = Number(digits)
    highest = Math.max(highest, number)
    return `$${number + offset}`
  })
  assert(highest === write.parameters.length, 'a merged write uses each of its parameters')
  return text
}
