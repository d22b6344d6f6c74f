// The migrator looks up its own tables by name in one schema (MigrationCatalogue), never with
// Kysely's introspection of every table's columns: a shared MariaDB crashed during that query in
// a CI run while other test databases were being created and dropped. A second start finds the
// tables and creates nothing; tables of another schema (PostgreSQL) are not listed.
import pino from 'pino'
import { describe, expect, it } from 'vitest'
import type { Kysely } from 'kysely'
import { createObserver } from '../src/observability/observer.js'
import { Metrics } from '../src/observability/metrics.js'
import { KyselyStore } from '../src/store/kysely-store.js'
import { MigrationCatalogue } from '../src/store/migration-catalogue.js'
import { testDatabase, testEngines } from './helpers/engines.js'

// What Kysely's own introspectors send: every table's columns (MySQL/MariaDB: columns joined to
// tables; PostgreSQL: pg_attribute; SQLite: pragma_table_info). Migration 0010's look-up of one
// named column (`select 1 as present …`) is not that.
const isWideIntrospection = (text: string): boolean => /information_schema`?\.`?columns|pg_attribute|pragma_table_info/i.test(text) && !/^select 1 as present /i.test(text)

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: the migrator's catalogue`, () => {
    it('looks up its tables by name only, and a second start finds them and creates nothing', async () => {
      const database = await testDatabase(engine.name)
      // Another schema or database with a table of the migrator's name must not count.
      const other = await testDatabase(engine.name)
      const statements: string[] = []
      const open = (url: string, onQuery?: (sqlText: string) => void) =>
        new KyselyStore({ databaseUrl: url, engine: engine.name, observer: createObserver(pino({ level: 'silent' }), new Metrics()), txAttemptsMax: 3, onQuery })
      const otherStore = open(other.url)
      const store = open(database.url, (sqlText) => statements.push(sqlText))
      try {
        await otherStore.migrate()
        await store.migrate()
        expect(statements.filter(isWideIntrospection)).toEqual([])
        expect(statements.some((text) => /create table/i.test(text))).toBe(true)
        const schema = engine.name === 'postgres' ? (new URL(database.url).searchParams.get('schema') ?? undefined) : undefined
        const db = (store as unknown as { db: Kysely<unknown> }).db
        const names = (await new MigrationCatalogue(db, engine.name, schema).getTables()).map((table) => table.name)
        expect(names).toEqual(expect.arrayContaining(['kysely_migration', 'kysely_migration_lock', 'holds', 'products']))
        if (schema) expect((await new MigrationCatalogue(db, engine.name, schema).getTables()).every((table) => table.schema === schema)).toBe(true)
        statements.length = 0
        await store.migrate()
        expect(statements.filter((text) => /create table|create index|alter table/i.test(text))).toEqual([])
        expect(statements.filter(isWideIntrospection)).toEqual([])
      } finally {
        await store.close()
        await otherStore.close()
      }
    })
  })
}
