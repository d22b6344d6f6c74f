// `npm start` entry point.
import { startServer } from './server.js'

await startServer()
