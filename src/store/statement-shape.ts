// How many parameters a multi-row statement takes, declared next to each such statement: what
// start-up checks batch sizes against (statement-limits.ts).
import type { Engine } from './engines/engine.js'

export interface StatementShape {
  // What the statement does, for the start-up error that names it.
  readonly statement: string
  // On this engine: the parameters every execution has, and those each row adds.
  parameters(engine: Engine): { fixed: number; perRow: number }
}

// The most rows one statement of this shape can carry on the engine.
export function rowsThatFit(shape: StatementShape, engine: Engine): number {
  const { fixed, perRow } = shape.parameters(engine)
  if (perRow === 0) return fixed <= engine.statementParametersMax ? Number.POSITIVE_INFINITY : 0
  return Math.max(0, Math.floor((engine.statementParametersMax - fixed) / perRow))
}

// A statement with one parameter per row (an id in an IN list) besides `fixed` others.
export function inListShape(statement: string, fixed: number): StatementShape {
  return { statement, parameters: () => ({ fixed, perRow: 1 }) }
}
