// Imports in src/ point down the layers only (ARCHITECTURE.md): no module reaches itself through
// its imports, type-only imports included.
import { readdirSync, readFileSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import { describe, expect, it } from 'vitest'

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name)
    return entry.isDirectory() ? sourceFiles(path) : entry.name.endsWith('.ts') ? [resolve(path)] : []
  })
}

// Every cycle found by a depth-first walk, as the chain of files from one back to itself.
function importCycles(graph: ReadonlyMap<string, readonly string[]>): string[][] {
  const state = new Map<string, 'open' | 'done'>()
  const stack: string[] = []
  const cycles: string[][] = []
  const visit = (file: string): void => {
    state.set(file, 'open')
    stack.push(file)
    for (const next of graph.get(file) ?? []) {
      if (state.get(next) === 'open') cycles.push([...stack.slice(stack.indexOf(next)), next])
      else if (!state.has(next)) visit(next)
    }
    stack.pop()
    state.set(file, 'done')
  }
  for (const file of graph.keys()) if (!state.has(file)) visit(file)
  return cycles
}

function importGraph(root: string): Map<string, string[]> {
  const files = new Set(sourceFiles(root))
  const graph = new Map<string, string[]>()
  for (const file of files) {
    const text = readFileSync(file, 'utf8')
    const targets = [...text.matchAll(/(?:import|export)\s[^'"]*?from\s+['"](\.[^'"]+)['"]/g)].map((match) => resolve(dirname(file), match[1]!.replace(/\.js$/, '.ts')))
    graph.set(
      file,
      targets.filter((target) => files.has(target)),
    )
  }
  return graph
}

describe('imports in src/', () => {
  it('finds a cycle where there is one (the check itself)', () => {
    const graph = new Map([
      ['a', ['b']],
      ['b', ['c']],
      ['c', ['a']],
      ['d', ['a']],
    ])
    expect(importCycles(graph)).toEqual([['a', 'b', 'c', 'a']])
  })

  it('has no import cycle', () => {
    const root = resolve('src')
    const graph = importGraph(root)
    expect(graph.size).toBeGreaterThan(40)
    expect(importCycles(graph).map((cycle) => cycle.map((file) => relative(root, file)).join(' -> '))).toEqual([])
  })
})
