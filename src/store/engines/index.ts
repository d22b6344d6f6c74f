// Every engine by name: what runs where DATABASE_URL points.
import type { Engine, EngineName } from './engine.js'
import { mysqlEngine } from './mysql.js'
import { postgresEngine } from './postgres.js'
import { sqliteEngine } from './sqlite.js'

export const engines: Record<EngineName, Engine> = { sqlite: sqliteEngine, postgres: postgresEngine, mysql: mysqlEngine }
