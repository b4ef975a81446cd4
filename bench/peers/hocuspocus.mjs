#!/usr/bin/env node
// Hocuspocus 3.x with its defaults (in memory: no persistence extension), quiet.
// Prints "listening on http://HOST:PORT".
//   node hocuspocus.mjs [--port 0]
import { Server } from '@hocuspocus/server'

const args = process.argv.slice(2)
const i = args.indexOf('--port')
const port = i >= 0 ? Number(args[i + 1]) : 0

const server = new Server({ port, address: '127.0.0.1', quiet: true })
await server.listen()
process.stdout.write(`listening on http://127.0.0.1:${server.address.port}\n`)
