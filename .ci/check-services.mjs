// Fails when a server that CI's tests need is unreachable, naming it.
import net from 'node:net'

const services = [
  ['PostgreSQL', process.env.TEST_POSTGRES_URL],
  ['MariaDB', process.env.TEST_MYSQL_URL],
  ['Redis', process.env.TEST_REDIS_URL],
]

let failed = false
for (const [name, url] of services) {
  if (!url) continue
  const { hostname, port } = new URL(url)
  const ok = await new Promise((resolve) => {
    const socket = net.connect({ host: hostname, port: Number(port), timeout: 3000 })
    socket.once('connect', () => (socket.destroy(), resolve(true)))
    socket.once('error', () => resolve(false))
    socket.once('timeout', () => (socket.destroy(), resolve(false)))
  })
  console.log(`${name} at ${hostname}:${port}: ${ok ? 'reachable' : 'UNREACHABLE'}`)
  if (!ok) failed = true
}
process.exit(failed ? 1 : 0)
