#!/usr/bin/env node
// The fanout and burst scenarios of ripple-bench, driven by the JS clients people run: every
// client is a real Y.Doc behind y-websocket's WebsocketProvider (ws as its WebSocket), all in
// this one Node process. Same parameters, same definitions and the same figure keys as
// `ripple-bench fanout|burst` (crates/ripple-bench/src/scenario.rs), so `ripple-bench report`
// shows the rows next to the Rust client's.
//
//   node bench/js-load.mjs fanout|burst --url 'ws://127.0.0.1:PORT/{room}' --server-pid PID \
//     --label NAME --name SCENARIO_NAME --json-out FILE \
//     [--rooms N --clients N --rate HZ --duration S --window W]
//     [--connect-timeout 10 --drain-timeout 15 --connect-concurrency 64]
//
// fanout: R rooms x C clients; client 0 of each room writes map `m` key "{writer}.{seq}" = its
//   send time (µs on this process's performance.now() clock) at --rate Hz, writers staggered
//   over the interval, for --duration s. Latency: arrival at each other client's map observer
//   minus the send time.
// burst: R rooms x C clients (at least 2), every client writes as fast as it can with at most
//   --window writes not yet seen by its room neighbour (client local+1), for --duration s.
// Both: server CPU (the pid and its descendants, /proc schedstat, like procstat.rs) from the
//   start of writing to the end of the drain (every write arrived everywhere, or 15 s), divided
//   by deliveries. Errors: connect failures (not synced within --connect-timeout), disconnects
//   (provider status 'disconnected' after sync, before the end), protocol errors (a server
//   message the provider could not handle), missing writes (after the drain), convergence
//   mismatches (state vector differs from the room's writer, client 0).
//
// The URL template: {room} must end the path (y-websocket connects to serverUrl + '/' + room);
// a query after it becomes the provider's `params`, {conn} replaced by a unique connection id
// (PartyKit: ws://HOST/parties/main/{room}?_pk={conn}). Comma-separated URLs (a cluster): a
// room's client 0 uses the first, the others go round-robin over the rest, as ripple-bench does.
//
// What the provider does that ripple-bench's lean client does not, and which the server pays
// for: it sets an awareness state ({}) on connect and renews it every 15 s (the server fans
// those out), offers permessage-deflate (ws's default), and answers the server's sync step 1.
//
// Prints a human summary; appends one JSON line (protocol "yws-js") to --json-out (printed on
// stdout instead when --json-out is not given). Exits non-zero on argument errors only.

