import Database from 'better-sqlite3'
import { randomUUID } from 'node:crypto'
import { unlinkSync } from 'node:fs'
for (const mode of ['both', 'insert', 'select']) {
  const file = `/tmp/mb/keys2-${mode}.db`
  for (const s of ['', '-wal', '-shm']) { try { unlinkSync(file + s) } catch {} }
  const db = new Database(file); if (process.env.PAGE) db.pragma('page_size = ' + process.env.PAGE); db.pragma('journal_mode = WAL'); db.pragma('synchronous = ' + (process.env.SYNC ?? 'OFF')); if (process.env.CACHE) db.pragma('cache_size = ' + process.env.CACHE); if (process.env.MMAP) db.pragma('mmap_size = ' + process.env.MMAP)
  db.exec(`create table k (scope varchar(16) not null, idem_key varchar(255) not null, fingerprint varchar(64) not null, status_code integer not null, response_json text not null, created_at bigint not null, expires_at bigint not null, constraint pk primary key (scope, idem_key))`)
  db.exec('create index k_exp on k (expires_at)')
  const n = 170
  const ins = db.prepare(`insert into k values ${Array.from({ length: n }, () => '(?,?,?,?,?,?,?)').join(',')}`)
  const sel = db.prepare(`select * from k where scope = ? and idem_key in (${Array.from({ length: n }, () => '?').join(',')})`)
  const resp = JSON.stringify({ id: 'h_01JXXXXXXXXXXXXXXXXXXXXXXX', productId: 2, qty: 1, status: 'active', expiresAt: new Date().toISOString(), createdAt: new Date().toISOString(), buyerId: null })
  const fp = 'f'.repeat(64)
  const rounds = 2000
  // prefill 340k
  for (let r = 0; r < 2000; r++) { const keys = Array.from({ length: n }, () => randomUUID()); db.transaction(() => ins.run(...keys.flatMap((k) => ['holds', k, fp, 201, resp, r, r + 86400000])))() }
  const t = performance.now()
  let selMs = 0, insMs = 0
  for (let r = 0; r < rounds; r++) {
    const keys = Array.from({ length: n }, () => randomUUID())
    const now = Date.now() + r
    db.transaction(() => {
      const a = performance.now()
      if (mode !== 'insert') sel.all('holds', ...keys)
      const b = performance.now()
      if (mode !== 'select') ins.run(...keys.flatMap((k) => ['holds', k, fp, 201, resp, now, now + 86400000]))
      selMs += b - a; insMs += performance.now() - b
    })()
  }
  console.log(mode, 'total', ((performance.now() - t) * 1000 / (rounds * n)).toFixed(2), 'µs/key; select', (selMs*1000/(rounds*n)).toFixed(2), 'insert', (insMs*1000/(rounds*n)).toFixed(2))
  db.close()
}
