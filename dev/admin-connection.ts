// A short-lived connection outside the service's pools, for making and dropping the scratch
// schemas and databases that the tests and the benchmark run in.
import mysql from 'mysql2/promise'
import pg from 'pg'

const connectTimeoutMs = 5000

export async function withPostgres<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: connectTimeoutMs })
  await client.connect()
  try {
    return await fn(client)
  } finally {
    await client.end()
  }
}

export async function withMysql<T>(url: string, fn: (connection: mysql.Connection) => Promise<T>): Promise<T> {
  const connection = await mysql.createConnection({ uri: url, connectTimeout: connectTimeoutMs })
  try {
    return await fn(connection)
  } finally {
    await connection.end()
  }
}
