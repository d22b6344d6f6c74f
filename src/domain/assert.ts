// Assertions guard invariants (bugs), never expected failures. One fact per call, so a failure names it.
export class AssertionError extends Error {
  override name = 'AssertionError'
}

export function assert(condition: unknown, fact: string): asserts condition {
  if (!condition) throw new AssertionError(`invariant violated: ${fact}`)
}
