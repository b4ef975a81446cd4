// Shared helpers for the interop suite: start the server under test, connect real JS clients
// (y-websocket's WebsocketProvider, y-partykit's YPartyKitProvider, raw `ws` sockets), poll.
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { isDeepStrictEqual } from 'node:util'
import { test as nodeTest } from 'node:test'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import YPartyKitProvider from 'y-partykit/provider'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import * as syncProtocol from 'y-protocols/sync'

export { Y, WebSocket, WebsocketProvider, YPartyKitProvider }

const HERE = path.dirname(fileURLToPath(import.meta.url))
const REPO_ROOT = path.resolve(HERE, '..', '..')

/** 'ripple' (default) or 'reference' (@y/websocket-server@0.1.1 behind reference-server.mjs). */
export const SERVER_KIND = process.env.INTEROP_SERVER || 'ripple'
export const IS_REFERENCE = SERVER_KIND === 'reference'

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// ---------------------------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------------------------

export function rippleBin () {
  if (process.env.RIPPLE_BIN) return path.resolve(HERE, process.env.RIPPLE_BIN)
  const debug = path.join(REPO_ROOT, 'target', 'debug', 'ripple')
  if (fs.existsSync(debug)) return debug
  const release = path.join(REPO_ROOT, 'target', 'release', 'ripple')
  if (fs.existsSync(release)) return release
  throw new Error(`ripple binary not found (looked at ${debug} and ${release}); build it with ` +
    '`cargo build -p ripple` or set RIPPLE_BIN (or INTEROP_SERVER=reference)')
}

/**
 * The release binary, for tests whose outcome depends on its speed (RIPPLE_RELEASE_BIN, else
 * target/release/ripple if it is built), or null when there is none. A RIPPLE_RELEASE_BIN that
 * does not exist is an error, not a skip.
 */
export function releaseBin () {
  if (process.env.RIPPLE_RELEASE_BIN) {
    const bin = path.resolve(HERE, process.env.RIPPLE_RELEASE_BIN)
    if (!fs.existsSync(bin)) throw new Error(`RIPPLE_RELEASE_BIN=${bin} does not exist`)
    return bin
  }
  const release = path.join(REPO_ROOT, 'target', 'release', 'ripple')
  return fs.existsSync(release) ? release : null
}

/** Servers of this process still running (for cleanup), and every server ever started (for logs). */
const servers = new Set()
const allServers = []
const STDERR_KEEP = 256 * 1024

/**
 * Start the server under test on a free port with a fresh data dir (or `dataDir`), plus
 * `extraArgs` (the reference stand-in ignores flags it does not know), running `bin` (default
 * `rippleBin()`).
 * Resolves once it printed `ripple listening on http://127.0.0.1:PORT` on stdout.
 */
export async function startRipple ({ dataDir, extraArgs = [], env = {}, startTimeoutMs = 20000, bin } = {}) {
  dataDir = dataDir || fs.mkdtempSync(path.join(os.tmpdir(), 'ripple-interop-'))
  const cliArgs = ['serve', '--host', '127.0.0.1', '--port', '0', '--data-dir', dataDir, ...extraArgs]
  let cmd, args
  if (IS_REFERENCE) {
    cmd = process.execPath
    args = [path.join(HERE, 'reference-server.mjs'), ...cliArgs]
  } else {
    cmd = bin || rippleBin()
    args = cliArgs
  }
  const proc = spawn(cmd, args, {
    cwd: HERE,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { RUST_BACKTRACE: '1', ...process.env, ...env }
  })
  const server = {
    kind: SERVER_KIND,
    cmd: [cmd, ...args].join(' '),
    proc,
    dataDir,
    port: 0,
    host: '127.0.0.1',
    stdout: '',
    stderr: '',
    exit: null, // { code, signal } once exited
    get httpUrl () { return `http://127.0.0.1:${this.port}` },
    /** base for WebsocketProvider: ws://127.0.0.1:PORT (room appended as /ROOM) */
    get wsBase () { return `ws://127.0.0.1:${this.port}` },
    /** host for YPartyKitProvider */
    get pkHost () { return `127.0.0.1:${this.port}` },
    stop,
    logs () {
      return `--- ${this.kind} server (${this.cmd}) stderr ---\n${this.stderr}` +
        (this.exit ? `\n--- exited: ${JSON.stringify(this.exit)} ---` : '\n--- (still running) ---')
    }
  }
  servers.add(server)
  allServers.push(server)
  const exited = new Promise((resolve) => {
    proc.on('exit', (code, signal) => {
      server.exit = { code, signal }
      resolve(server.exit)
    })
  })
  server.exited = exited
  proc.stderr.setEncoding('utf8')
  proc.stderr.on('data', (d) => {
    server.stderr += d
    if (server.stderr.length > STDERR_KEEP) server.stderr = server.stderr.slice(-STDERR_KEEP)
  })
  proc.stdout.setEncoding('utf8')
  const listening = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(
      `server did not print its listening line within ${startTimeoutMs} ms\n` +
      `stdout: ${server.stdout}\n${server.logs()}`)), startTimeoutMs)
    proc.stdout.on('data', (d) => {
      server.stdout += d
      const m = /ripple listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(server.stdout)
      if (m && !server.port) {
        server.port = Number(m[1])
        clearTimeout(timer)
        resolve()
      }
    })
    proc.on('error', (err) => { clearTimeout(timer); reject(err) })
    exited.then((ex) => {
      clearTimeout(timer)
      reject(new Error(`server exited before listening: ${JSON.stringify(ex)}\n` +
        `stdout: ${server.stdout}\n${server.logs()}`))
    })
  })
  try {
    await listening
  } catch (e) {
    proc.kill('SIGKILL')
    servers.delete(server)
    throw e
  }

  /** Send `signal` (SIGTERM) and wait for exit; SIGKILL after timeoutMs. Returns {code, signal}. */
  async function stop ({ signal = 'SIGTERM', timeoutMs = 10000 } = {}) {
    if (!server.exit) {
      proc.kill(signal)
      const timer = setTimeout(() => {
        server.stderr += `\n[interop] no exit ${timeoutMs} ms after ${signal}; sending SIGKILL\n`
        server.killedByHarness = true
        proc.kill('SIGKILL')
      }, timeoutMs)
      await exited
      clearTimeout(timer)
    }
    servers.delete(server)
    return server.exit
  }
  return server
}

