// A loopback port nobody listens on right now, for the servers the bench and the tests start
// (the service, throwaway databases). The OS picks it; another process may still take it before
// the caller binds, which a start-up timeout then reports.
import { createServer } from 'node:net'

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      const port = typeof address === 'object' && address ? address.port : 0
      server.close(() => resolve(port))
    })
  })
}