import fs from 'node:fs'
import { execFileSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { performance } from 'node:perf_hooks'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'

const CLIENT_ID_BASE = 1_000_000
const MAP = 'm'
const MB = 1024 * 1024

// ---------------------------------------------------------------------------------------------
// Arguments

function usage (msg) {
  if (msg) process.stderr.write(`js-load: ${msg}\n`)
  process.stderr.write(
    'usage: node bench/js-load.mjs fanout|burst --url URL [--server-pid PID] [--label NAME]\n' +
    '         [--name SCENARIO_NAME] [--json-out FILE] [--rooms N] [--clients N] [--rate HZ]\n' +
    '         [--duration S] [--window W] [--connect-timeout S] [--drain-timeout S]\n' +
    '         [--connect-concurrency N]\n')
  process.exit(2)
}

const DEFAULTS = {
  fanout: { rooms: 10, clients: 11, rate: 10, duration: 10 },
  burst: { rooms: 10, clients: 5, duration: 5, window: 16 }
}
const NUMERIC = new Set(['rooms', 'clients', 'rate', 'duration', 'window', 'server-pid',
  'connect-timeout', 'drain-timeout', 'connect-concurrency'])
const STRING = new Set(['url', 'label', 'name', 'json-out'])

function parseArgs (argv) {
  const scenario = argv[0]
  if (!(scenario in DEFAULTS)) usage(`first argument must be fanout or burst, not ${scenario ?? 'nothing'}`)
  const o = {
    scenario,
    url: 'ws://127.0.0.1:1999/{room}',
    label: 'ripple',
    name: scenario,
    jsonOut: null,
    serverPid: null,
    connectTimeout: 10,
    drainTimeout: 15,
    connectConcurrency: 64,
    ...DEFAULTS[scenario]
  }
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i]
    if (!a.startsWith('--')) usage(`unexpected argument ${a}`)
    const [flag, inline] = a.slice(2).split(/=(.*)/s, 2)
    const value = inline ?? argv[++i]
    if (value === undefined) usage(`--${flag} needs a value`)
    const camel = flag.replace(/-(.)/g, (_, c) => c.toUpperCase())
    if (NUMERIC.has(flag)) {
      if (!(flag in DEFAULTS[scenario]) && !['server-pid', 'connect-timeout', 'drain-timeout', 'connect-concurrency'].includes(flag)) {
        usage(`--${flag} is not a ${scenario} option`)
      }
      const n = Number(value)
      if (!Number.isFinite(n) || n < 0) usage(`--${flag}: not a number: ${value}`)
      o[camel] = n
    } else if (STRING.has(flag)) {
      o[camel] = value
    } else {
      usage(`unknown option --${flag}`)
    }
  }
  for (const k of ['rooms', 'clients', 'window', 'connectConcurrency']) {
    if (k in o && !Number.isInteger(o[k])) usage(`--${k}: not an integer: ${o[k]}`)
  }
  if (o.rooms < 1) usage('--rooms must be at least 1')
  if (scenario === 'fanout' && o.clients < 1) usage('--clients must be at least 1')
  if (o.serverPid !== null) {
    if (!Number.isInteger(o.serverPid) || !fs.existsSync(`/proc/${o.serverPid}/stat`)) {
      usage(`--server-pid ${o.serverPid}: no such process`)
    }
  }
  o.targets = o.url.split(',').map((u) => parseTemplate(u.trim()))
  return o
}

// A URL template as y-websocket wants it: serverUrl (everything before '/{room}') and the query
// after {room} as params.
function parseTemplate (template) {
  const m = /^ws:\/\/([^/?]+)(\/[^?]*)?(\?.*)?$/.exec(template)
  if (!m) usage(`--url must be ws://HOST[:PORT]/...{room}...: ${template}`)
  const hostport = m[1]
  const host = hostport.startsWith('[') ? hostport.slice(0, hostport.indexOf(']') + 1) : hostport.split(':')[0]
  if (!(host === 'localhost' || host === '[::1]' || host.startsWith('127.'))) {
    usage(`refusing to load ${host}: js-load only targets 127.0.0.0/8, localhost or [::1]`)
  }
  const path = m[2] ?? ''
  if (!path.endsWith('/{room}')) {
    usage(`--url: {room} must be the last path segment (y-websocket connects to serverUrl/room): ${template}`)
  }
  const serverUrl = `ws://${hostport}${path.slice(0, -'/{room}'.length)}`
  const params = []
  for (const [k, v] of new URLSearchParams((m[3] ?? '').slice(1))) {
    if (k.includes('{room}') || v.includes('{room}')) usage(`--url: {room} only in the path: ${template}`)
    params.push([k, v])
  }
  return { serverUrl, params }
}

// ---------------------------------------------------------------------------------------------
// /proc sampling, as crates/ripple-bench/src/procstat.rs does it

let clkTck = null
function clockTicks () {
  if (clkTck === null) {
    try {
      clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim())
    } catch { clkTck = 0 }
    if (!(clkTck > 0)) clkTck = 100
  }
  return clkTck
}

function readText (path) {
  try { return fs.readFileSync(path, 'utf8') } catch { return null }
}

