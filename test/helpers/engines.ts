// The engines every contract test runs on: SQLite always, PostgreSQL and MySQL when their
// TEST_*_URL is set (CI sets both). Each test gets a fresh database of its own.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { onTestFinished } from 'vitest'
import type { EngineName } from '../../src/config.js'
import { withMysql, withPostgres } from '../../dev/admin-connection.js'

export interface TestEngine {
  name: EngineName
  // Skipped when the server's URL is not set.
  available: boolean
}

const urlVariable: Record<EngineName, string | undefined> = {
  sqlite: undefined,
  postgres: 'TEST_POSTGRES_URL',
  mysql: 'TEST_MYSQL_URL',
}

export function testEngines(): TestEngine[] {
  const only = process.env.TEST_ENGINES?.split(',').map((name) => name.trim())
  return (['sqlite', 'postgres', 'mysql'] as const)
    .filter((name) => !only || only.includes(name))
    .map((name) => {
      const variable = urlVariable[name]
      return { name, available: variable === undefined || Boolean(process.env[variable]) }
    })
}

export interface FreshDatabase {
  url: string
  drop(): Promise<void>
}

// A fresh database dropped when the current test finishes, whatever it did.
export async function testDatabase(engine: EngineName): Promise<FreshDatabase> {
  const fresh = await freshDatabase(engine)
  onTestFinished(() => fresh.drop())
  return fresh
}

export async function freshDatabase(engine: EngineName): Promise<FreshDatabase> {
  const suffix = randomBytes(6).toString('hex')
  if (engine === 'sqlite') {
    const dir = mkdtempSync(join(tmpdir(), 'flash-sale-test-'))
    return { url: `sqlite:${join(dir, 'test.db')}`, drop: async () => rmSync(dir, { recursive: true, force: true }) }
  }
  if (engine === 'postgres') {
    const adminUrl = process.env.TEST_POSTGRES_URL!
    const schema = `t_${suffix}`
    await withPostgres(adminUrl, (client) => client.query(`create schema ${schema}`))
    const url = new URL(adminUrl)
    url.searchParams.set('schema', schema)
    return { url: url.toString(), drop: () => withPostgres(adminUrl, (client) => client.query(`drop schema if exists ${schema} cascade`)).then(() => undefined) }
  }
  const adminUrl = process.env.TEST_MYSQL_URL!
  const database = `t_${suffix}`
  await withMysql(adminUrl, (connection) => connection.query(`create database ${database} character set utf8mb4 collate utf8mb4_bin`))
  const url = new URL(adminUrl)
  url.pathname = `/${database}`
  return { url: url.toString(), drop: () => withMysql(adminUrl, (connection) => connection.query(`drop database if exists ${database}`)).then(() => undefined) }
}

// Runs raw SQL on a test database (to corrupt a row for the audit test, or read rows directly).
export async function rawQuery(engine: EngineName, url: string, text: string): Promise<unknown[]> {
  if (engine === 'postgres') {
    const parsed = new URL(url)
    const schema = parsed.searchParams.get('schema')
    parsed.searchParams.delete('schema')
    return withPostgres(parsed.toString(), async (client) => {
      if (schema) await client.query(`set search_path to ${schema}`)
      return (await client.query(text)).rows
    })
  }
  if (engine === 'mysql') return withMysql(url, async (connection) => (await connection.query(text))[0] as unknown[])
  const { default: Database } = await import('better-sqlite3')
  const database = new Database(url.replace(/^sqlite:/, ''))
  try {
    const statement = database.prepare(text)
    return statement.reader ? statement.all() : [statement.run()]
  } finally {
    database.close()
  }
}
