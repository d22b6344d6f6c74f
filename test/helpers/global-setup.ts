// Builds dist/ once: multi-process tests spawn the compiled server, exactly what `npm start` runs.
import { execFileSync } from 'node:child_process'

export default function setup(): void {
  execFileSync('npx', ['tsc', '-p', 'tsconfig.build.json'], { stdio: 'inherit' })
  const skipped = [
    ['postgres', 'TEST_POSTGRES_URL'],
    ['mysql', 'TEST_MYSQL_URL'],
  ].filter(([, variable]) => !process.env[variable!])
  for (const [engine, variable] of skipped) console.log(`[engines] ${engine} tests skipped: ${variable} is not set`)
}