// [ppid, utime + stime ticks] from /proc/PID/stat.
function stat (pid) {
  const text = readText(`/proc/${pid}/stat`)
  if (text === null) return null
  const rest = text.slice(text.lastIndexOf(')') + 1).trim().split(/\s+/)
  // rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
  const ppid = Number(rest[1])
  const ticks = Number(rest[11]) + Number(rest[12])
  return Number.isFinite(ppid) && Number.isFinite(ticks) ? [ppid, ticks] : null
}

// Nanoseconds on CPU of every live thread of pid (null if unreadable).
function runNs (pid) {
  let tasks
  try { tasks = fs.readdirSync(`/proc/${pid}/task`) } catch { return null }
  let total = 0
  for (const t of tasks) {
    const text = readText(`/proc/${pid}/task/${t}/schedstat`)
    if (text === null) continue
    const v = Number(text.split(/\s+/, 1)[0])
    if (!Number.isFinite(v)) return null
    total += v
  }
  return total
}

function rssBytes (pid) {
  const text = readText(`/proc/${pid}/status`)
  const m = text && /^VmRSS:\s+(\d+)/m.exec(text)
  return m ? Number(m[1]) * 1024 : 0
}

// pid and its live descendants.
function tree (pid) {
  const children = new Map()
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue
    const s = stat(name)
    if (!s) continue
    const p = Number(name)
    if (!children.has(s[0])) children.set(s[0], [])
    children.get(s[0]).push(p)
  }
  const out = [pid]
  for (let i = 0; i < out.length; i++) out.push(...(children.get(out[i]) ?? []))
  return out
}

function sampleTree (pid) {
  if (!stat(pid)) return null
  const pids = tree(pid)
  let ticks = 0; let rss = 0; let run = 0
  for (const p of pids) {
    const s = stat(p)
    if (s) ticks += s[1]
    rss += rssBytes(p)
    const r = runNs(p)
    run = run === null || r === null ? null : run + r
  }
  return { cpuSecs: ticks / clockTicks(), runSecs: run === null ? null : run / 1e9, rssBytes: rss, processes: pids.length }
}

// CPU seconds between two tree samples: the nanosecond figure unless the tick figure is clearly
// larger (threads exited in between).
function cpuSince (a, b) {
  const ticks = Math.max(0, b.cpuSecs - a.cpuSecs)
  if (a.runSecs !== null && b.runSecs !== null && b.runSecs >= a.runSecs) {
    const precise = b.runSecs - a.runSecs
    return ticks > precise + 2 / clockTicks() ? ticks : precise
  }
  return ticks
}

// The driver's main thread alone (where every client runs): near 100 % means driver-bound.
function mainThreadSecs () {
  const text = readText(`/proc/self/task/${process.pid}/schedstat`)
  const v = text === null ? NaN : Number(text.split(/\s+/, 1)[0])
  return Number.isFinite(v) ? v / 1e9 : null
}

function probe (pid) {
  const cpu = process.cpuUsage()
  return {
    at: performance.now(),
    server: pid === null ? null : sampleTree(pid),
    driverUs: cpu.user + cpu.system,
    mainSecs: mainThreadSecs()
  }
}

// [server CPU seconds or null, driver CPU seconds, wall seconds]
function cpuBetween (a, b) {
  const server = a.server && b.server ? cpuSince(a.server, b.server) : null
  return [server, (b.driverUs - a.driverUs) / 1e6, (b.at - a.at) / 1000]
}

// ---------------------------------------------------------------------------------------------
// Report, in the shape of crates/ripple-bench/src/report.rs

class Report {
  constructor (scenario, server, params) {
    this.scenario = scenario
    this.server = server
    this.protocol = 'yws-js'
    this.params = params
    this.figures = []
    this.errors = {
      connect_failures: 0,
      disconnects: 0,
      protocol_errors: 0,
      missing_updates: 0,
      convergence_mismatches: 0,
      samples: []
    }
  }

  fig (key, label, value, unit, better) {
    const v = typeof value === 'number' && Number.isFinite(value) ? value : null
    this.figures.push({ key, label, value: v, unit, better })
  }

  note (msg) {
    if (this.errors.samples.length < 5) this.errors.samples.push(msg)
  }