/** Kill every server this process started that is still running. */
export async function stopAllServers () {
  await Promise.all([...servers].map((s) => s.stop({ timeoutMs: 5000 })))
}

/** Logs of the servers still running and of those started since `allServers[since]`. */
export function serverLogs (since = allServers.length) {
  return allServers.filter((s, i) => i >= since || servers.has(s)).map((s) => s.logs()).join('\n')
}

// A failing test's error carries the stderr of the servers that were running or started
// during the test.
function withLogs (fn) {
  return async (t) => {
    const since = allServers.length
    try {
      return await fn(t)
    } catch (e) {
      const logs = serverLogs(since)
      if (logs && e && typeof e === 'object') {
        try { e.message = `${e.message}\n${logs}` } catch {}
      }
      throw e
    }
  }
}

/** node:test `test`, but a failure carries the server's stderr. Same signatures as node:test. */
export function test (name, opts, fn) {
  if (typeof opts === 'function') { fn = opts; opts = {} }
  return nodeTest(name, opts, withLogs(fn))
}

// ---------------------------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------------------------

/**
 * Poll `predicate` (sync or async) every `intervalMs` until it returns a truthy value, which is
 * returned. Throws after `timeoutMs`; `describe` (string or function) explains what was awaited.
 */
export async function waitFor (predicate, timeoutMs = 5000, { intervalMs = 20, describe } = {}) {
  const deadline = Date.now() + timeoutMs
  let lastErr
  for (;;) {
    try {
      const v = await predicate()
      if (v) return v
    } catch (e) {
      lastErr = e
    }
    if (Date.now() > deadline) {
      const what = typeof describe === 'function' ? describe() : (describe || predicate.toString())
      const err = new Error(`waitFor timed out after ${timeoutMs} ms: ${what}` +
        (lastErr ? `\nlast error: ${lastErr.stack || lastErr}` : ''))
      throw err
    }
    await sleep(intervalMs)
  }
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

let roomCounter = 0
/** A room name unique to this test run; `prefix` stays a prefix of it. */
export function uniqueRoom (prefix = 'room') {
  roomCounter++
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${roomCounter}`
}

const clients = new Set()

/**
 * Client transports:
 *  - 'ws'         y-websocket WebsocketProvider, URL ws://HOST/ROOM
 *  - 'ws-parties' y-websocket WebsocketProvider with base ws://HOST/parties/main (URL .../parties/main/ROOM)
 *  - 'pk'         y-partykit YPartyKitProvider (URL ws://HOST/parties/main/ROOM?_pk=UUID&token=x)
 */
export const TRANSPORTS = ['ws', 'ws-parties', 'pk']

/**
 * Connect a real JS client to `room`. Returns { doc, provider, awareness, kind, room,
 * closeEvents (codes of connection-close events), statuses, destroy() }.
 */
export function connect (server, room, { kind = 'ws', doc = new Y.Doc(), connect = true, ...opts } = {}) {
  let provider
  if (kind === 'ws' || kind === 'ws-parties') {
    const base = kind === 'ws' ? server.wsBase : `${server.wsBase}/parties/main`
    provider = new WebsocketProvider(base, room, doc, {
      WebSocketPolyfill: WebSocket,
      // Node 20 has a global BroadcastChannel: without this, two providers in one process
      // would sync with each other in-process and bypass the server.
      disableBc: true,
      connect,
      ...opts
    })
  } else if (kind === 'pk') {
    provider = new YPartyKitProvider(server.pkHost, room, doc, {
      protocol: 'ws',
      WebSocketPolyfill: WebSocket,
      params: { token: 'x' },
      disableBc: true,
      connect,
      ...opts
    })
  } else {
    throw new Error(`unknown client kind ${kind}`)
  }
  const client = {
    kind,
    room,
    doc,
    provider,
    awareness: provider.awareness,
    closeEvents: [],
    statuses: [],
    destroyed: false,
    destroy () {
      if (this.destroyed) return
      this.destroyed = true
      clients.delete(this)
      provider.destroy()
      doc.destroy() // also destroys the awareness (and its interval timer)
    }
  }
  provider.on('connection-close', (ev) => client.closeEvents.push(ev ? ev.code : null))
  provider.on('status', (ev) => client.statuses.push(ev.status))
  clients.add(client)
  return client
}

export function destroyAllClients () {
  for (const c of [...clients]) c.destroy()
}

/** Wait until the provider received sync step 2 from the server. */
export function synced (client, timeoutMs = 5000) {
  return waitFor(() => client.provider.synced, timeoutMs,
    { describe: `${client.kind} client in room ${client.room} to be synced` })
}

/** Connect and wait for sync. */
export async function connectSynced (server, room, opts) {
  const c = connect(server, room, opts)
  await synced(c)
  return c
}

/** Cleanup for `after` hooks: destroy all clients, then stop all servers. */
export async function cleanup () {
  destroyAllClients()
  await stopAllServers()
}

/**
 * A `ws` WebSocket subclass that counts the y-pk-batch frames it sends, for use as
 * WebSocketPolyfill: `const spy = batchSpy(); connect(server, room, { kind: 'pk', WebSocketPolyfill: spy.WebSocket })`.
 */
export function batchSpy () {
  const seen = { start: 0, end: 0, binaryChunks: 0, inBatch: false, markers: [] }
  seen.WebSocket = class RecordingWebSocket extends WebSocket {
    send (data, ...rest) {
      if (typeof data === 'string' && data.startsWith('y-pk-batch#')) {
        const marker = JSON.parse(data.slice('y-pk-batch#'.length))
        seen.markers.push(marker)
        seen[marker.type]++
        seen.inBatch = marker.type === 'start'
      } else if (seen.inBatch) {
        seen.binaryChunks++
      }
      return super.send(data, ...rest)
    }
  }
  return seen
}

/** Kill a provider's TCP connection without a WebSocket close frame (and without reconnect). */
export function killSocketAbruptly (client) {
  client.provider.shouldConnect = false // the provider must not reconnect and re-announce itself
  const ws = client.provider.ws
  if (!ws || !ws._socket) throw new Error('provider has no open socket')
  // ws.terminate() does exactly `this._socket.destroy()`: the fd is closed, no close frame.
  ws._socket.destroy()
}

// ---------------------------------------------------------------------------------------------
// Document content helpers
// ---------------------------------------------------------------------------------------------

/** Edit Y.Text 'text', Y.Map 'map', Y.Array 'array' and Y.XmlFragment 'xml' of `doc`. */
export function editAllTypes (doc, tag) {
  doc.transact(() => {
    doc.getText('text').insert(doc.getText('text').length, `[${tag}]`)
    doc.getMap('map').set(tag, { by: tag, n: 1 })
    doc.getArray('array').push([tag, { nested: [tag] }])
    const el = new Y.XmlElement('p')
    el.setAttribute('data-tag', tag)
    el.insert(0, [new Y.XmlText(`xml ${tag}`)])
    doc.getXmlFragment('xml').push([el])
  })
}

export function snapshot (doc) {
  return {
    text: doc.getText('text').toString(),
    map: doc.getMap('map').toJSON(),
    array: doc.getArray('array').toJSON(),
    xml: doc.getXmlFragment('xml').toString()
  }
}

/** State vector as a sorted array of [clientID, clock] (encodeStateVector's order is not canonical). */
export function stateVector (doc) {
  return [...Y.decodeStateVector(Y.encodeStateVector(doc)).entries()].sort((x, y) => x[0] - y[0])
}

/** Same state vector and same content (map key order ignored). */
export function sameState (a, b) {
  return isDeepStrictEqual(stateVector(a), stateVector(b)) && isDeepStrictEqual(snapshot(a), snapshot(b))
}

// ---------------------------------------------------------------------------------------------
// Raw protocol (for sockets that are not providers)
// ---------------------------------------------------------------------------------------------

export const MSG_SYNC = 0
export const MSG_AWARENESS = 1
export const MSG_AUTH = 2
export const MSG_QUERY_AWARENESS = 3

export function encodeSyncStep1 (doc) {
  const e = encoding.createEncoder()
  encoding.writeVarUint(e, MSG_SYNC)
  syncProtocol.writeSyncStep1(e, doc)
  return encoding.toUint8Array(e)
}

export function encodeUpdateMessage (update) {
  const e = encoding.createEncoder()
  encoding.writeVarUint(e, MSG_SYNC)
  syncProtocol.writeUpdate(e, update)
  return encoding.toUint8Array(e)
}

/** entries: [{ clientID, clock, state }] (state null = removal) */
export function encodeAwarenessMessage (entries) {
  const inner = encoding.createEncoder()
  encoding.writeVarUint(inner, entries.length)
  for (const { clientID, clock, state } of entries) {
    encoding.writeVarUint(inner, clientID)
    encoding.writeVarUint(inner, clock)
    encoding.writeVarString(inner, JSON.stringify(state))
  }
  const e = encoding.createEncoder()
  encoding.writeVarUint(e, MSG_AWARENESS)
  encoding.writeVarUint8Array(e, encoding.toUint8Array(inner))
  return encoding.toUint8Array(e)
}

/** Decode one server frame: { type, syncType?, payload?, awareness? } */
export function decodeMessage (buf) {
  const d = decoding.createDecoder(buf)
  const type = decoding.readVarUint(d)
  if (type === MSG_SYNC) {
    const syncType = decoding.readVarUint(d)
    const payload = decoding.readVarUint8Array(d)
    return { type, syncType, payload, rest: d.arr.length - d.pos }
  }
  if (type === MSG_AWARENESS) {
    const inner = decoding.createDecoder(decoding.readVarUint8Array(d))
    const n = decoding.readVarUint(inner)
    const awareness = []
    for (let i = 0; i < n; i++) {
      const clientID = decoding.readVarUint(inner)
      const clock = decoding.readVarUint(inner)
      const state = JSON.parse(decoding.readVarString(inner))
      awareness.push({ clientID, clock, state })
    }
    return { type, awareness, rest: d.arr.length - d.pos }
  }
  return { type }
}

/**
 * Open a plain `ws` socket. Returns { ws, frames: [{binary, data}], closed: Promise<{code, reason}>,
 * opened: Promise, close() } ; `close` also terminates a socket that does not finish closing.
 */
export function rawConnect (url, { maxPayload } = {}) {
  const ws = new WebSocket(url, maxPayload ? { maxPayload } : undefined)
  const raw = {
    ws,
    frames: [],
    closeInfo: null,
    error: null,
    binaryFrames () { return this.frames.filter((f) => f.binary).map((f) => decodeMessage(f.data)) },
    close () {
      try { ws.terminate() } catch {}
    }
  }
  raw.opened = new Promise((resolve, reject) => {
    ws.once('open', resolve)
    ws.once('error', reject)
  })
  raw.opened.catch(() => {})
  ws.on('error', (e) => { raw.error = e })
  ws.on('message', (data, isBinary) => {
    raw.frames.push({ binary: isBinary, data: isBinary ? new Uint8Array(data) : data.toString() })
  })
  raw.closed = new Promise((resolve) => {
    ws.on('close', (code, reason) => {
      raw.closeInfo = { code, reason: reason.toString() }
      resolve(raw.closeInfo)
    })
  })
  return raw
}

/** Deterministic pseudo-random bytes (xorshift32). */
export function pseudoRandomBytes (n, seed = 0x12345678) {
  const out = new Uint8Array(n)
  let x = seed >>> 0 || 1
  for (let i = 0; i < n; i++) {
    x ^= x << 13; x >>>= 0
    x ^= x >>> 17
    x ^= x << 5; x >>>= 0
    out[i] = x & 0xff
  }
  return out
}

/** Deterministic pseudo-random printable ASCII string of `n` characters. */
export function pseudoRandomText (n, seed = 0x9e3779b9) {
  const bytes = pseudoRandomBytes(n, seed)
  const chars = new Array(n)
  for (let i = 0; i < n; i++) chars[i] = String.fromCharCode(32 + (bytes[i] % 95))
  return chars.join('')
}
