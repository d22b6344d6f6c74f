// The deterministic simulation (test/sim) on mysql: seeded random holds, releases, orders,
// webhooks (duplicate, concurrent, reordered, early, late, failed, wrong amount), clock advances
// across the TTLs, sweeps and restarts that abandon requests in flight, each answer compared with
// the reference model (test/sim/suite.ts).
import { simulationSuite } from './sim/suite.js'

simulationSuite('mysql')