  table () {
    const width = Math.max(10, ...this.figures.map((f) => f.label.length))
    const lines = [`== ${this.scenario} against ${this.server} (${this.protocol}) ${JSON.stringify(this.params)}`]
    for (const f of this.figures) {
      lines.push(`  ${f.label.padEnd(width)}  ${fmt(f.value).padStart(14)} ${f.unit}`)
    }
    const e = this.errors
    lines.push(`  errors: connect failures ${e.connect_failures}, disconnects ${e.disconnects}, protocol errors ${e.protocol_errors}, missing updates ${e.missing_updates}, convergence mismatches ${e.convergence_mismatches}`)
    for (const s of e.samples) lines.push(`    - ${s}`)
    return lines.join('\n') + '\n'
  }
}

function fmt (v) {
  if (v === null) return 'n/a'
  if (v === 0) return '0'
  const a = Math.abs(v)
  if (a >= 1000) return v.toFixed(0)
  if (a >= 100) return v.toFixed(1)
  if (a >= 1) return v.toFixed(2)
  return v.toFixed(3)
}

function percentile (sorted, p) {
  if (sorted.length === 0) return null
  const rank = Math.round((p / 100) * (sorted.length - 1))
  return sorted[Math.min(rank, sorted.length - 1)]
}

// ---------------------------------------------------------------------------------------------
// Clients

const nowUs = () => Math.round(performance.now() * 1000)
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// Phases: 'connect' -> 'run' -> 'stop' -> 'drain' -> 'finish'
const session = {
  phase: 'connect',
  perRoom: 1,
  clients: [],
  expected: null,
  pending: new Set(),
  uncaught: [],
  flushScheduled: false
}

class Client {
  constructor (room, local, index, plan, target, roomName, connId) {
    this.room = room
    this.local = local
    this.index = index
    this.plan = plan // 'idle' | { interval, offset } | { window }
    this.writes = 0
    this.seen = 0
    this.latencies = []
    this.lastArrivalUs = 0
    this.acked = 0 // highest seq + 1 of ours seen by our room neighbour
    this.synced = false
    this.connectError = null // string, when the connect failed
    this.ended = null // { kind: 'disconnect' | 'protocol', msg }
    this.lastClose = null
    this.timer = null
    this.deflate = false

    this.doc = new Y.Doc()
    // Fixed small ids (rooms are new every run), as ripple-bench uses.
    this.doc.clientID = CLIENT_ID_BASE + index
    this.map = this.doc.getMap(MAP)
    this.map.observe((event, txn) => this.observe(event, txn))
    const params = {}
    for (const [k, v] of target.params) params[k.replaceAll('{conn}', connId)] = v.replaceAll('{conn}', connId)
    this.serverUrl = target.serverUrl
    this.roomName = roomName
    this.params = params
    this.provider = null
  }

  // Opens the provider; resolves when synced or failed (timeout).
  connect (timeoutMs) {
    return new Promise((resolve) => {
      const started = performance.now()
      const p = new WebsocketProvider(this.serverUrl, this.roomName, this.doc, {
        WebSocketPolyfill: WebSocket,
        connect: true,
        disableBc: true,
        params: this.params
      })
      this.provider = p
      // A server message the provider cannot handle (bad update, ...) is a protocol error:
      // without this it would throw out of ws's message event.
      p.messageHandlers = p.messageHandlers.map((h) => h && ((...args) => {
        try {
          h(...args)
        } catch (e) {
          this.end('protocol', `protocol: ${e?.message ?? e}`)
        }
      }))
      p.on('connection-close', (event) => {
        if (event) this.lastClose = `closed ${event.code}${event.reason ? ': ' + event.reason : ''}`
      })
      p.on('connection-error', (event) => {
        this.lastClose = `connect: ${event?.message ?? event?.error?.message ?? 'error'}`
      })
      p.on('status', ({ status }) => {
        if (status === 'connected' && p.ws) this.deflate = /permessage-deflate/.test(p.ws.extensions ?? '')
        if (status === 'disconnected' && this.synced && session.phase !== 'finish') {
          this.end('disconnect', this.lastClose ?? 'closed 1006')
        }
      })
      const timer = setTimeout(() => {
        if (this.synced) return
        this.connectError = `timed out: connect and sync (${this.lastClose ?? 'no answer'})`
        p.destroy()
        resolve()
      }, timeoutMs)
      p.once('synced', () => {
        if (this.connectError) return
        clearTimeout(timer)
        this.synced = true
        this.connectMs = performance.now() - started
        resolve()
      })
    })
  }

