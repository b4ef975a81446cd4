#!/usr/bin/env node
// The reference server: @y/websocket-server 0.1.1 (the yjs-13 build), in memory, as its own
// `bin/server.js` runs it without YPERSISTENCE. Prints "listening on http://HOST:PORT".
//   node y-websocket-server.mjs [--port 0]
import http from 'node:http'
import { WebSocketServer } from 'ws'
import { setupWSConnection } from '@y/websocket-server/utils'

const args = process.argv.slice(2)
const i = args.indexOf('--port')
const port = i >= 0 ? Number(args[i + 1]) : 0

const server = http.createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/plain' })
  res.end('okay')
})
const wss = new WebSocketServer({ noServer: true })
wss.on('connection', setupWSConnection)
server.on('upgrade', (req, socket, head) => {
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req))
})
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`listening on http://127.0.0.1:${server.address().port}\n`)
})
process.on('SIGTERM', () => process.exit(0))
process.on('SIGINT', () => process.exit(0))
