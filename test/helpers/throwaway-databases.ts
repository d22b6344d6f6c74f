// Private database servers that a fault test may stop, kill and restart at will: a PostgreSQL
// cluster made with initdb and run with pg_ctl as the `postgres` user, and a MariaDB made with
// mariadb-install-db and run as a child mariadbd, each on a spare port with its socket and data
// in a temporary folder. The shared servers on 5432/3306 are never touched. Every server is
// killed when the test process exits, even after a failed test, and its folder removed.
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { chownSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import mysql from 'mysql2/promise'
import pg from 'pg'
import { freePort } from '../../dev/free-port.js'

export type StopMode = 'fast' | 'immediate'

export interface ThrowawayServer {
  engine: 'postgres' | 'mysql'
  // Admin URL of the server (a database named `test` exists on it).
  url: string
  port: number
  // fast: the server's own clean shutdown (sessions are told, 57P01 / a closed socket);
  // immediate: PostgreSQL's crash-like stop (SIGQUIT, recovery on start) / SIGKILL for MariaDB.
  stop(mode: StopMode): Promise<void>
  start(): Promise<void>
  reachable(): Promise<boolean>
  // SIGSTOP to every process of the server: it keeps its sockets open and answers nothing (a
  // stalled server, a paused VM); thaw() sends SIGCONT. destroy() thaws first.
  freeze(): void
  thaw(): void
  // Stops and removes everything; safe to call twice.
  destroy(): Promise<void>
}

// How long a start may take before the test fails (recovery after an immediate stop included).
const startTimeoutMs = 120_000

async function pollUntilReachable(what: string, probe: () => Promise<void>, timeoutMs = startTimeoutMs): Promise<void> {
  const deadlineMs = Date.now() + timeoutMs
  let lastError: unknown
  for (;;) {
    try {
      await probe()
      return
    } catch (error) {
      lastError = error
    }
    if (Date.now() > deadlineMs) throw new Error(`${what} not reachable in ${timeoutMs} ms: ${String(lastError)}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

// Servers still running when this process exits are killed here (synchronously: exit handlers
// cannot wait), so a failed or interrupted test never leaves one behind.
const runningPids = new Map<string, () => number | undefined>()
process.once('exit', () => {
  for (const pidOf of runningPids.values()) {
    const pid = pidOf()
    if (pid) {
      try {
        process.kill(pid, 'SIGKILL')
      } catch {
        // Already gone.
      }
    }
  }
})

function postgresBinDir(): string | undefined {
  const root = '/usr/lib/postgresql'
  if (!existsSync(root)) return undefined
  const versions = readdirSync(root)
    .filter((name) => existsSync(join(root, name, 'bin', 'pg_ctl')))
    .sort((a, b) => Number(b) - Number(a))
  return versions[0] ? join(root, versions[0], 'bin') : undefined
}

function hasCommand(command: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

// Why a throwaway server cannot be had on this machine, or undefined when it can.
export function throwawayUnavailable(engine: 'postgres' | 'mysql'): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (to run initdb / mariadbd as a service user)'
  if (engine === 'postgres') return postgresBinDir() && hasCommand('runuser') ? undefined : 'no PostgreSQL server binaries (/usr/lib/postgresql/*/bin)'
  return hasCommand('mariadbd') && hasCommand('mariadb-install-db') ? undefined : 'no mariadbd / mariadb-install-db'
}

const execFileAsync = promisify(execFile)

// Asynchronous, so the test's own requests keep flowing while pg_ctl stops or starts the server.
async function asPostgres(binDir: string, command: string, args: string[]): Promise<string> {
  return (await execFileAsync('runuser', ['-u', 'postgres', '--', join(binDir, command), ...args], { encoding: 'utf8', timeout: startTimeoutMs })).stdout
}

export async function startThrowawayPostgres(): Promise<ThrowawayServer> {
  const binDir = postgresBinDir()
  if (!binDir) throw new Error('no PostgreSQL server binaries')
  const dir = mkdtempSync(join(tmpdir(), 'flash-sale-pg-'))
  chownSync(dir, Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim()), Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim()))
  const dataDir = join(dir, 'data')
  const port = await freePort()
  const key = `postgres:${dir}`
  // fsync off: this cluster is thrown away, and the tests measure the service, not the disk.
  const options = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200`
  await asPostgres(binDir, 'initdb', ['-D', dataDir, '-A', 'trust', '-U', 'postgres', '--no-sync'])
  const url = `postgres://postgres@127.0.0.1:${port}/test`
  const probe = async (database: string): Promise<void> => {
    const client = new pg.Client({ connectionString: `postgres://postgres@127.0.0.1:${port}/${database}`, connectionTimeoutMillis: 5_000 })
    client.on('error', () => {})
    try {
      await client.connect()
      await client.query('select 1')
    } finally {
      await client.end().catch(() => {})
    }
  }
  const postmasterPid = (): number | undefined => {
    try {
      return Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0])
    } catch {
      return undefined
    }
  }
  const start = async (): Promise<void> => {
    await asPostgres(binDir, 'pg_ctl', ['-D', dataDir, '-o', options, '-l', join(dir, 'server.log'), '-W', 'start'])
    runningPids.set(key, postmasterPid)
    await pollUntilReachable('throwaway PostgreSQL', () => probe('postgres'))
  }
  const stop = async (mode: StopMode): Promise<void> => {
    if (!postmasterPid()) return
    await asPostgres(binDir, 'pg_ctl', ['-D', dataDir, '-m', mode, '-w', '-t', '60', 'stop'])
  }
  const stalled = new Stalled()
  let destroyed = false
  const destroy = async (): Promise<void> => {
    if (destroyed) return
    destroyed = true
    stalled.thaw()
    try {
      await stop('immediate')
    } catch {
      const pid = postmasterPid()
      if (pid) process.kill(pid, 'SIGKILL')
    }
    runningPids.delete(key)
    rmSync(dir, { recursive: true, force: true })
  }
  try {
    await start()
    const admin = new pg.Client({ connectionString: `postgres://postgres@127.0.0.1:${port}/postgres` })
    await admin.connect()
    await admin.query('create database test')
    await admin.end()
  } catch (error) {
    await destroy()
    throw error
  }
  const reachable = () =>
    probe('postgres').then(
      () => true,
      () => false,
    )
  const freeze = (): void => {
    const pid = postmasterPid()
    if (pid) stalled.freeze([pid, ...childPids(pid)])
  }
  return { engine: 'postgres', url, port, stop, start, destroy, reachable, freeze, thaw: () => stalled.thaw() }
}

// The throwaway servers a fault test runs against, each skipped when its engine is not selected
// (TEST_POSTGRES_URL, TEST_MYSQL_URL) or, outside CI, when its binaries are missing; on CI a
// missing binary is a failure (the install step is broken), so it is not skipped. `missing` says
// which binary is missing, to be logged.
export function throwawayServers(
  selected: ReadonlySet<string>,
): Array<{ name: 'postgres' | 'mysql'; label: string; start: () => Promise<ThrowawayServer>; skip: boolean; missing: string | undefined }> {
  return [
    { name: 'postgres' as const, label: 'PostgreSQL', start: startThrowawayPostgres },
    { name: 'mysql' as const, label: 'MariaDB', start: startThrowawayMariadb },
  ].map((server) => {
    const missing = throwawayUnavailable(server.name)
    return { ...server, missing, skip: !selected.has(server.name) || (missing !== undefined && !process.env.CI) }
  })
}

// The processes a freeze stopped, continued by thaw (and on the way out, so no stopped server
// outlives a failed test unkillable by pg_ctl).
class Stalled {
  private pids: number[] = []

  freeze(pids: number[]): void {
    this.pids = pids
    for (const pid of pids) process.kill(pid, 'SIGSTOP')
  }

  thaw(): void {
    for (const pid of this.pids) {
      try {
        process.kill(pid, 'SIGCONT')
      } catch {
        // Gone already.
      }
    }
    this.pids = []
  }
}

function childPids(pid: number): number[] {
  try {
    return execFileSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' })
      .split('\n')
      .filter((line) => line.trim() !== '')
      .map(Number)
  } catch {
    return []
  }
}

export async function startThrowawayMariadb(): Promise<ThrowawayServer> {
  const dir = mkdtempSync(join(tmpdir(), 'flash-sale-mariadb-'))
  const dataDir = join(dir, 'data')
  const port = await freePort()
  const key = `mysql:${dir}`
  await execFileAsync('mariadb-install-db', ['--no-defaults', `--datadir=${dataDir}`, '--auth-root-authentication-method=normal', '--user=root', '--skip-test-db'], {
    timeout: startTimeoutMs,
  })
  let child: ChildProcess | undefined
  let exited: Promise<void> = Promise.resolve()
  const url = `mysql://root@127.0.0.1:${port}/test`
  const probe = async (): Promise<void> => {
    const connection = await mysql.createConnection({ host: '127.0.0.1', port, user: 'root', connectTimeout: 5_000 })
    try {
      await connection.query('select 1')
    } finally {
      connection.destroy()
    }
  }
  const start = async (): Promise<void> => {
    // Options for a throwaway: no binary log, a small buffer pool, no flush per commit (the
    // tests measure the service's reaction to a lost server, not the disk).
    const server = spawn(
      'mariadbd',
      [
        '--no-defaults',
        `--datadir=${dataDir}`,
        `--port=${port}`,
        '--bind-address=127.0.0.1',
        `--socket=${join(dir, 'mariadb.sock')}`,
        `--pid-file=${join(dir, 'mariadb.pid')}`,
        `--log-error=${join(dir, 'error.log')}`,
        '--user=root',
        '--skip-log-bin',
        '--innodb-buffer-pool-size=64M',
        '--innodb-flush-log-at-trx-commit=2',
        '--max-connections=300',
      ],
      { stdio: 'ignore' },
    )
    child = server
    exited = new Promise((resolve) => server.once('exit', () => resolve()))
    runningPids.set(key, () => (server.exitCode === null && server.signalCode === null ? server.pid : undefined))
    await pollUntilReachable('throwaway MariaDB', probe)
  }
  const stop = async (mode: StopMode): Promise<void> => {
    const server = child
    if (!server || server.exitCode !== null || server.signalCode !== null) return
    server.kill(mode === 'fast' ? 'SIGTERM' : 'SIGKILL')
    await exited
  }
  const stalled = new Stalled()
  let destroyed = false
  const destroy = async (): Promise<void> => {
    if (destroyed) return
    destroyed = true
    stalled.thaw()
    await stop('immediate')
    runningPids.delete(key)
    rmSync(dir, { recursive: true, force: true })
  }
  try {
    await start()
    const admin = await mysql.createConnection({ host: '127.0.0.1', port, user: 'root' })
    await admin.query('create database test')
    await admin.end()
  } catch (error) {
    await destroy()
    throw error
  }
  const reachable = () =>
    probe().then(
      () => true,
      () => false,
    )
  const freeze = (): void => {
    if (child?.pid !== undefined && child.exitCode === null) stalled.freeze([child.pid])
  }
  return { engine: 'mysql', url, port, stop, start, destroy, reachable, freeze, thaw: () => stalled.thaw() }
}