  end (kind, msg) {
    if (this.ended) return
    this.ended = { kind, msg }
    this.stopWriting()
    // A real app would reconnect; the benchmark counts the break and leaves the client out (as
    // ripple-bench ends a broken connection), so a resync cannot hide missing writes.
    this.provider.disconnect()
  }

  observe (event, txn) {
    if (txn.local || !this.synced) return
    const now = nowUs()
    const per = session.perRoom
    let any = false
    for (const key of event.keysChanged) {
      const dot = key.indexOf('.')
      if (dot <= 0) continue
      const writer = Number(key.slice(0, dot))
      const seq = Number(key.slice(dot + 1))
      if (!Number.isInteger(writer) || !Number.isInteger(seq) || writer === this.index) continue
      const sent = this.map.get(key)
      if (typeof sent !== 'number') continue
      any = true
      this.seen++
      this.latencies.push(Math.max(0, now - sent))
      // The writer's room neighbour acknowledges for the write window.
      if (((writer % per) + 1) % per === this.local) {
        const w = session.clients[writer]
        if (w && seq + 1 > w.acked) {
          w.acked = seq + 1
          if (w.plan.window) schedulePump(w)
        }
      }
    }
    if (any) this.lastArrivalUs = now
  }

  writeOne () {
    // One map key per transaction: one 'update' event, one update message, as an editor sends.
    this.map.set(`${this.index}.${this.writes}`, nowUs())
    this.writes++
    this.seen++
  }

  live () {
    return this.synced && !this.ended && !this.connectError
  }

  startWriting () {
    if (!this.live()) return
    if (this.plan.interval) {
      // Like tokio's interval with MissedTickBehavior::Delay.
      let next = performance.now() + this.plan.offset
      const tick = () => {
        if (session.phase !== 'run' || !this.live()) return
        this.writeOne()
        const now = performance.now()
        next += this.plan.interval
        if (next < now) next = now + this.plan.interval
        this.timer = setTimeout(tick, next - now)
      }
      this.timer = setTimeout(tick, this.plan.offset)
    } else if (this.plan.window) {
      this.pump()
    }
  }

  pump () {
    while (session.phase === 'run' && this.live() && this.writes < this.acked + this.plan.window) {
      this.writeOne()
    }
  }

  stopWriting () {
    if (this.timer) clearTimeout(this.timer)
    this.timer = null
  }

  stateVector () {
    return Buffer.from(Y.encodeStateVector(this.doc)).toString('base64')
  }
}

// Window writers whose window opened write after this turn's incoming messages are handled.
function schedulePump (c) {
  if (session.phase !== 'run') return
  session.pending.add(c)
  if (!session.flushScheduled) {
    session.flushScheduled = true
    setImmediate(() => {
      session.flushScheduled = false
      const list = [...session.pending]
      session.pending.clear()
      for (const w of list) w.pump()
    })
  }
}

async function connectAll (clients, concurrency, timeoutMs) {
  let next = 0
  const worker = async () => {
    while (next < clients.length) {
      const c = clients[next++]
      await c.connect(timeoutMs)
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, Math.min(concurrency, clients.length)) }, worker))
}

// ---------------------------------------------------------------------------------------------
// Scenarios

