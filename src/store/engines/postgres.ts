import { PostgresDialect, type PostgresPool } from 'kysely'
import pg from 'pg'
import { errorCode, isConnectionError, type Engine } from './engine.js'

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
  // READ COMMITTED with row locks: every transaction locks the product row first, so the
  // rows it reads afterwards are the latest committed ones.
  beginSql: 'begin',
  autoIncrementColumn: (wide) => ({ type: wide ? 'bigserial' : 'serial', keyword: false }),
  tableOptionsSql: null,
  exactTextCollations: null,
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
