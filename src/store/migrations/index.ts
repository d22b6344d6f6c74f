import { sql, type Kysely, type Migration, type MigrationProvider } from 'kysely'
import type { Engine } from '../engines/engine.js'
import { bucketOfSql } from '../expiry-buckets.js'

// Migrations are code, in order, never edited once released: a change is a new migration.
function initial(engine: Engine): Migration {
  const finish = <T extends { modifyEnd(node: ReturnType<typeof sql.raw>): T }>(builder: T): T => (engine.tableOptionsSql ? builder.modifyEnd(sql.raw(engine.tableOptionsSql)) : builder)
  return {
    async up(db: Kysely<unknown>) {
      const idType = 'varchar(40)'
      const productId = engine.autoIncrementColumn(false)
      const eventSeq = engine.autoIncrementColumn(true)
      await finish(
        db.schema
          .createTable('products')
          .addColumn('id', productId.type, (column) => (productId.keyword ? column.primaryKey().autoIncrement() : column.primaryKey()))
          .addColumn('name', 'varchar(200)', (column) => column.notNull())
          .addColumn('price_minor', 'bigint', (column) => column.notNull())
          .addColumn('currency', 'varchar(3)', (column) => column.notNull())
          .addColumn('stock', 'integer', (column) => column.notNull())
          .addColumn('reserved', 'integer', (column) => column.notNull().defaultTo(0))
          .addColumn('sold', 'integer', (column) => column.notNull().defaultTo(0))
          .addColumn('created_at', 'bigint', (column) => column.notNull())
          .addColumn('updated_at', 'bigint', (column) => column.notNull())
          // I1 refused by the database too: the second guard behind the domain's assertions.
          .addCheckConstraint('products_counts_check', sql`reserved >= 0 and sold >= 0 and reserved + sold <= stock and price_minor >= 0`),
      ).execute()

      await finish(
        db.schema
          .createTable('holds')
          .addColumn('id', idType, (column) => column.primaryKey())
          .addColumn('product_id', 'integer', (column) => column.notNull().references('products.id'))
          .addColumn('qty', 'integer', (column) => column.notNull())
          .addColumn('status', 'varchar(16)', (column) => column.notNull())
          .addColumn('expires_at', 'bigint', (column) => column.notNull())
          .addColumn('created_at', 'bigint', (column) => column.notNull())
          .addColumn('updated_at', 'bigint', (column) => column.notNull())
          .addCheckConstraint('holds_qty_check', sql`qty > 0`)
          .addCheckConstraint('holds_status_check', sql`status in ('active', 'converted', 'expired', 'released')`),
      ).execute()
      await db.schema.createIndex('holds_lapsed_idx').on('holds').columns(['product_id', 'status', 'expires_at']).execute()

      await finish(
        db.schema
          .createTable('orders')
          .addColumn('id', idType, (column) => column.primaryKey())
          // I4: a hold becomes at most one order, whatever races.
          .addColumn('hold_id', idType, (column) => column.notNull().unique().references('holds.id'))
          .addColumn('product_id', 'integer', (column) => column.notNull().references('products.id'))
          .addColumn('qty', 'integer', (column) => column.notNull())
          .addColumn('amount_minor', 'bigint', (column) => column.notNull())
          .addColumn('currency', 'varchar(3)', (column) => column.notNull())
          .addColumn('status', 'varchar(16)', (column) => column.notNull())
          .addColumn('created_at', 'bigint', (column) => column.notNull())
          .addColumn('expires_at', 'bigint', (column) => column.notNull())
          .addColumn('updated_at', 'bigint', (column) => column.notNull())
          .addColumn('paid_at', 'bigint')
          .addColumn('payment_id', 'varchar(255)')
          .addColumn('refund_required', 'integer', (column) => column.notNull().defaultTo(0))
          .addCheckConstraint('orders_qty_check', sql`qty > 0`)
          .addCheckConstraint('orders_status_check', sql`status in ('pending', 'paid', 'cancelled', 'expired')`),
      ).execute()
      await db.schema.createIndex('orders_lapsed_idx').on('orders').columns(['product_id', 'status', 'expires_at']).execute()

      await finish(
        db.schema
          .createTable('payment_events')
          .addColumn('seq', eventSeq.type, (column) => (eventSeq.keyword ? column.primaryKey().autoIncrement() : column.primaryKey()))
          // I4: a payment event (idempotency key) is stored, and so applied, at most once.
          .addColumn('idem_key', 'varchar(255)', (column) => column.notNull().unique())
          .addColumn('fingerprint', 'varchar(64)', (column) => column.notNull())
          .addColumn('order_id', idType)
          .addColumn('hold_id', idType)
          .addColumn('status', 'varchar(16)', (column) => column.notNull())
          .addColumn('payment_id', 'varchar(255)')
          .addColumn('amount_minor', 'bigint')
          .addColumn('state', 'varchar(16)', (column) => column.notNull())
          .addColumn('outcome', 'varchar(32)')
          .addColumn('response_json', 'text')
          .addColumn('created_at', 'bigint', (column) => column.notNull())
          .addColumn('processed_at', 'bigint'),
      ).execute()
      await db.schema.createIndex('payment_events_hold_idx').on('payment_events').columns(['hold_id', 'state', 'seq']).execute()

      await finish(
        db.schema
          .createTable('idempotency_keys')
          .addColumn('scope', 'varchar(16)', (column) => column.notNull())
          .addColumn('idem_key', 'varchar(255)', (column) => column.notNull())
          .addColumn('fingerprint', 'varchar(64)', (column) => column.notNull())
          .addColumn('status_code', 'integer', (column) => column.notNull())
          .addColumn('response_json', 'text', (column) => column.notNull())
          .addColumn('created_at', 'bigint', (column) => column.notNull())
          .addColumn('expires_at', 'bigint', (column) => column.notNull())
          .addPrimaryKeyConstraint('idempotency_keys_pk', ['scope', 'idem_key']),
      ).execute()
      await db.schema.createIndex('idempotency_keys_expiry_idx').on('idempotency_keys').column('expires_at').execute()
    },
  }
}

