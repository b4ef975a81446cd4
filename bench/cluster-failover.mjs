// One kill -9 failover, measured with real y-websocket clients (bench/cluster.sh runs it many
// times): a room owned by node A with a client on A and a forwarded client on node B; A is
// killed; the time until the room takes writes again on B (a fresh client on B is synced, holds
// every edit made before the kill, and an edit it makes is seen by another fresh client).
//
//   node bench/cluster-failover.mjs PORT_A PORT_B PID_A
import { createRequire } from 'node:module'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const require = createRequire(path.join(here, '..', 'tests', 'interop', 'package.json'))
const Y = require('yjs')
const { WebsocketProvider } = require('y-websocket')
const WebSocket = require('ws')

const [portA, portB, pidA] = process.argv.slice(2).map(Number)
const room = `failover-${process.pid}-${Date.now()}`
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

function client (port) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(`ws://127.0.0.1:${port}`, room, doc, {
    WebSocketPolyfill: WebSocket, disableBc: true, maxBackoffTime: 100
  })
  return { doc, provider, items: () => doc.getArray('items').toArray() }
}
async function until (pred, ms, what) {
  const end = Date.now() + ms
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out: ${what}`)
    await sleep(2)
  }
}

const onA = client(portA)
await until(() => onA.provider.synced, 10000, 'client on A synced')
const onB = client(portB)
await until(() => onB.provider.synced, 10000, 'client on B synced')
for (let i = 0; i < 20; i++) onB.doc.getArray('items').push([`before-${i}`])
await until(() => onA.items().length === 20, 10000, 'A saw the edits made on B')
onA.provider.destroy()
onB.provider.destroy()

process.kill(pidA, 'SIGKILL')
const killed = performance.now()
let attempts = 0
for (;;) {
  attempts++
  const fresh = client(portB)
  try {
    await until(() => fresh.provider.synced, 1000, 'fresh client on B synced')
    if (fresh.items().length !== 20) throw new Error(`fresh client sees ${fresh.items().length} of 20 edits`)
    fresh.doc.getArray('items').push(['after'])
    const probe = client(portB)
    await until(() => probe.provider.synced && probe.items().length === 21, 2000, 'probe sees the new edit')
    probe.provider.destroy()
    fresh.provider.destroy()
    break
  } catch (e) {
    fresh.provider.destroy()
    if (performance.now() - killed > 30000) throw e
  }
}
const took = performance.now() - killed
console.log(`failover_ms=${took.toFixed(1)} attempts=${attempts}`)
process.exit(0)
