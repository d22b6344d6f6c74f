// A fresh database for one bench run on the engine DATABASE_URL names, dropped afterwards: a
// temporary SQLite file (never ./data), a new PostgreSQL schema (`?schema=`), or a new MySQL /
// MariaDB database. The bench never writes into the database the URL points at itself.
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import BetterSqlite3 from 'better-sqlite3'
import type { EngineName } from '../src/config.js'
import { withMysql, withPostgres } from '../dev/admin-connection.js'

export interface BenchDatabase {
  engine: EngineName
  // What the server is started with.
  url: string
  // The same URL with any password masked, for printing.
  displayUrl: string
  // "PostgreSQL 16.4", "MariaDB 10.11.6", "SQLite 3.46.1".
  version: string
  drop(): Promise<void>
}

export function engineOfUrl(databaseUrl: string): EngineName {
  if (databaseUrl.startsWith('sqlite:')) return 'sqlite'
  if (/^postgres(ql)?:\/\//.test(databaseUrl)) return 'postgres'
  if (/^(mysql|mariadb):\/\//.test(databaseUrl)) return 'mysql'
  throw new Error(`DATABASE_URL must start with sqlite:, postgres:// or mysql://, got "${databaseUrl}"`)
}

function masked(url: URL): string {
  const copy = new URL(url.toString())
  if (copy.password) copy.password = '***'
  return copy.toString()
}

// `databaseUrl` undefined (or a sqlite: URL, whose file the bench must not touch) gives a
// temporary SQLite file removed at the end.
export async function freshBenchDatabase(databaseUrl: string | undefined): Promise<BenchDatabase> {
  const suffix = randomBytes(5).toString('hex')
  const engine = databaseUrl === undefined ? 'sqlite' : engineOfUrl(databaseUrl)
  if (engine === 'sqlite') {
    const dir = mkdtempSync(join(tmpdir(), 'flash-sale-bench-'))
    const path = join(dir, 'bench.db')
    const probe = new BetterSqlite3(':memory:')
    const row = probe.prepare('select sqlite_version() as v').get() as { v: string }
    probe.close()
    return {
      engine,
      url: `sqlite:${path}`,
      displayUrl: `sqlite:${path}`,
      version: `SQLite ${row.v} (WAL, synchronous=FULL)`,
      drop: async () => rmSync(dir, { recursive: true, force: true }),
    }
  }
  if (engine === 'postgres') {
    const adminUrl = new URL(databaseUrl!)
    adminUrl.searchParams.delete('schema')
    const schema = `bench_${suffix}`
    const version = await withPostgres(adminUrl.toString(), async (client) => {
      await client.query(`create schema ${schema}`)
      const result = await client.query<{ server_version: string }>('show server_version')
      return `PostgreSQL ${result.rows[0]?.server_version ?? '?'}`
    })
    const url = new URL(adminUrl.toString())
    url.searchParams.set('schema', schema)
    return {
      engine,
      url: url.toString(),
      displayUrl: masked(url),
      version,
      drop: () => withPostgres(adminUrl.toString(), (client) => client.query(`drop schema if exists ${schema} cascade`)).then(() => undefined),
    }
  }
  const adminUrl = new URL(databaseUrl!.replace(/^mariadb:/, 'mysql:'))
  const database = `bench_${suffix}`
  const version = await withMysql(adminUrl.toString(), async (connection) => {
    await connection.query(`create database ${database} character set utf8mb4 collate utf8mb4_bin`)
    const [rows] = await connection.query('select version() as v')
    const raw = String((rows as Array<{ v: string }>)[0]?.v ?? '?')
    return /mariadb/i.test(raw) ? `MariaDB ${raw.replace(/-MariaDB.*$/i, '')}` : `MySQL ${raw}`
  })
  const url = new URL(adminUrl.toString())
  url.pathname = `/${database}`
  return {
    engine,
    url: url.toString(),
    displayUrl: masked(url),
    version,
    drop: () => withMysql(adminUrl.toString(), (connection) => connection.query(`drop database if exists ${database}`)).then(() => undefined),
  }
}