export interface SeedProduct {
  name: string
  priceMinor: number
  currency: string
  stock: number
}

// The first product of a new database, created by a migration so that it happens exactly once,
// under the migrator's lock, even when several instances start together on an empty database.
// With no seed (or zero stock) nothing is created, and the migration still counts as applied.
function seedProduct(seed: SeedProduct | undefined): Migration {
  return {
    async up(db: Kysely<any>) {
      if (!seed || seed.stock <= 0) return
      const existing = await db
        .selectFrom('products')
        .select(sql<number>`count(*)`.as('n'))
        .executeTakeFirstOrThrow()
      if (Number(existing.n) > 0) return
      const nowMs = Date.now()
      await db
        .insertInto('products')
        .values({ name: seed.name, price_minor: seed.priceMinor, currency: seed.currency, stock: seed.stock, reserved: 0, sold: 0, created_at: nowMs, updated_at: nowMs })
        .execute()
    },
  }
}

// Buyers, per-buyer limits and sale windows (SPEC §8). Every column is nullable, so rows made
// before stay valid: anonymous holds and orders, products without limit or window. The indexes
// serve the per-buyer count a limited product's hold batch makes under the product lock.
function dropSettings(): Migration {
  return {
    async up(db: Kysely<unknown>) {
      await db.schema.alterTable('products').addColumn('per_buyer_limit', 'integer').execute()
      await db.schema.alterTable('products').addColumn('per_buyer_limit_set_at', 'bigint').execute()
      await db.schema.alterTable('products').addColumn('sale_starts_at', 'bigint').execute()
      await db.schema.alterTable('products').addColumn('sale_ends_at', 'bigint').execute()
      await db.schema.alterTable('holds').addColumn('buyer_id', 'varchar(128)').execute()
      await db.schema.alterTable('orders').addColumn('buyer_id', 'varchar(128)').execute()
      await db.schema.createIndex('holds_buyer_idx').on('holds').columns(['product_id', 'buyer_id']).execute()
      await db.schema.createIndex('orders_buyer_idx').on('orders').columns(['product_id', 'buyer_id']).execute()
    },
  }
}

