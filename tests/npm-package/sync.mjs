// Two YPartyKitProvider clients sync one room through the server at HOST (argv[2]), and a late
// joiner gets the state from the server. The client packages come from tests/interop (its
// pinned node_modules), so this needs no install of its own.
import { createRequire } from 'node:module'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))
const require = createRequire(path.join(here, '..', 'interop', 'package.json'))
const Y = require('yjs')
const WebSocket = require('ws')
const YPartyKitProvider = require('y-partykit/provider').default

const host = process.argv[2]
if (!host) throw new Error('usage: node sync.mjs HOST:PORT')
const room = `npm-package-${process.pid}`

function client () {
  const doc = new Y.Doc()
  const provider = new YPartyKitProvider(host, room, doc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true
  })
  return { doc, provider, text: doc.getText('t') }
}

async function until (what, cond, ms = 10000) {
  const deadline = Date.now() + ms
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

const a = client()
const b = client()
await until('both synced', () => a.provider.synced && b.provider.synced)
a.text.insert(0, 'hello from the npm package')
await until('b sees a', () => b.text.toString() === 'hello from the npm package')
b.text.insert(0, '> ')
await until('a sees b', () => a.text.toString() === '> hello from the npm package')
const late = client()
await until('late joiner synced', () => late.provider.synced &&
  late.text.toString() === '> hello from the npm package')
for (const c of [a, b, late]) c.provider.destroy()
console.log(`synced ${room} through ${host}`)
process.exit(0)
