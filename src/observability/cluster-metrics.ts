// Service-wide metrics with WORKERS=N (SPEC §6): a scrape of /metrics, answered by whichever
// worker took the connection, reports every worker's counters and histograms summed, so a
// counter another worker incremented moves too. The answering worker asks the primary; the
// primary asks every live worker for its registry (as JSON), sums them with prom-client's own
// aggregation (AggregatorRegistry.aggregate: counters and histograms summed, each metric's
// declared aggregator otherwise), and sends the result back. Gauges read from the database are
// not part of this: the answering worker reads them once per scrape, so they are never summed.
import cluster, { type Worker } from 'node:cluster'
import { AggregatorRegistry, type MetricObjectWithValues, type MetricValue, type Registry } from 'prom-client'

export type MetricsJson = MetricObjectWithValues<MetricValue<string>>[]

export interface ProcessMetrics {
  metrics: MetricsJson
  // How many processes' registries were summed.
  processes: number
}

// Where a scrape gets the counters and histograms of the whole service.
export interface MetricsSource {
  collect(): Promise<ProcessMetrics>
  // The same, as Prometheus text.
  scrape(): Promise<{ text: string; processes: number }>
}

// A primary waits this long for the workers' registries: a worker that is exiting, or stuck, is
// left out of that scrape rather than holding every scrape (and a worker's request) hostage.
export const workerReportTimeoutMs = 2_000
// A worker waits this long for the primary's answer, then answers with its own registry only.
export const primaryAnswerTimeoutMs = 4_000

// Each worker has at most one collect request out at a time (scrapes share it), so this is only
// reached if workers keep timing out and asking again; beyond it a request is dropped and that
// worker answers from its own registry after its timeout.
const collectRequestsMax = 1_024

const collectRequest = 'flash-sale:metrics:collect'
const collectAnswer = 'flash-sale:metrics:collected'
const reportRequest = 'flash-sale:metrics:report'
const reportAnswer = 'flash-sale:metrics:reported'

interface Message {
  type: string
  requestId: number
  metrics?: MetricsJson
  processes?: number
}

function isMessage(value: unknown): value is Message {
  return typeof value === 'object' && value !== null && typeof (value as Message).type === 'string' && typeof (value as Message).requestId === 'number'
}

// One process, or a worker of a primary that does not aggregate (tests): its own registry.
export function localMetricsSource(registry: Registry): MetricsSource {
  return {
    collect: async () => ({ metrics: await registry.getMetricsAsJSON(), processes: 1 }),
    scrape: async () => ({ text: await registry.metrics(), processes: 1 }),
  }
}

// In a worker: answers the primary's requests for this worker's registry, and asks the primary
// for the service-wide sum when a scrape arrives. Concurrent scrapes share one request, so a
// burst of scrapes costs one round of messages.
export function clusterWorkerMetricsSource(registry: Registry): MetricsSource {
  if (!cluster.isWorker || !process.send) return localMetricsSource(registry)
  let nextRequestId = 0
  const pending = new Map<number, (answer: ProcessMetrics | undefined) => void>()
  process.on('message', (message: unknown) => {
    if (!isMessage(message)) return
    if (message.type === reportRequest) {
      registry.getMetricsAsJSON().then(
        (metrics) => process.send?.({ type: reportAnswer, requestId: message.requestId, metrics }),
        () => process.send?.({ type: reportAnswer, requestId: message.requestId, metrics: [] }),
      )
    }
    if (message.type === collectAnswer) {
      const resolve = pending.get(message.requestId)
      pending.delete(message.requestId)
      resolve?.(message.metrics ? { metrics: message.metrics, processes: message.processes ?? 1 } : undefined)
    }
  })

  let inFlight: Promise<ProcessMetrics> | undefined
  const ask = async (): Promise<ProcessMetrics> => {
    const requestId = nextRequestId++
    const answer = await new Promise<ProcessMetrics | undefined>((resolve) => {
      const timer = setTimeout(() => {
        pending.delete(requestId)
        resolve(undefined)
      }, primaryAnswerTimeoutMs)
      timer.unref()
      pending.set(requestId, (value) => {
        clearTimeout(timer)
        resolve(value)
      })
      process.send!({ type: collectRequest, requestId })
    })
    // Without the primary (it is gone, or busy), this worker's own counters are still true.
    return answer ?? { metrics: await registry.getMetricsAsJSON(), processes: 1 }
  }
  const collect = (): Promise<ProcessMetrics> => {
    inFlight ??= ask().finally(() => {
      inFlight = undefined
    })
    return inFlight
  }
  return {
    collect,
    async scrape() {
      const { metrics, processes } = await collect()
      return { text: await AggregatorRegistry.aggregate([metrics]).metrics(), processes }
    },
  }
}

// In the primary: serves the workers' collect requests. One gathering at a time: requests that
// arrive while one is under way are answered by the next, which starts after they arrived, so
// no scrape is answered with counts older than its request.
export function startClusterMetricsPrimary(): { stop(): void } {
  let nextReportId = 0
  const reports = new Map<number, { expected: Set<number>; received: MetricsJson[]; finish: () => void }>()
  let waiting: Array<{ worker: Worker; requestId: number }> = []
  let gathering = false

  const gather = async (): Promise<ProcessMetrics> => {
    const workers = Object.values(cluster.workers ?? {}).filter((worker): worker is Worker => worker !== undefined && worker.isConnected())
    const reportId = nextReportId++
    const received: MetricsJson[] = []
    await new Promise<void>((resolve) => {
      const expected = new Set(workers.map((worker) => worker.id))
      const timer = setTimeout(() => finish(), workerReportTimeoutMs)
      const finish = (): void => {
        clearTimeout(timer)
        reports.delete(reportId)
        resolve()
      }
      reports.set(reportId, { expected, received, finish })
      for (const worker of workers) worker.send({ type: reportRequest, requestId: reportId })
      if (expected.size === 0) finish()
    })
    const metrics = received.length > 0 ? await AggregatorRegistry.aggregate(received).getMetricsAsJSON() : []
    return { metrics: metrics as MetricsJson, processes: received.length }
  }

  const pump = async (): Promise<void> => {
    if (gathering) return
    gathering = true
    try {
      while (waiting.length > 0) {
        const requesters = waiting
        waiting = []
        const result = await gather()
        for (const { worker, requestId } of requesters) {
          if (worker.isConnected()) worker.send({ type: collectAnswer, requestId, metrics: result.metrics, processes: result.processes })
        }
      }
    } finally {
      gathering = false
    }
  }

  const onMessage = (worker: Worker, message: unknown): void => {
    if (!isMessage(message)) return
    if (message.type === collectRequest) {
      if (waiting.length >= collectRequestsMax) return
      waiting.push({ worker, requestId: message.requestId })
      void pump()
    }
    if (message.type === reportAnswer) {
      const report = reports.get(message.requestId)
      if (!report || !report.expected.delete(worker.id)) return
      report.received.push(message.metrics ?? [])
      if (report.expected.size === 0) report.finish()
    }
  }
  // A worker that exits during a gathering will not report: stop waiting for it at once.
  const onExit = (worker: Worker): void => {
    for (const report of reports.values()) {
      if (report.expected.delete(worker.id) && report.expected.size === 0) report.finish()
    }
  }
  cluster.on('message', onMessage)
  cluster.on('exit', onExit)
  return {
    stop: () => {
      cluster.off('message', onMessage)
      cluster.off('exit', onExit)
    },
  }
}
