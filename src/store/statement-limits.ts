// Which multi-row statements each batch-size variable feeds, and so how large a batch one
// statement can carry on an engine: start-up (config.ts) refuses a batch size whose largest
// statement would exceed engine.statementParametersMax, since it would fail only at run time.
// A new statement whose rows grow with a batch joins its variable's list here.
import type { EngineName } from './engines/engine.js'
import { engines } from './engines/index.js'
import { insertHoldsShape } from './hot-sql.js'
import { deleteExpiredKeysShape, freeKeysShape, insertKeysShape, readKeysShape } from './idempotency-keys.js'
import {
  buyerUnitsShape,
  freeHoldKeysShape,
  holdsByIdShape,
  readHoldKeysShape,
  insertOrdersShape,
  insertPaymentEventsShape,
  moveStatusShape,
  paymentEventsByKeyShape,
  waitingPaymentEventsShape,
} from './kysely-tx.js'
import { rowsThatFit, type StatementShape } from './statement-shape.js'

export type BatchVariable = 'HOLD_BATCH_MAX' | 'ORDER_BATCH_MAX' | 'WEBHOOK_BATCH_MAX' | 'SWEEP_BATCH_MAX'

// Orders read, free (when expired) and store a batch's keys in one statement each.
const keyStatements = [readKeysShape, freeKeysShape, insertKeysShape]

export const batchStatements: Record<BatchVariable, readonly StatementShape[]> = {
  // A batch of holds is inserted, with its keys, by one statement; a limited product counts its
  // buyers' units in one; the holds keeping its keys are read, and the expired ones freed, in one.
  HOLD_BATCH_MAX: [insertHoldsShape, buyerUnitsShape, readHoldKeysShape, freeHoldKeysShape],
  // A batch of orders reads its holds, converts them, inserts the orders and reads the payments
  // waiting on them, each in one statement.
  ORDER_BATCH_MAX: [holdsByIdShape, moveStatusShape, insertOrdersShape, waitingPaymentEventsShape, ...keyStatements],
  // A batch of webhooks reads its keys' stored events (and the holds of those waiting) and
  // inserts its new events, each in one statement.
  WEBHOOK_BATCH_MAX: [paymentEventsByKeyShape, holdsByIdShape, insertPaymentEventsShape],
  // A sweep expires up to this many lapsed holds (or orders) of a product in one statement, reads
  // the payments waiting on those holds, and deletes up to this many expired keys in one.
  SWEEP_BATCH_MAX: [moveStatusShape, waitingPaymentEventsShape, deleteExpiredKeysShape],
}

export interface BatchLimit {
  rowsMax: number
  // The statement that sets the limit, and what it needs.
  statement: string
  parametersPerRow: number
  statementParametersMax: number
}

// The largest batch every statement of the variable can carry on the engine; undefined when no
// statement's parameters grow with the batch.
export function batchLimit(engineName: EngineName, variable: BatchVariable): BatchLimit | undefined {
  const engine = engines[engineName]
  let tightest: BatchLimit | undefined
  for (const shape of batchStatements[variable]) {
    const rowsMax = rowsThatFit(shape, engine)
    if (rowsMax === Number.POSITIVE_INFINITY || (tightest && tightest.rowsMax <= rowsMax)) continue
    const { perRow } = shape.parameters(engine)
    tightest = { rowsMax, statement: shape.statement, parametersPerRow: perRow, statementParametersMax: engine.statementParametersMax }
  }
  return tightest
}
