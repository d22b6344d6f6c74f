import { CompiledQuery, MysqlDialect } from 'kysely'
import { createPool } from 'mysql2'
import { assert } from '../../domain/assert.js'
import { errorNumber, isConnectionError, type Engine } from './engine.js'

export const mysqlEngine: Engine = {
  name: 'mysql',
  supportsReturning: false, // MySQL 8 has no RETURNING: insert, then read insertId.
  supportsForUpdate: true,
  insertIgnoreStyle: 'catch_duplicate',
  upsertStyle: 'on_duplicate_key',
  // The server's limit for a prepared statement (ER_PS_MANY_PARAM). Kysely's driver sends text
  // queries (mysql2 inlines the values), which only max_allowed_packet bounds; the prepared
  // limit keeps every accepted batch size valid should the driver move to prepared statements.
  statementParametersMax: 65_535,
  // Statements separated by semicolons in one text (the pool allows multiple statements): the
  // server runs them in order and stops at the first that fails, so a commit that rides along
  // runs only if every write before it succeeded. A write whose row count is checked is followed
  // by a guard that fails (1242, a scalar subquery of two rows) when ROW_COUNT() differs; the
  // pool's FOUND_ROWS flag (mysql2's default) makes it count the rows matched, as affectedRows does.
  writeMerging: {
    commitJoins: true,
    mergedSql: (writes, commit) => {
      const statements: string[] = []
      for (const write of writes) {
        statements.push(write.sql)
        if (write.expectedRows !== undefined) {
          assert(Number.isSafeInteger(write.expectedRows) && write.expectedRows >= 0, 'a row count is a whole number')
          statements.push(`select (select 1 union all select 1 from dual where row_count() <> ${write.expectedRows}) as rows_guard`)
        }
      }
      if (commit) statements.push('commit')
      return statements.join(';\n')
    },
    rowsChanged: (result, writes) => {
      const results = result.rows as Array<{ affectedRows?: number }>
      let next = 0
      return writes.map((write) => {
        const header = results[next++]
        // Skips the guard's result set.
        if (write.expectedRows !== undefined) next++
        return Number(header?.affectedRows ?? 0)
      })
    },
    isGuardFailure: (error) => errorNumber(error) === 1242,
  },
  beginSql: 'start transaction',
  autoIncrementColumn: (wide) => ({ type: wide ? 'bigint' : 'integer', keyword: true }),
  // utf8mb4_bin pads: it ignores trailing spaces. Ids the service mints and idempotency keys
  // (visible ASCII) cannot end in one; a column of free text that is compared (buyer_id) must
  // take an exact collation (exactTextCollations, as migration 0008 does).
  tableOptionsSql: 'engine=InnoDB default charset=utf8mb4 collate=utf8mb4_bin',
  // MariaDB 10.2+, MySQL 8.0.17+.
  exactTextCollations: ['utf8mb4_nopad_bin', 'utf8mb4_0900_bin'],
  partialIndexes: false,
  dropIndexNamesTable: true,
  clusteredByKeySql: null,
  // 1213 deadlock, 1205 lock wait timeout, 1020 record changed (MariaDB snapshot conflict).
  isTransientConflict: (error) => {
    const errno = errorNumber(error)
    return errno === 1213 || errno === 1205 || errno === 1020
  },
  isUniqueViolation: (error) => errorNumber(error) === 1062,
  // mysql2 marks errors that end the connection `fatal`; some carry no code, such as "Can't add
  // new command when connection is in closed state" (a statement on a connection the pool closed).
  isUnavailable: (error) => isConnectionError(error) || (typeof error === 'object' && error !== null && (error as { fatal?: unknown }).fatal === true),
  schemaOf: () => undefined,
  createDialect(databaseUrl, { poolSizeMax, onConnectionError }) {
    const url = new URL(databaseUrl.replace(/^mariadb:/, 'mysql:'))
    const pool = createPool({
      uri: url.toString(),
      connectionLimit: poolSizeMax,
      decimalNumbers: true,
      supportBigNumbers: true,
      bigNumberStrings: false,
      charset: 'utf8mb4_bin',
      timezone: 'Z',
      // For merged writes (writeMerging above). mysql2 escapes every value into the text itself,
      // and every statement of the store passes its values as parameters, never as text.
      multipleStatements: true,
    })
    // mysql2 drops a broken pooled connection itself; a listener still keeps any 'error' the
    // pool re-emits from ending the process (SPEC I7).
    pool.on('error', onConnectionError)
    return new MysqlDialect({
      pool,
      // REPEATABLE READ's gap locks and old snapshots buy nothing here (every transaction locks
      // the product row first), and READ COMMITTED lets reads after that lock see the latest rows.
      onCreateConnection: async (connection) => {
        await connection.executeQuery(CompiledQuery.raw('set session transaction isolation level read committed'))
      },
    })
  },
}
