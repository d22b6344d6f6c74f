// SQLite's statement cache (engines/sqlite.ts): a text is prepared once while it is in use, a
// text longer than the bound is never kept, and the number kept is bounded (GenerationCache).
import { describe, expect, it } from 'vitest'
import type BetterSqlite3 from 'better-sqlite3'
import { cachePreparedStatements } from '../src/store/engines/sqlite.js'

// Counts the prepares that reach the database; each returns a distinct statement object.
function countingDatabase(): { database: BetterSqlite3.Database; prepared: string[] } {
  const prepared: string[] = []
  const database = { prepare: (sqlText: string) => (prepared.push(sqlText), { sqlText }) } as unknown as BetterSqlite3.Database
  return { database, prepared }
}

describe('SQLite prepared statements', () => {
  it('prepares a repeated text once and gives back the same statement', () => {
    const { database, prepared } = countingDatabase()
    cachePreparedStatements(database, 4, 100)
    const first = database.prepare('select 1')
    expect(database.prepare('select 1')).toBe(first)
    expect(prepared).toEqual(['select 1'])
  })

  it('never keeps a text longer than the bound', () => {
    const { database, prepared } = countingDatabase()
    cachePreparedStatements(database, 4, 10)
    const long = `select ${'1'.padStart(10, ' ')}`
    expect(database.prepare(long)).not.toBe(database.prepare(long))
    expect(prepared).toEqual([long, long])
  })

  it('forgets a text nobody uses once more texts than the bound have passed, and keeps one in use', () => {
    const { database, prepared } = countingDatabase()
    cachePreparedStatements(database, 4, 100)
    database.prepare('unused')
    const hot = database.prepare('hot')
    for (let index = 0; index < 20; index++) {
      database.prepare(`other ${index}`)
      expect(database.prepare('hot')).toBe(hot)
    }
    database.prepare('unused')
    expect(prepared.filter((text) => text === 'unused')).toHaveLength(2)
    expect(prepared.filter((text) => text === 'hot')).toHaveLength(1)
  })
})
