#!/usr/bin/env node
// Stand-in for `ripple serve` built on the yjs-13 reference server (@y/websocket-server@0.1.1).
// Same CLI and stdout contract as ripple, so the suite can be validated against it:
//   node reference-server.mjs serve --host 127.0.0.1 --port 0 --data-dir DIR
// It treats the whole URL path as the room name (so /ROOM and /parties/main/ROOM both work),
// does NOT reassemble y-pk-batch chunks, does NOT close on malformed frames and does not persist.
import http from 'node:http'
import { WebSocketServer } from 'ws'
import { setupWSConnection } from '@y/websocket-server/utils'

const args = process.argv.slice(2)
if (args[0] === 'serve') args.shift()
const opt = (name, dflt) => {
  const i = args.indexOf(name)
  return i >= 0 ? args[i + 1] : dflt
}
const host = opt('--host', '127.0.0.1')
const port = Number(opt('--port', '0'))

const server = http.createServer((req, res) => {
  if (req.url === '/healthz') {
    res.writeHead(200, { 'content-type': 'text/plain' })
    res.end('ok')
    return
  }
  res.writeHead(404)
  res.end()
})
const wss = new WebSocketServer({ noServer: true })
wss.on('connection', setupWSConnection)
server.on('upgrade', (req, socket, head) => {
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req))
})
server.listen(port, host, () => {
  const addr = server.address()
  process.stdout.write(`ripple listening on http://${host}:${addr.port}\n`)
})
process.on('SIGTERM', () => {
  process.stderr.write('reference-server: SIGTERM, shutting down\n')
  for (const ws of wss.clients) ws.close(1001, 'server shutting down')
  server.close()
  setTimeout(() => process.exit(0), 100)
})
