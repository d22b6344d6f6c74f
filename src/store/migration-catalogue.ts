// What the migrator looks up before it runs: whether its own two tables exist (and on PostgreSQL
// its schema). Kysely's introspectors answer that by reading every table's columns, on MySQL and
// MariaDB with one query joining information_schema.columns and .tables. The shared MariaDB
// 10.11.19 of a CI run crashed (signal 11, in the cleanup of a failed temporary table built for
// that very query) while other test databases were being created and dropped, taking every
// MariaDB test after it down. This catalogue reads only table names, from one schema: narrower
// catalogue reads, and on PostgreSQL none across the other schemas, whose drop at the same
// moment used to fail the look-up (KyselyStore.migrate still retries it).
import { sql, type DatabaseIntrospector, type DatabaseMetadata, type Kysely, type SchemaMetadata, type TableMetadata } from 'kysely'
import type { EngineName } from '../config.js'

export class MigrationCatalogue implements DatabaseIntrospector {
  constructor(
    private readonly db: Kysely<unknown>,
    private readonly engine: EngineName,
    // The schema named by the database URL (PostgreSQL), else the connection's own.
    private readonly schema: string | undefined,
  ) {}

  async getSchemas(): Promise<SchemaMetadata[]> {
    if (this.engine !== 'postgres') return []
    const { rows } = await sql<{ name: string }>`select nspname as name from pg_catalog.pg_namespace`.execute(this.db)
    return rows
  }

  // Names only, of base tables in the migrator's schema: all the migrator asks of them.
  async getTables(): Promise<TableMetadata[]> {
    const query =
      this.engine === 'sqlite'
        ? sql<{ name: string; schema: string | null }>`select name, null as "schema" from sqlite_master where type = 'table'`
        : this.engine === 'postgres'
          ? sql<{
              name: string
              schema: string | null
            }>`select tablename as name, schemaname as schema from pg_catalog.pg_tables where schemaname = ${this.schema ?? sql`current_schema()`}`
          : sql<{
              name: string
              schema: string | null
            }>`select table_name as name, table_schema as \`schema\` from information_schema.tables where table_schema = database() and table_type = 'BASE TABLE'`
    const { rows } = await query.execute(this.db)
    return rows.map((row) => ({ name: row.name, schema: row.schema ?? undefined, isView: false, columns: [] }))
  }

  async getMetadata(): Promise<DatabaseMetadata> {
    return { tables: await this.getTables() }
  }
}

// `db` as the migrator sees it: the same instance, with the narrow catalogue as its introspection.
export function withMigrationCatalogue<DB>(db: Kysely<DB>, catalogue: DatabaseIntrospector): Kysely<DB> {
  return new Proxy(db, {
    get(target, property) {
      if (property === 'introspection') return catalogue
      const value = Reflect.get(target, property, target) as unknown
      // Kysely's methods read private fields: they run on the instance, not on the proxy.
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value
    },
  })
}