// Expiry buckets (store/expiry-buckets.ts, SPEC §4), filled from the live rows already there so
// a database migrated during a sale starts with a true book. Instances still running the old
// code write rows without buckets: migrate with the service stopped, or run the audit after.
// The payment_events index lets a read find the lapsed holds a success waits on from the few
// waiting events instead of from the lapsed holds.
function expiryBuckets(engine: Engine): Migration {
  return {
    async up(db: Kysely<any>) {
      let table = db.schema
        .createTable('expiry_buckets')
        .addColumn('product_id', 'integer', (column) => column.notNull())
        .addColumn('bucket', 'bigint', (column) => column.notNull())
        .addColumn('qty', 'integer', (column) => column.notNull())
        .addPrimaryKeyConstraint('expiry_buckets_pk', ['product_id', 'bucket'])
        // A bucket below zero is bookkeeping gone wrong: refused, so the bug is never committed.
        .addCheckConstraint('expiry_buckets_qty_check', sql`qty >= 0`)
      const options = [engine.tableOptionsSql, engine.clusteredByKeySql].filter((option) => option !== null).join(' ')
      if (options !== '') table = table.modifyEnd(sql.raw(options))
      await table.execute()
      const bucket = bucketOfSql('expires_at').as('bucket')
      const live = db
        .selectFrom('holds')
        .select(['product_id', bucket, 'qty'])
        .where('status', '=', 'active')
        .unionAll(db.selectFrom('orders').select(['product_id', bucket, 'qty']).where('status', '=', 'pending'))
      await db
        .insertInto('expiry_buckets')
        .columns(['product_id', 'bucket', 'qty'])
        .expression(
          db
            .selectFrom(live.as('u'))
            .select(['u.product_id', 'u.bucket', sql<number>`sum(u.qty)`.as('qty')])
            .groupBy(['u.product_id', 'u.bucket']),
        )
        .execute()
      await db.schema.createIndex('payment_events_waiting_idx').on('payment_events').columns(['state', 'status', 'hold_id']).execute()
    },
  }
}

// The waitlist (SPEC §8): its counts on the product row beside stock, so a transaction that frees
// units knows from the row it locked whether anybody waits (no statement when nobody does), and
// the tickets. Line order is line_rank; a ticket's hold id is drawn when it is taken (unique: a
// ticket becomes at most one hold).
function waitlist(engine: Engine): Migration {
  return {
    async up(db: Kysely<unknown>) {
      await db.schema
        .alterTable('products')
        .addColumn('waiting_qty', 'integer', (column) => column.notNull().defaultTo(0))
        .execute()
      await db.schema
        .alterTable('products')
        .addColumn('waiting_tickets', 'integer', (column) => column.notNull().defaultTo(0))
        .execute()
      await db.schema
        .alterTable('products')
        .addColumn('waitlist_joined', 'bigint', (column) => column.notNull().defaultTo(0))
        .execute()
      const table = db.schema
        .createTable('waitlist_tickets')
        .addColumn('id', 'varchar(40)', (column) => column.primaryKey())
        .addColumn('product_id', 'integer', (column) => column.notNull().references('products.id'))
        .addColumn('qty', 'integer', (column) => column.notNull())
        .addColumn('status', 'varchar(16)', (column) => column.notNull())
        .addColumn('line_rank', 'bigint', (column) => column.notNull())
        .addColumn('join_seq', 'bigint', (column) => column.notNull())
        .addColumn('presale', 'integer', (column) => column.notNull())
        .addColumn('hold_id', 'varchar(40)', (column) => column.notNull().unique())
        .addColumn('hold_ttl_ms', 'bigint', (column) => column.notNull())
        .addColumn('buyer_id', 'varchar(128)')
        .addColumn('created_at', 'bigint', (column) => column.notNull())
        .addColumn('updated_at', 'bigint', (column) => column.notNull())
        .addColumn('ended_at', 'bigint')
        .addCheckConstraint('waitlist_tickets_qty_check', sql`qty > 0`)
        .addCheckConstraint('waitlist_tickets_status_check', sql`status in ('waiting', 'admitted', 'left', 'closed')`)
      await (engine.tableOptionsSql ? table.modifyEnd(sql.raw(engine.tableOptionsSql)) : table).execute()
      await db.schema.createIndex('waitlist_line_idx').on('waitlist_tickets').columns(['product_id', 'status', 'line_rank']).execute()
      await db.schema.createIndex('waitlist_join_idx').on('waitlist_tickets').columns(['product_id', 'status', 'join_seq']).execute()
      await db.schema.createIndex('waitlist_buyer_idx').on('waitlist_tickets').columns(['product_id', 'buyer_id', 'status']).execute()
    },
  }
}

// The per-buyer count of a limited product's hold batch filters on product, buyer and status.
// With only (product_id, buyer_id) indexed, planners without statistics (a fresh or fast-growing
// table) preferred (product_id, status, expires_at) and read every active hold of the product:
// 7-10 ms for 128 buyers among 20,000 holds on SQLite and PostgreSQL, growing with the sale.
// Three equality columns make the buyer index the obvious choice: one short range per buyer.
function buyerStatusIndexes(engine: Engine): Migration {
  return {
    async up(db: Kysely<unknown>) {
      await db.schema.createIndex('holds_buyer_status_idx').on('holds').columns(['product_id', 'buyer_id', 'status']).execute()
      await db.schema.createIndex('orders_buyer_status_idx').on('orders').columns(['product_id', 'buyer_id', 'status']).execute()
      // The new indexes start with the old ones' columns: the old ones only cost writes now.
      for (const [index, table] of [
        ['holds_buyer_idx', 'holds'],
        ['orders_buyer_idx', 'orders'],
      ] as const) {
        const drop = db.schema.dropIndex(index)
        await (engine.dropIndexNamesTable ? drop.on(table) : drop).execute()
      }
    },
  }
}

