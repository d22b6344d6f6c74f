// A scratch database per simulation run (a file, a schema or a database), dropped afterwards.
// Not the test helpers' version: the runner script runs outside Vitest.
import { randomBytes } from 'node:crypto'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { EngineName } from '../../src/config.js'
import { withMysql, withPostgres } from '../../dev/admin-connection.js'

export interface ScratchDatabase {
  url: string
  drop(): Promise<void>
}

export const serverUrlVariable = { postgres: 'TEST_POSTGRES_URL', mysql: 'TEST_MYSQL_URL' } as const

export async function scratchDatabase(engine: EngineName): Promise<ScratchDatabase> {
  const name = `sim_${randomBytes(6).toString('hex')}`
  if (engine === 'sqlite') {
    const dir = mkdtempSync(join(tmpdir(), 'flash-sale-sim-'))
    return { url: `sqlite:${join(dir, 'sim.db')}`, drop: async () => rmSync(dir, { recursive: true, force: true }) }
  }
  const adminUrl = process.env[serverUrlVariable[engine]]
  if (!adminUrl) throw new Error(`${serverUrlVariable[engine]} is not set: no ${engine} server to simulate on`)
  if (engine === 'postgres') {
    await withPostgres(adminUrl, (client) => client.query(`create schema ${name}`))
    const url = new URL(adminUrl)
    url.searchParams.set('schema', name)
    return { url: url.toString(), drop: () => withPostgres(adminUrl, (client) => client.query(`drop schema if exists ${name} cascade`)).then(() => undefined) }
  }
  await withMysql(adminUrl, (connection) => connection.query(`create database ${name} character set utf8mb4 collate utf8mb4_bin`))
  const url = new URL(adminUrl)
  url.pathname = `/${name}`
  return { url: url.toString(), drop: () => withMysql(adminUrl, (connection) => connection.query(`drop database if exists ${name}`)).then(() => undefined) }
}
