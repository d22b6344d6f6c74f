import Database from 'better-sqlite3'
import { randomUUID } from 'node:crypto'
for (const variant of ['rowid+pk+exp', 'rowid+pk', 'norowid+exp', 'norowid']) {
  const file = `/tmp/mb/keys-${variant}.db`
  for (const s of ['', '-wal', '-shm']) { try { (await import('node:fs')).unlinkSync(file + s) } catch {} }
  const db = new Database(file); db.pragma('journal_mode = WAL'); db.pragma('synchronous = ' + (process.env.SYNC ?? 'FULL'))
  const norowid = variant.startsWith('norowid')
  db.exec(`create table k (scope varchar(16) not null, idem_key varchar(255) not null, fingerprint varchar(64) not null, status_code integer not null, response_json text not null, created_at bigint not null, expires_at bigint not null, constraint pk primary key (scope, idem_key))${norowid ? ' without rowid' : ''}`)
  if (variant.endsWith('exp')) db.exec('create index k_exp on k (expires_at)')
  const n = 170
  const ins = db.prepare(`insert into k values ${Array.from({ length: n }, () => '(?,?,?,?,?,?,?)').join(',')}`)
  const sel = db.prepare(`select * from k where scope = ? and idem_key in (${Array.from({ length: n }, () => '?').join(',')})`)
  const resp = JSON.stringify({ id: 'h_01JXXXXXXXXXXXXXXXXXXXXXXX', productId: 2, qty: 1, status: 'active', expiresAt: new Date().toISOString(), createdAt: new Date().toISOString(), buyerId: null })
  const fp = 'f'.repeat(64)
  const rounds = 2000
  const t = performance.now()
  for (let r = 0; r < rounds; r++) {
    const keys = Array.from({ length: n }, () => randomUUID())
    const now = Date.now() + r
    db.transaction(() => {
      sel.all('holds', ...keys)
      ins.run(...keys.flatMap((k) => ['holds', k, fp, 201, resp, now, now + 86400000]))
    })()
  }
  console.log(variant, ((performance.now() - t) * 1000 / (rounds * n)).toFixed(2), 'µs per key over', rounds * n, 'keys')
  db.close()
}
