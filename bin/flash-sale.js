#!/usr/bin/env node
// The command line runs the compiled code; `npm install` builds it (the `prepare` script).
import { runCli } from '../dist/cli/main.js'

process.exitCode = await runCli(process.argv.slice(2))
