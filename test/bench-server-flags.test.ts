// The bench starts the server with the node flags of package.json's start script, so its figures
// are those of `npm start` (the young-generation size changes plain holds/s by about 20%).
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { startScriptNodeFlags } from '../bench/server-process.js'

function packageWithStart(start: string): string {
  const path = join(mkdtempSync(join(tmpdir(), 'start-flags-')), 'package.json')
  writeFileSync(path, JSON.stringify({ scripts: { start } }))
  return path
}

describe('bench server: the start script flags', () => {
  it('reads the flags between node and dist/main.js, after the build step or without one', () => {
    expect(startScriptNodeFlags(packageWithStart('tsc -b tsconfig.build.json && node --max-semi-space-size=64 --stack-size=2000 dist/main.js'))).toEqual([
      '--max-semi-space-size=64',
      '--stack-size=2000',
    ])
    expect(startScriptNodeFlags(packageWithStart('node dist/main.js'))).toEqual([])
  })

  it('refuses a start script of another form rather than run the bench without its flags', () => {
    expect(() => startScriptNodeFlags(packageWithStart('NODE_OPTIONS=--x node dist/main.js --port 1'))).toThrow(/does not end in/)
    expect(() => startScriptNodeFlags(packageWithStart('tsx src/main.ts'))).toThrow(/does not end in/)
  })

  it("finds this repository's young-generation setting", () => {
    expect(startScriptNodeFlags().some((flag) => flag.startsWith('--max-semi-space-size='))).toBe(true)
  })
})
