// Time is an argument everywhere in the domain, so tests advance a clock instead of sleeping.
export interface Clock {
  now(): Date
}

export const systemClock: Clock = { now: () => new Date() }

export class ManualClock implements Clock {
  private epochMs: number
  constructor(start: Date = new Date()) {
    this.epochMs = start.getTime()
  }
  now(): Date {
    return new Date(this.epochMs)
  }
  advanceMs(durationMs: number): void {
    this.epochMs += durationMs
  }
}

export function addMs(instant: Date, durationMs: number): Date {
  return new Date(instant.getTime() + durationMs)
}
