// Proves that with REDIS_URL set, per-client rate limits are shared by every server process:
// two processes on one database together admit the limit, not twice it.
import { Redis } from 'ioredis'
import { describe, expect, it } from 'vitest'
import { request } from './helpers/http.js'
import { startCluster } from './helpers/servers.js'

const redisUrl = process.env.TEST_REDIS_URL

describe.skipIf(!redisUrl)('redis: shared rate limits', () => {
  it('two processes share one read limit of 5 per minute: the 6th read anywhere is 429 with Retry-After', async () => {
    const redis = new Redis(redisUrl!)
    const keys = await redis.keys('flash-sale:rate:*')
    if (keys.length > 0) await redis.del(...keys)
    await redis.quit()
    const cluster = await startCluster('sqlite', { processes: 2, env: { REDIS_URL: redisUrl!, RATE_LIMIT_READ_PER_MIN: '5' } })
    const statuses: number[] = []
    for (let index = 0; index < 8; index++) {
      const reply = await request(cluster.servers[index % 2]!.baseUrl, 'GET', `/api/products/${cluster.productId}`)
      statuses.push(reply.status)
      if (reply.status === 429) {
        expect(reply.body.code).toBe('rate_limited')
        expect(Number(reply.headers.get('retry-after'))).toBeGreaterThan(0)
      }
    }
    expect(statuses).toEqual([200, 200, 200, 200, 200, 429, 429, 429])
  })
})