function roomNames (name, n) {
  const tag = `${process.pid.toString(16)}-${Date.now().toString(16)}`
  return Array.from({ length: n }, (_, i) => `${name}-${tag}-${i}`)
}

function targetFor (o, conn) {
  const t = o.targets
  return t.length === 1 || conn === 0 ? t[0] : t[1 + ((conn - 1) % (t.length - 1))]
}

async function run (o) {
  const fanout = o.scenario === 'fanout'
  const perRoom = fanout ? o.clients : Math.max(2, o.clients)
  const params = fanout
    ? { clients: o.clients, duration_secs: o.duration, rate: o.rate, rooms: o.rooms }
    : { clients: o.clients, duration_secs: o.duration, rooms: o.rooms, window: o.window }
  params.client = clientVersions()
  const r = new Report(o.name, o.label, params)
  session.perRoom = perRoom
  const rooms = roomNames(o.name, o.rooms)
  const interval = 1000 / Math.max(o.rate ?? 0, 0.001)
  const connTag = `j${process.pid.toString(16)}`
  for (let room = 0; room < o.rooms; room++) {
    for (let local = 0; local < perRoom; local++) {
      const index = room * perRoom + local
      let plan = 'idle'
      if (fanout && local === 0) plan = { interval, offset: interval * room / o.rooms }
      if (!fanout) plan = { window: Math.max(1, o.window) }
      session.clients.push(new Client(room, local, index, plan, targetFor(o, local === 0 ? 0 : index),
        rooms[room], `${connTag}-${index}`))
    }
  }
  const clients = session.clients
  await connectAll(clients, o.connectConcurrency, o.connectTimeout * 1000)
  const ready = clients.filter((c) => c.synced).length

  const start = probe(o.serverPid)
  const startUs = nowUs()
  session.phase = 'run'
  for (const c of clients) c.startWriting()
  await sleep(o.duration * 1000)
  const acked = clients.reduce((s, c) => s + (c.plan.window ? c.acked : 0), 0)
  session.phase = 'stop'
  for (const c of clients) c.stopWriting()
  const sent = new Array(o.rooms).fill(0)
  for (const c of clients) sent[c.room] += c.writes

  session.phase = 'drain'
  const deadline = performance.now() + o.drainTimeout * 1000
  while (performance.now() < deadline &&
    clients.some((c) => c.live() && c.seen < sent[c.room])) {
    await sleep(5)
  }
  const end = probe(o.serverPid)

  if (!fanout) {
    r.fig('accepted_per_sec', 'accepted updates/s (seen by a neighbour in the write window)',
      acked / o.duration, '/s', 'higher')
  }
  const writes = sent.reduce((a, b) => a + b, 0)
  const last = clients.reduce((m, c) => Math.max(m, c.lastArrivalUs), startUs)
  const window = (last - startUs) / 1e6
  r.fig('clients', 'clients connected', ready, '', 'none')
  r.fig('writes', 'writes sent', writes, '', 'none')
  let total = 0
  for (const c of clients) total += c.latencies.length
  const lat = new Float64Array(total)
  let k = 0
  for (const c of clients) for (const v of c.latencies) lat[k++] = v
  lat.sort()
  const ms = (v) => (v === null ? null : v / 1000)
  r.fig('latency_p50_ms', 'latency p50', ms(percentile(lat, 50)), 'ms', 'lower')
  r.fig('latency_p99_ms', 'latency p99', ms(percentile(lat, 99)), 'ms', 'lower')
  r.fig('latency_max_ms', 'latency max', ms(total ? lat[total - 1] : null), 'ms', 'lower')
  const delivered = total
  r.fig('delivered', 'updates delivered', delivered, '', 'none')
  r.fig('delivered_per_sec', 'delivered updates/s', window > 0 ? delivered / window : null, '/s', 'higher')
  const [serverCpu, driverCpu, wall] = cpuBetween(start, end)
  r.fig('cpu_us_per_delivered', 'server CPU per delivered update',
    serverCpu !== null && delivered > 0 ? 1e6 * serverCpu / delivered : null, 'µs', 'lower')
  r.fig('server_cpu_pct', 'server CPU (of one core)', serverCpu === null ? null : 100 * serverCpu / wall, '%', 'none')
  r.fig('server_rss_mb', 'server RSS at end', end.server ? end.server.rssBytes / MB : null, 'MiB', 'lower')
  r.fig('driver_cpu_pct', 'load generator CPU (of one core)', 100 * driverCpu / wall, '%', 'none')

  tally(r, clients, sent)
  session.phase = 'finish'
  const deflate = clients.filter((c) => c.deflate).length
  const mainPct = start.mainSecs !== null && end.mainSecs !== null ? 100 * (end.mainSecs - start.mainSecs) / wall : null
  for (const c of clients) {
    try { c.provider?.destroy() } catch {}
  }
  return { report: r, deflate, mainPct }
}

