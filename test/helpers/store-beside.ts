// A migrated store on a fresh database, and a Kysely of the test's own on the same database
// (for tests that run statements beside the store's), with a product maker and one close().
import { Kysely, type Dialect } from 'kysely'
import type { EngineName } from '../../src/config.js'
import { engines } from '../../src/store/engines/index.js'
import { KyselyStore } from '../../src/store/kysely-store.js'
import type { Database } from '../../src/store/schema.js'
import { freshDatabase } from './engines.js'

export interface StoreBeside {
  store: KyselyStore
  db: Kysely<Database>
  newProduct(stock: number): Promise<number>
  close(): Promise<void>
}

// `wrapDialect` wraps the test's own dialect (one of `poolSizeMax` connections).
export async function storeBeside(engine: EngineName, options: { poolSizeMax: number; createdAt: Date; wrapDialect?: (dialect: Dialect) => Dialect }): Promise<StoreBeside> {
  const database = await freshDatabase(engine)
  const store = new KyselyStore({ databaseUrl: database.url, engine, observer: { emit: () => undefined }, txAttemptsMax: 3, poolSizeMax: 2 })
  await store.migrate()
  const dialect = engines[engine].createDialect(database.url, { poolSizeMax: options.poolSizeMax, lockWaitMs: 5_000, onConnectionError: () => undefined })
  const db = new Kysely<Database>({ dialect: options.wrapDialect ? options.wrapDialect(dialect) : dialect })
  return {
    store,
    db,
    newProduct: (stock) => store.transaction({ label: 'test' }, (tx) => tx.insertProduct({ name: 'P', priceMinor: 1250, currency: 'USD', stock, createdAt: options.createdAt })),
    close: async () => {
      await db.destroy()
      await store.close()
      await database.drop()
    },
  }
}
