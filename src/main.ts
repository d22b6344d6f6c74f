// `npm start` entry point.
import { startServer } from './server.js'

// It takes no arguments: `node dist/main.js sweep --once` started a whole server (the fourth
// probe), where the operator meant the command line.
if (process.argv.length > 2) {
  console.error(`dist/main.js serves the API and takes no arguments (got: ${process.argv.slice(2).join(' ')}); the command line is npx flash-sale <command>`)
  process.exit(2)
}
await startServer()