function tally (r, clients, sent) {
  const bySv = new Map() // room -> reference state vector (client 0's, else the most common)
  for (let room = 0; room < sent.length; room++) {
    const live = clients.filter((c) => c.room === room && c.live())
    if (live.length === 0) continue
    const writer = live.find((c) => c.local === 0)
    let ref = writer?.stateVector()
    if (ref === undefined) {
      const counts = new Map()
      for (const c of live) counts.set(c.stateVector(), (counts.get(c.stateVector()) ?? 0) + 1)
      ref = [...counts.entries()].sort((a, b) => b[1] - a[1])[0][0]
    }
    bySv.set(room, ref)
  }
  for (const c of clients) {
    if (c.connectError || !c.synced) {
      r.errors.connect_failures++
      r.note(`client ${c.index}: ${c.connectError ?? 'not synced'}`)
      continue
    }
    if (c.ended) {
      if (c.ended.kind === 'protocol') r.errors.protocol_errors++
      else r.errors.disconnects++
      r.note(`client ${c.index}: ${c.ended.msg}`)
      continue
    }
    r.errors.missing_updates += Math.max(0, sent[c.room] - c.seen)
    if (c.stateVector() !== bySv.get(c.room)) r.errors.convergence_mismatches++
  }
  for (const msg of session.uncaught) {
    r.errors.protocol_errors++
    r.note(msg)
  }
  if (r.errors.missing_updates > 0) {
    r.note(`${r.errors.missing_updates} writes never arrived at some connected client`)
  }
  if (r.errors.convergence_mismatches > 0) {
    r.note(`${r.errors.convergence_mismatches} clients' documents differ from their room's writer`)
  }
}

function clientVersions () {
  const require = createRequire(import.meta.url)
  const v = (name) => {
    try {
      return JSON.parse(fs.readFileSync(require.resolve(`${name}/package.json`), 'utf8')).version
    } catch { return '?' }
  }
  return `y-websocket ${v('y-websocket')}, yjs ${v('yjs')}, ws ${v('ws')}, node ${process.versions.node}`
}

// ---------------------------------------------------------------------------------------------

const opts = parseArgs(process.argv.slice(2))
// One exit listener per provider (y-websocket removes awareness on exit).
process.setMaxListeners(0)
// Anything a client library throws outside the message handlers is counted, not fatal: the run
// still reports.
process.on('uncaughtException', (e) => session.uncaught.push(`uncaught: ${e?.message ?? e}`))
const { report, deflate, mainPct } = await run(opts)
process.stdout.write(report.table())
process.stdout.write(`  (${report.params.client}; driver main thread ${mainPct === null ? 'n/a' : fmt(mainPct) + ' %'} of one core; ` +
  `permessage-deflate negotiated on ${deflate} of ${session.clients.length} connections)\n`)
const line = JSON.stringify(report)
if (opts.jsonOut) {
  fs.appendFileSync(opts.jsonOut, line + '\n')
} else {
  process.stdout.write(line + '\n')
}
// Let the close frames go out, then stop the awareness timers with the process.
await sleep(300)
process.exit(0)