// The per-buyer count again, on a shop's second drop: the tables then have statistics from the
// first, in which the new product is not, and PostgreSQL estimated it at a row or so in every
// (product_id, ...) index. It took holds_lapsed_idx and read every live hold of the product per
// buyer: 168 ms a batch of 170 buyers among 34,000 holds (1.4 ms after ANALYZE). With the buyer
// first, the count names the product as `product_id + 0`, which no (product_id, ...) index can
// serve, so the buyer index is the only one left: one short range per buyer, whatever the
// statistics (test/store-plans.test.ts).
function buyerFirstIndexes(engine: Engine): Migration {
  const replaced = [
    ['holds', 'holds_buyer_status_idx', 'holds_buyer_first_idx'],
    ['orders', 'orders_buyer_status_idx', 'orders_buyer_first_idx'],
    ['waitlist_tickets', 'waitlist_buyer_idx', 'waitlist_buyer_first_idx'],
  ] as const
  return {
    async up(db: Kysely<unknown>) {
      for (const [table, oldIndex, newIndex] of replaced) {
        await db.schema.createIndex(newIndex).on(table).columns(['buyer_id', 'product_id', 'status']).execute()
        const drop = db.schema.dropIndex(oldIndex)
        await (engine.dropIndexNamesTable ? drop.on(table) : drop).execute()
      }
    },
  }
}

// MySQL and MariaDB compare utf8mb4_bin text as PAD SPACE: trailing spaces are ignored, so the
// buyers "bob" and "bob " were one buyer to the per-buyer count (its IN list and GROUP BY) and two
// to the service, and each was judged with 0 units (I8 broken; found by a black-box probe). An
// exact (NO PAD binary) collation compares buyer ids byte for byte, as SQLite and PostgreSQL do.
// Ids the service mints and idempotency keys (visible ASCII only) cannot end in a space, so only
// the buyer columns change. MySQL's DDL does not run in a transaction: until the last of the
// three tables is altered, queries joining buyer columns of two collations fail ("illegal mix of
// collations"), so this migration is one to run with the traffic stopped (README, Upgrading).
function exactBuyerIds(engine: Engine): Migration {
  const tables = ['holds', 'orders', 'waitlist_tickets'] as const
  return {
    async up(db: Kysely<unknown>) {
      const candidates = engine.exactTextCollations
      if (candidates === null) return
      const { rows } = await sql<{ name: string }>`select collation_name as name from information_schema.collations where collation_name in (${sql.join(candidates)})`.execute(db)
      const available = new Set(rows.map((row) => row.name))
      const collation = candidates.find((candidate) => available.has(candidate))
      if (collation === undefined) throw new Error(`the database server has none of the collations ${candidates.join(', ')}: MySQL 8.0.17+ or MariaDB 10.2+ is needed`)
      for (const table of tables) {
        await sql`alter table ${sql.table(table)} modify buyer_id varchar(128) character set utf8mb4 collate ${sql.raw(collation)} null`.execute(db)
      }
    },
  }
}

// The sweeper looks for a waiting ticket that fits a product's free units (productsWithLineWork):
// with this index, the smallest waiting ticket of a product is one short range away, however long
// its line of bigger tickets.
function waitlistFitIndex(): Migration {
  return {
    async up(db: Kysely<unknown>) {
      await db.schema.createIndex('waitlist_fit_idx').on('waitlist_tickets').columns(['product_id', 'status', 'qty']).execute()
    },
  }
}

// Whether the table has the column (or the index): MySQL, MariaDB and SQLite run DDL outside
// any transaction, so a migration stopped half-way (a crash) keeps what it did and is not
// recorded as run; its next run must skip what is there. PostgreSQL runs each migration in a
// transaction: it finds nothing.
async function hasColumn(db: Kysely<any>, engine: Engine, table: string, column: string): Promise<boolean> {
  const query =
    engine.name === 'sqlite'
      ? sql`select 1 as present from pragma_table_info(${table}) where name = ${column}`
      : sql`select 1 as present from information_schema.columns where table_schema = ${engine.name === 'mysql' ? sql`database()` : sql`current_schema()`} and table_name = ${table} and column_name = ${column}`
  return (await query.execute(db)).rows.length > 0
}

