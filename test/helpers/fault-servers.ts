// A server process for fault tests: like servers.ts's spawnServer, but with a start-up wait long
// enough for WORKERS=3 on a loaded two-core machine, and a process that failed to start is
// killed rather than left running.
import { spawn } from 'node:child_process'
import { baseEnv } from './app.js'
import type { ServerProcess } from './servers.js'

const startTimeoutMs = 90_000

export async function startServerProcess(databaseUrl: string, env: Record<string, string> = {}, listeningMin = 1): Promise<ServerProcess> {
  const child = spawn(process.execPath, ['dist/main.js'], {
    env: { ...process.env, ...baseEnv(databaseUrl, { LOG_LEVEL: 'info', PORT: '0', ...env }) },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const logLines: string[] = []
  let stderr = ''
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
  let buffered = ''
  const ports: number[] = []
  const port = new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start in ${startTimeoutMs} ms: ${stderr}`)), startTimeoutMs)
    child.stdout!.on('data', (chunk: Buffer) => {
      buffered += chunk.toString()
      const lines = buffered.split('\n')
      buffered = lines.pop() ?? ''
      for (const line of lines) {
        logLines.push(line)
        const match = /"event":"server.listening","port":(\d+)/.exec(line)
        if (match) ports.push(Number(match[1]))
        if (ports.length >= listeningMin) {
          clearTimeout(timer)
          resolve(ports[0]!)
        }
      }
    })
    void exited.then(({ code, signal }) => {
      clearTimeout(timer)
      reject(new Error(`server exited (${code ?? signal}) before listening: ${stderr}`))
    })
  })
  try {
    return { child, baseUrl: `http://127.0.0.1:${await port}`, logLines, exited }
  } catch (error) {
    child.kill('SIGKILL')
    await exited
    throw error
  }
}
