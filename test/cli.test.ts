// Proves the command line (`node bin/flash-sale.js`, run as a child process against each engine)
// keeps its contract: migrate and seed are repeatable, audit exits 0 on clean rows and 1 on a
// corrupted one, sweep --once expires only lapsed rows, sign output verifies, misuse exits 2.
import { createHmac } from 'node:crypto'
import { existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { buildTestApp } from './helpers/app.js'
import { rawQuery, testDatabase, testEngines } from './helpers/engines.js'
import { runCli } from './helpers/lifecycle.js'
import { runToExit } from './helpers/servers.js'
import { freePort } from '../dev/free-port.js'

interface AuditOutput {
  ok: boolean
  checked_products: number
  violations: Array<{ invariant: string; product_id?: number; message: string }>
}

// Each command line exits 2 with stderr matching (a pattern) or containing (a string) what it names.
async function expectMisuse(cases: ReadonlyArray<{ args: string[]; env: Record<string, string>; stderr: RegExp | string }>): Promise<void> {
  for (const misuse of cases) {
    const result = await runCli(misuse.args, misuse.env)
    expect({ args: misuse.args, code: result.code }).toEqual({ args: misuse.args, code: 2 })
    expect(result.stderr).toMatch(misuse.stderr)
  }
}

for (const engine of testEngines()) {
  describe.skipIf(!engine.available)(`${engine.name}: cli`, () => {
    it('migrate creates the schema and product 1 once, and is repeatable; seed then has nothing to do', async () => {
      const fresh = await testDatabase(engine.name)
      const env = { DATABASE_URL: fresh.url, SEED_STOCK: '7' }
      for (let run = 0; run < 2; run++) {
        const migrated = await runCli(['migrate'], env)
        expect({ code: migrated.code, stderr: migrated.stderr }).toEqual({ code: 0, stderr: '' })
      }
      const again = await runCli(['seed'], env)
      expect(again.code).toBe(0)
      expect(again.stdout).toContain('nothing seeded')
      const products = (await rawQuery(engine.name, fresh.url, 'select id, stock, reserved, sold from products')) as Array<Record<string, unknown>>
      expect(products.map((row) => ({ id: Number(row.id), stock: Number(row.stock), reserved: Number(row.reserved), sold: Number(row.sold) }))).toEqual([
        { id: 1, stock: 7, reserved: 0, sold: 0 },
      ])
      const audited = await runCli(['audit'], env)
      expect(audited.code).toBe(0)
      expect(JSON.parse(audited.stdout)).toEqual({ ok: true, checked_products: 1, violations: [] })
    })

    it('seed on a new database migrates it and says it seeded product 1; again, that nothing was seeded', async () => {
      const fresh = await testDatabase(engine.name)
      const env = { DATABASE_URL: fresh.url, SEED_STOCK: '5' }
      const first = await runCli(['seed'], env)
      expect({ code: first.code, stdout: first.stdout.trim(), stderr: first.stderr }).toEqual({ code: 0, stdout: 'seeded product 1 with 5 units', stderr: '' })
      expect((await runCli(['seed'], env)).stdout.trim()).toBe('the database already has products; nothing seeded')
      const products = (await rawQuery(engine.name, fresh.url, 'select id, stock from products')) as Array<Record<string, unknown>>
      expect(products.map((row) => ({ id: Number(row.id), stock: Number(row.stock) }))).toEqual([{ id: 1, stock: 5 }])
    })

    it('a database migrated with SEED_STOCK=0 has no product until seed creates product 1 with SEED_STOCK units, once', async () => {
      const fresh = await testDatabase(engine.name)
      expect((await runCli(['migrate'], { DATABASE_URL: fresh.url, SEED_STOCK: '0' })).code).toBe(0)
      expect(await rawQuery(engine.name, fresh.url, 'select id from products')).toEqual([])
      // Seeding with SEED_STOCK=0 says why nothing was seeded (not that products exist).
      expect((await runCli(['seed'], { DATABASE_URL: fresh.url, SEED_STOCK: '0' })).stdout).toContain('SEED_STOCK=0; nothing seeded')
      const env = { DATABASE_URL: fresh.url, SEED_STOCK: '7' }
      const seeded = await runCli(['seed'], env)
      expect(seeded.code).toBe(0)
      expect(seeded.stdout).toContain('seeded product 1 with 7 units')
      expect((await runCli(['seed'], env)).stdout).toContain('the database already has products; nothing seeded')
      const products = (await rawQuery(engine.name, fresh.url, 'select id, stock from products')) as Array<Record<string, unknown>>
      expect(products.map((row) => ({ id: Number(row.id), stock: Number(row.stock) }))).toEqual([{ id: 1, stock: 7 }])
      expect((await runCli(['audit'], env)).code).toBe(0)
    })

    it('audit exits 0 on clean rows, 1 naming I2 after reserved is corrupted, and 0 again once repaired', async () => {
      const t = await buildTestApp(engine.name, { stock: 10 })
      const held = await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 2 } })
      expect(held.status).toBe(201)
      const env = { DATABASE_URL: t.databaseUrl }

      const clean = await runCli(['audit'], env)
      expect(clean.code).toBe(0)
      expect(JSON.parse(clean.stdout)).toEqual({ ok: true, checked_products: 1, violations: [] })

      // reserved 3 of stock 10 passes the CHECK (reserved + sold <= stock) but not I2 (2 held).
      await rawQuery(engine.name, t.databaseUrl, `update products set reserved = reserved + 1 where id = ${t.productId}`)
      const corrupted = await runCli(['audit'], env)
      expect(corrupted.code).toBe(1)
      const report = JSON.parse(corrupted.stdout) as AuditOutput
      expect(report.ok).toBe(false)
      expect(report.violations).toEqual([expect.objectContaining({ invariant: 'I2', product_id: t.productId })])

      await rawQuery(engine.name, t.databaseUrl, `update products set reserved = reserved - 1 where id = ${t.productId}`)
      expect((await runCli(['audit'], env)).code).toBe(0)
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it('audit exits 1 naming I4 when a hold is marked converted without an order, and I3 when sold disagrees with paid orders', async () => {
      const t = await buildTestApp(engine.name, { stock: 10 })
      const held = await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 2 } })
      expect(held.status).toBe(201)
      const env = { DATABASE_URL: t.databaseUrl }

      // The hold's units stay reserved (as a converted hold's would), and its expiry bucket goes
      // as the store would take it out, so only I4 breaks.
      await rawQuery(engine.name, t.databaseUrl, `update holds set status = 'converted' where id = '${held.body.hold_id}'`)
      await rawQuery(engine.name, t.databaseUrl, `update products set reserved = 0 where id = ${t.productId}`)
      await rawQuery(engine.name, t.databaseUrl, `delete from expiry_buckets where product_id = ${t.productId}`)
      const missingOrder = await runCli(['audit'], env)
      expect(missingOrder.code).toBe(1)
      const report = JSON.parse(missingOrder.stdout) as AuditOutput
      expect(report.violations.map((violation) => violation.invariant)).toEqual(['I4'])
      expect(report.violations[0]!.message).toContain(held.body.hold_id)

      await rawQuery(engine.name, t.databaseUrl, `update holds set status = 'released' where id = '${held.body.hold_id}'`)
      expect((await runCli(['audit'], env)).code).toBe(0)
      await rawQuery(engine.name, t.databaseUrl, `update products set sold = 1 where id = ${t.productId}`)
      const oversold = await runCli(['audit'], env)
      expect(oversold.code).toBe(1)
      expect((JSON.parse(oversold.stdout) as AuditOutput).violations).toEqual([expect.objectContaining({ invariant: 'I3', product_id: t.productId })])

      await rawQuery(engine.name, t.databaseUrl, `update products set sold = 0 where id = ${t.productId}`)
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it('sweep --once expires the lapsed holds and pending orders, returns their units and leaves live holds alone', async () => {
      // Holds and orders made by an app with 1 ms TTLs have lapsed in real time by the moment
      // the CLI (on the system clock) runs; a second app with the default TTL makes a live hold.
      const t = await buildTestApp(engine.name, { stock: 10, env: { HOLD_TTL_SECONDS: '0.001', ORDER_TTL_SECONDS: '0.001' } })
      const live = await buildTestApp(engine.name, { databaseUrl: t.databaseUrl })
      const lapsedHolds = []
      for (let index = 0; index < 3; index++) {
        const reply = await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 2 } })
        expect(reply.status).toBe(201)
        lapsedHolds.push(reply.body.hold_id as string)
      }
      const ordered = await t.request('POST', '/api/orders', { body: { hold_id: lapsedHolds.pop() } })
      expect(ordered.status).toBe(201)
      const liveHold = await live.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 3 } })
      expect(liveHold.status).toBe(201)
      expect((await t.request('GET', `/api/products/${t.productId}`)).body).toMatchObject({ reserved: 9 })

      const swept = await runCli(['sweep', '--once'], { DATABASE_URL: t.databaseUrl })
      expect(swept.code).toBe(0)
      expect(JSON.parse(swept.stdout.trim().split('\n').pop()!)).toMatchObject({ expiredCount: 3 })

      const holdRows = (await rawQuery(engine.name, t.databaseUrl, 'select id, status from holds')) as Array<{ id: string; status: string }>
      expect(Object.fromEntries(holdRows.map((row) => [row.id, row.status]))).toEqual({
        [lapsedHolds[0]!]: 'expired',
        [lapsedHolds[1]!]: 'expired',
        [ordered.body.hold_id as string]: 'converted',
        [liveHold.body.hold_id as string]: 'active',
      })
      const orderRows = (await rawQuery(engine.name, t.databaseUrl, 'select status from orders')) as Array<{ status: string }>
      expect(orderRows.map((row) => row.status)).toEqual(['expired'])
      expect((await live.request('GET', `/api/products/${t.productId}`)).body).toMatchObject({ available_stock: 7, reserved: 3 })

      const again = await runCli(['sweep', '--once'], { DATABASE_URL: t.databaseUrl })
      expect(JSON.parse(again.stdout.trim().split('\n').pop()!)).toMatchObject({ expiredCount: 0 })
      expect((await runCli(['audit'], { DATABASE_URL: t.databaseUrl })).code).toBe(0)
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it('sign prints a Webhook-Signature that matches the HMAC and that the server accepts', async () => {
      const secret = 'cli-test-secret'
      const t = await buildTestApp(engine.name, { stock: 5, env: { WEBHOOK_SECRET: secret } })
      const held = await t.request('POST', '/api/holds', { body: { product_id: t.productId, qty: 1 } })
      expect(held.status).toBe(201)
      const rawBody = JSON.stringify({ hold_id: held.body.hold_id, status: 'success', payment_id: 'pay_cli' })
      const timestampS = Math.floor(t.clock.now().getTime() / 1000)

      const signed = await runCli(['sign', '--body', rawBody, '--secret', secret, '--timestamp', String(timestampS)], { DATABASE_URL: t.databaseUrl })
      expect(signed.code).toBe(0)
      const header = signed.stdout.trim()
      const digest = createHmac('sha256', secret).update(`${timestampS}.${rawBody}`).digest('hex')
      expect(header).toBe(`t=${timestampS},v1=${digest}`)
      // The secret may come from WEBHOOK_SECRET instead of --secret.
      const fromEnv = await runCli(['sign', '--body', rawBody, '--timestamp', String(timestampS)], { DATABASE_URL: t.databaseUrl, WEBHOOK_SECRET: secret })
      expect(fromEnv.stdout.trim()).toBe(header)
      // A timestamp that is not whole unix seconds is misuse (exit 2), never a header with t=NaN.
      for (const bad of ['abc', '1.5', '']) {
        const refused = await runCli(['sign', '--body', rawBody, '--secret', secret, `--timestamp=${bad}`], { DATABASE_URL: t.databaseUrl })
        expect(refused.code, bad).toBe(2)
        expect(refused.stdout).toBe('')
      }

      const headers = { 'content-type': 'application/json', 'webhook-signature': header, 'idempotency-key': 'evt-cli-1' }
      const accepted = await t.request('POST', '/api/payments/webhook', { rawBody, headers })
      expect(accepted.status).toBe(202)
      expect(accepted.body).toMatchObject({ status: 'accepted' })
      // The same signature over other bytes is refused.
      const tampered = rawBody.replace('pay_cli', 'pay_cl1')
      const refused = await t.request('POST', '/api/payments/webhook', { rawBody: tampered, headers: { ...headers, 'idempotency-key': 'evt-cli-2' } })
      expect(refused.status).toBe(401)
      expect(refused.body).toMatchObject({ code: 'invalid_signature' })
      expect(await t.audit()).toEqual({ ok: true, checkedProducts: 1, violations: [] })
    })

    it('the server exits 3 with one line when it cannot migrate its database at start (unreachable or unopenable), with one process or several', async () => {
      const nobodyPort = await freePort()
      const unreachable: Record<string, string> = {
        sqlite: 'sqlite:/proc/flash-sale-cannot-open.db',
        postgres: `postgres://postgres:secret-pw@127.0.0.1:${nobodyPort}/test`,
        mysql: `mysql://root:secret-pw@127.0.0.1:${nobodyPort}/test`,
      }
      for (const workers of ['1', '2']) {
        const result = await runToExit(['dist/main.js'], { ...process.env, LOG_LEVEL: 'silent', DATABASE_URL: unreachable[engine.name]!, WORKERS: workers, PORT: '0' })
        const lines = result.stderr.trim().split('\n')
        expect({ workers, code: result.code, lines: lines.length }).toEqual({ workers, code: 3, lines: 1 })
        expect(lines[0]).toMatch(/^cannot start: migration failed/)
        expect(result.stderr).not.toContain('secret-pw')
      }
    })

    it('--help, -h and help print the usage on stdout and exit 0', async () => {
      for (const ask of ['--help', '-h', 'help']) {
        const answer = await runCli([ask], {})
        expect({ ask, code: answer.code, stderr: answer.stderr }).toEqual({ ask, code: 0, stderr: '' })
        expect(answer.stdout).toMatch(/^usage: flash-sale <command>/)
      }
    })

    it('misuse exits 2 with a message: no or unknown command, sweep without --once, an unknown sweep flag, sign without --body or secret', async () => {
      const fresh = await testDatabase(engine.name)
      const env = { DATABASE_URL: fresh.url }
      const cases: Array<{ args: string[]; env?: Record<string, string>; stderr: RegExp }> = [
        { args: [], stderr: /usage: flash-sale/ },
        { args: ['frobnicate'], stderr: /usage: flash-sale/ },
        { args: ['sweep'], stderr: /--once/ },
        { args: ['sweep', '--twice'], stderr: /twice/ },
        { args: ['sign', '--secret', 's'], stderr: /--body/ },
        { args: ['sign', '--body', '{}'], env: { WEBHOOK_SECRET: '' }, stderr: /secret/ },
      ]
      await expectMisuse(cases.map((misuse) => ({ ...misuse, env: { ...env, ...misuse.env } })))
      // The server's entry is not the command line: with a command it exits 2 instead of serving.
      const served = await runToExit(['dist/main.js', 'sweep', '--once'], { ...process.env, LOG_LEVEL: 'warn', ...env, PORT: '0' })
      expect(served.code).toBe(2)
      expect(served.stderr).toMatch(/npx flash-sale <command>/)
    })

    it('a bad configuration variable exits 2 naming it, for every command that opens the database', async () => {
      const fresh = await testDatabase(engine.name)
      const cases: Array<{ args: string[]; env: Record<string, string>; variable: string }> = [
        { args: ['audit'], env: { HOLD_TTL_SECONDS: 'soon' }, variable: 'HOLD_TTL_SECONDS' },
        { args: ['sweep', '--once'], env: { SWEEP_BATCH_MAX: '0' }, variable: 'SWEEP_BATCH_MAX' },
        { args: ['seed'], env: { SEED_STOCK: 'many' }, variable: 'SEED_STOCK' },
        { args: ['migrate'], env: { DATABASE_URL: 'oracle://db' }, variable: 'DATABASE_URL' },
      ]
      await expectMisuse(cases.map(({ args, env, variable }) => ({ args, env: { DATABASE_URL: fresh.url, ...env }, stderr: variable })))
    })

    it('audit and sweep on a database that was not migrated exit 3 with one line saying so, not 1 (a violation) with a stack trace', async () => {
      const fresh = await testDatabase(engine.name)
      for (const args of [['audit'], ['sweep', '--once']]) {
        const result = await runCli(args, { DATABASE_URL: fresh.url })
        expect({ args, code: result.code }).toEqual({ args, code: 3 })
        expect(result.stderr).toContain(`flash-sale ${args[0]}:`)
        expect(result.stderr).toContain('npx flash-sale migrate')
        expect(result.stderr).not.toMatch(/\n\s+at /)
      }
    })

    it('an unknown flag on audit, migrate or seed exits 2 instead of running the command', async () => {
      const fresh = await testDatabase(engine.name)
      expect((await runCli(['migrate'], { DATABASE_URL: fresh.url })).code).toBe(0)
      await expectMisuse(
        [
          ['audit', '--fix'],
          ['migrate', '--down'],
          ['seed', '--force'],
        ].map((args) => ({ args, env: { DATABASE_URL: fresh.url }, stderr: args[1]! })),
      )
    })
  })
}

describe('cli without its database', () => {
  it('audit on a SQLite path that does not exist exits 3 and creates no file', async () => {
    const path = join(tmpdir(), `flash-sale-missing-${process.pid}.db`)
    const result = await runCli(['audit'], { DATABASE_URL: `sqlite:${path}` })
    expect(result.code).toBe(3)
    expect(result.stderr).toContain(`no SQLite database at ${path}`)
    expect(existsSync(path)).toBe(false)
  })

  it('audit against a server that is not there exits 3 with one line, for PostgreSQL and MySQL', async () => {
    for (const url of ['postgres://postgres@127.0.0.1:1/test', 'mysql://root@127.0.0.1:1/test']) {
      const result = await runCli(['audit'], { DATABASE_URL: url })
      expect({ url, code: result.code }).toEqual({ url, code: 3 })
      expect(result.stderr).toContain('flash-sale audit:')
      expect(result.stderr).not.toMatch(/\n\s+at /)
    }
  })
})