async function hasIndex(db: Kysely<any>, engine: Engine, table: string, index: string): Promise<boolean> {
  const query =
    engine.name === 'sqlite'
      ? sql`select 1 as present from sqlite_master where type = 'index' and tbl_name = ${table} and name = ${index}`
      : engine.name === 'mysql'
        ? sql`select 1 as present from information_schema.statistics where table_schema = database() and table_name = ${table} and index_name = ${index}`
        : sql`select 1 as present from pg_indexes where schemaname = current_schema() and tablename = ${table} and indexname = ${index}`
  return (await query.execute(db)).rows.length > 0
}

// Keys moved a statement: two CASE arms and an IN-list entry each, 1,500 parameters.
const movedKeysPerRoundMax = 500

// A keyed hold keeps its idempotency key in its own row (idem_key, unique) instead of a row of
// idempotency_keys: the batch's insert of holds stores the keys too, so a keyed hold costs one
// index entry more than a plain one instead of a second row with two index entries. Where
// indexes can be partial the index holds keyed rows only, and plain holds pay nothing.
// The hold keys stored by earlier versions move into their holds (the hold id is in the stored
// answer), a round at a time: one UPDATE of the round's holds, then one DELETE of its key rows;
// rows of other scopes stay. Every step can run again (a crash half-way on MySQL or SQLite, whose
// DDL is not transactional): what is there is skipped, and a round moved but not deleted moves
// the same keys again. Like 0008, a migration to run with the traffic stopped: an older instance
// still writing hold keys to idempotency_keys would not see the moved ones.
function holdKeys(engine: Engine): Migration {
  return {
    async up(db: Kysely<any>) {
      if (!(await hasColumn(db, engine, 'holds', 'idem_key'))) await db.schema.alterTable('holds').addColumn('idem_key', 'varchar(255)').execute()
      if (!(await hasColumn(db, engine, 'holds', 'idem_fingerprint'))) await db.schema.alterTable('holds').addColumn('idem_fingerprint', 'varchar(64)').execute()
      if (!(await hasIndex(db, engine, 'holds', 'holds_idem_key_idx'))) {
        const index = db.schema.createIndex('holds_idem_key_idx').on('holds').column('idem_key').unique()
        await (engine.partialIndexes ? index.where(sql.ref('idem_key'), 'is not', null) : index).execute()
      }
      for (;;) {
        const stored: Array<{ idem_key: string; fingerprint: string; status_code: number; response_json: string }> = await db
          .selectFrom('idempotency_keys')
          .select(['idem_key', 'fingerprint', 'status_code', 'response_json'])
          .where('scope', '=', 'holds')
          .orderBy('idem_key')
          .limit(movedKeysPerRoundMax)
          .execute()
        if (stored.length === 0) break
        // Only a completed key holds an answer; a claim (0) was never committed by any version.
        const moved = stored.filter((row) => Number(row.status_code) !== 0).map((row) => ({ ...row, holdId: (JSON.parse(row.response_json) as { id: string }).id }))
        if (moved.length > 0) {
          const caseOf = (value: (row: (typeof moved)[number]) => string) =>
            sql`case id ${sql.join(
              moved.map((row) => sql`when ${row.holdId} then ${value(row)}`),
              sql` `,
            )} end`
          await db
            .updateTable('holds')
            .set({ idem_key: caseOf((row) => row.idem_key), idem_fingerprint: caseOf((row) => row.fingerprint) })
            .where(
              'id',
              'in',
              moved.map((row) => row.holdId),
            )
            .execute()
        }
        await db
          .deleteFrom('idempotency_keys')
          .where('scope', '=', 'holds')
          .where(
            'idem_key',
            'in',
            stored.map((row) => row.idem_key),
          )
          .execute()
      }
    },
  }
}

export function migrationProvider(engine: Engine, seed?: SeedProduct): MigrationProvider {
  return {
    getMigrations: async () => ({
      '0001_initial': initial(engine),
      '0002_seed_product': seedProduct(seed),
      '0003_drop_settings': dropSettings(),
      '0004_expiry_buckets': expiryBuckets(engine),
      '0005_waitlist': waitlist(engine),
      '0006_buyer_status_indexes': buyerStatusIndexes(engine),
      '0007_buyer_first_indexes': buyerFirstIndexes(engine),
      '0008_exact_buyer_ids': exactBuyerIds(engine),
      '0009_waitlist_fit_index': waitlistFitIndex(),
      '0010_hold_keys': holdKeys(engine),
    }),
  }
}
