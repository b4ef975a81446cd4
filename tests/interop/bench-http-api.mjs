// Requests/s of the HTTP API on a large document: `POST update` (a small edit each, to a room
// whose document is DOC_BYTES) and `GET state` (the whole document each time).
//
//   node tests/interop/bench-http-api.mjs [--bin target/release/ripple] [--mb 1] [--seconds 5]
//                                        [--concurrency 16]
//
// Starts `ripple dev` on a free port with a fresh data directory (strict durability: every
// POST is fsynced before its answer), seeds one room with about DOC_BYTES of text, then runs each
// phase for SECONDS with CONCURRENCY requests in flight. Not part of `npm test`.
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import * as Y from 'yjs'

const args = Object.fromEntries(process.argv.slice(2).reduce((acc, a, i, all) =>
  a.startsWith('--') ? [...acc, [a.slice(2), all[i + 1]]] : acc, []))
const bin = args.bin || 'target/release/ripple'
const mb = Number(args.mb || 1)
const seconds = Number(args.seconds || 5)
const concurrency = Number(args.concurrency || 16)

const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ripple-bench-http-'))
const proc = spawn(bin, ['dev', '--port', '0', '--data-dir', dataDir], { stdio: ['ignore', 'pipe', 'inherit'] })
const port = await new Promise((resolve, reject) => {
  let out = ''
  proc.stdout.on('data', (d) => {
    out += d
    const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(out)
    if (m) resolve(Number(m[1]))
  })
  proc.on('exit', (code) => reject(new Error(`ripple exited (${code})`)))
})
const base = `http://127.0.0.1:${port}/api/v1/rooms/main/bench`

// Seed: ~mb MiB of text in chunks (one update).
const seed = new Y.Doc()
const text = seed.getText('t')
const chunk = 'lorem ipsum dolor sit amet '.repeat(40)
seed.transact(() => {
  while (text.length < mb * 1024 * 1024) text.insert(text.length, chunk)
})
let res = await fetch(`${base}/update`, { method: 'POST', body: Y.encodeStateAsUpdate(seed) })
if (res.status !== 200) throw new Error(`seed: ${res.status} ${await res.text()}`)
const stateBytes = (await (await fetch(`${base}/state`)).arrayBuffer()).byteLength

async function phase (name, request) {
  let done = 0
  let failed = 0
  const latencies = []
  const until = Date.now() + seconds * 1000
  async function worker () {
    while (Date.now() < until) {
      const t0 = performance.now()
      const ok = await request()
      latencies.push(performance.now() - t0)
      if (ok) done++
      else failed++
    }
  }
  const t0 = performance.now()
  await Promise.all(Array.from({ length: concurrency }, worker))
  const secs = (performance.now() - t0) / 1000
  latencies.sort((a, b) => a - b)
  const p = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))].toFixed(1)
  console.log(`${name}: ${(done / secs).toFixed(0)} req/s (${done} ok, ${failed} failed in ${secs.toFixed(1)} s; ` +
    `p50 ${p(0.5)} ms, p99 ${p(0.99)} ms)`)
}

console.log(`document: ${stateBytes} bytes encoded; concurrency ${concurrency}; ${seconds} s per phase; ${bin}`)
// Each POST: a fresh one-character edit from its own client (so each changes the document
// and is stored).
let n = 0
await phase('POST update', async () => {
  const d = new Y.Doc()
  d.getText('t').insert(0, String(n++ % 10))
  const r = await fetch(`${base}/update`, { method: 'POST', body: Y.encodeStateAsUpdate(d) })
  await r.arrayBuffer()
  return r.status === 200
})
await phase('GET state', async () => {
  const r = await fetch(`${base}/state`)
  const body = await r.arrayBuffer()
  return r.status === 200 && body.byteLength >= stateBytes
})
const sv = Buffer.from(Y.encodeStateVector(seed)).toString('base64url')
await phase('GET state?sv= (diff)', async () => {
  const r = await fetch(`${base}/state?sv=${sv}`)
  await r.arrayBuffer()
  return r.status === 200
})
proc.kill('SIGTERM')
fs.rmSync(dataDir, { recursive: true, force: true })
