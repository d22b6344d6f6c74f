// Summarises V8 CPU profiles (`node --cpu-prof`, e.g. the files BENCH_CPU_PROF_DIR collects):
// the functions with the most self time, and self time grouped by where the code lives (our
// dist/, each package in node_modules, Node's internals, GC, idle), so one can see whether a
// hot path spends its CPU in JSON and HTTP, in the database driver, or waiting.
//
//   npx tsx bench/profile-summary.ts <file.cpuprofile | directory> [--top 30]
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { basename, join } from 'node:path'

interface CallFrame {
  functionName: string
  url: string
  lineNumber: number
}

interface ProfileNode {
  id: number
  callFrame: CallFrame
  children?: number[]
}

interface CpuProfile {
  nodes: ProfileNode[]
  startTime: number
  endTime: number
  samples: number[]
  timeDeltas: number[]
}

const topDefault = 30

function usage(): never {
  console.error('usage: npx tsx bench/profile-summary.ts <file.cpuprofile | directory> [--top N]')
  process.exit(2)
}

function profileFiles(target: string): string[] {
  if (statSync(target).isDirectory()) {
    return readdirSync(target)
      .filter((name) => name.endsWith('.cpuprofile'))
      .map((name) => join(target, name))
  }
  return [target]
}

// Where a frame's code lives: a package, our own code, Node itself, or V8's pseudo-frames.
function placeOf(frame: CallFrame): string {
  const { url, functionName } = frame
  if (!url) {
    if (functionName === '(idle)') return '(idle)'
    if (functionName === '(garbage collector)') return '(garbage collector)'
    if (functionName === '(program)') return '(program: native, not attributed)'
    return '(native)'
  }
  const modules = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url)
  if (modules) return modules[1] ?? url
  if (url.startsWith('node:')) return `node:${url.slice(5).split('/')[0] === 'internal' ? url.slice(5).split('/').slice(0, 2).join('/') : url.slice(5)}`
  const dist = /\/dist\/(.+)$/.exec(url)
  if (dist) return `app: ${dist[1]}`
  return url
}

function label(frame: CallFrame): string {
  const name = frame.functionName || '(anonymous)'
  if (!frame.url) return name
  const where = frame.url
    .replace(/^file:\/\//, '')
    .replace(/^.*node_modules\//, '')
    .replace(/^.*\/dist\//, 'dist/')
  return `${name}  ${where}:${frame.lineNumber + 1}`
}

function main(): void {
  const args = process.argv.slice(2)
  const target = args.find((arg) => !arg.startsWith('--'))
  if (!target) usage()
  const topIndex = args.indexOf('--top')
  const top = topIndex >= 0 ? Number(args[topIndex + 1]) : topDefault
  if (!Number.isInteger(top) || top < 1) usage()

  const selfByFunction = new Map<string, number>()
  const selfByPlace = new Map<string, number>()
  // Inclusive time of our own functions (dist/): the sample's whole stack, each function once.
  const inclusiveApp = new Map<string, number>()
  let totalUs = 0
  let idleUs = 0
  const files = profileFiles(target)
  for (const file of files) {
    const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile
    const byId = new Map(profile.nodes.map((node) => [node.id, node]))
    const parentOf = new Map<number, number>()
    for (const node of profile.nodes) for (const child of node.children ?? []) parentOf.set(child, node.id)
    let fileUs = 0
    for (const [index, nodeId] of profile.samples.entries()) {
      const deltaUs = profile.timeDeltas[index] ?? 0
      const node = byId.get(nodeId)
      if (!node || deltaUs <= 0) continue
      fileUs += deltaUs
      const place = placeOf(node.callFrame)
      if (place === '(idle)') {
        idleUs += deltaUs
        continue
      }
      const key = label(node.callFrame)
      selfByFunction.set(key, (selfByFunction.get(key) ?? 0) + deltaUs)
      selfByPlace.set(place, (selfByPlace.get(place) ?? 0) + deltaUs)
      const seen = new Set<string>()
      for (let id: number | undefined = nodeId; id !== undefined; id = parentOf.get(id)) {
        const frame = byId.get(id)?.callFrame
        if (!frame || !/\/dist\//.test(frame.url)) continue
        const name = label(frame)
        if (seen.has(name)) continue
        seen.add(name)
        inclusiveApp.set(name, (inclusiveApp.get(name) ?? 0) + deltaUs)
      }
    }
    totalUs += fileUs
    console.log(`${basename(file)}: ${(fileUs / 1e6).toFixed(1)} s sampled`)
  }
  const busyUs = totalUs - idleUs
  const pct = (us: number): string => `${((100 * us) / Math.max(busyUs, 1)).toFixed(1).padStart(5)}%`
  console.log(
    `\n${files.length} profile(s): ${(totalUs / 1e6).toFixed(1)} s sampled, ${(idleUs / 1e6).toFixed(1)} s idle (${((100 * idleUs) / Math.max(totalUs, 1)).toFixed(0)}%), ${(busyUs / 1e6).toFixed(1)} s busy`,
  )
  console.log('\nSelf time by place (share of busy time):')
  for (const [place, us] of [...selfByPlace.entries()].sort((a, b) => b[1] - a[1]).slice(0, 25)) console.log(`  ${pct(us)}  ${place}`)
  console.log(`\nTop ${top} functions by self time (share of busy time):`)
  for (const [name, us] of [...selfByFunction.entries()].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`  ${pct(us)}  ${name}`)
  console.log('\nOur functions by inclusive time (share of busy time):')
  for (const [name, us] of [...inclusiveApp.entries()].sort((a, b) => b[1] - a[1]).slice(0, 20)) console.log(`  ${pct(us)}  ${name}`)
}

main()
