// 14. Hocuspocus clients: the real @hocuspocus/provider, 2.15.x and 3.4.x, against Ripple at
//     ws://HOST/ (and /hocuspocus): convergence, many documents on one socket, a Hocuspocus
//     provider and a y-websocket client in one room, durable acknowledgements, pre-auth bounds,
//     malformed frames.
import { after } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import http from 'node:http'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import {
  test, startRipple, cleanup, connectSynced, uniqueRoom, waitFor, rawConnect, Y, WebSocket,
  IS_REFERENCE
} from './lib.mjs'
import {
  HP, hpConnect, hpSocket, hpSynced, destroyAllHp, mintToken, configFile
} from './hocuspocus-lib.mjs'

const skip = IS_REFERENCE ? 'the reference server does not speak Hocuspocus' : false

after(async () => {
  destroyAllHp()
  await cleanup()
})

let shared
async function server () {
  if (!shared) shared = await startRipple()
  return shared
}

for (const [version, lib] of Object.entries(HP)) {
  test(`${version}: two providers converge on Y.Text, Y.Map and Y.XmlFragment`, { skip }, async () => {
    const s = await server()
    const name = uniqueRoom(`hp-conv-${version}`)
    const a = await hpSynced(lib, s, name)
    const b = await hpSynced(lib, s, name, { path: '/hocuspocus' })
    a.doc.getText('text').insert(0, 'hello')
    a.doc.getMap('map').set('k', 'from-a')
    b.doc.getXmlFragment('xml').insert(0, [new Y.XmlText('para')])
    await waitFor(() => b.doc.getText('text').toString() === 'hello', 5000, { describe: 'b to get a\'s text' })
    b.doc.getText('text').insert(0, '>> ')
    const same = () => Buffer.compare(
      Buffer.from(Y.encodeStateVector(a.doc)), Buffer.from(Y.encodeStateVector(b.doc))) === 0 &&
      a.doc.getText('text').toString() === b.doc.getText('text').toString()
    await waitFor(same, 5000, { describe: () => `a=${a.doc.getText('text')} b=${b.doc.getText('text')}` })
    for (const c of [a, b]) {
      assert.equal(c.doc.getText('text').toString(), '>> hello')
      assert.equal(c.doc.getMap('map').get('k'), 'from-a')
      assert.equal(c.doc.getXmlFragment('xml').toString(), 'para')
    }
    await waitFor(() => a.provider.unsyncedChanges === 0 && b.provider.unsyncedChanges === 0, 5000,
      { describe: () => `unsyncedChanges a=${a.provider.unsyncedChanges} b=${b.provider.unsyncedChanges}` })
    assert.equal(a.provider.authorizedScope, 'read-write')
  })

  test(`${version}: a Hocuspocus provider and a y-websocket client in one room converge both ways, with awareness`, { skip }, async () => {
    const s = await server()
    const name = uniqueRoom(`hp-mixed-${version}`)
    const h = await hpSynced(lib, s, name)
    const w = await connectSynced(s, name, { kind: 'ws' })
    h.doc.getText('text').insert(0, 'from hocuspocus')
    await waitFor(() => w.doc.getText('text').toString() === 'from hocuspocus', 5000,
      { describe: () => `y-websocket has "${w.doc.getText('text')}"` })
    w.doc.getMap('map').set('from', 'y-websocket')
    await waitFor(() => h.doc.getMap('map').get('from') === 'y-websocket', 5000,
      { describe: 'the Hocuspocus provider to get the y-websocket edit' })
    h.provider.setAwarenessField('user', { name: 'hp' })
    w.awareness.setLocalStateField('user', { name: 'ws' })
    await waitFor(() => w.awareness.getStates().get(h.doc.clientID)?.user?.name === 'hp', 5000,
      { describe: 'y-websocket to see the Hocuspocus awareness state' })
    await waitFor(() => h.provider.awareness.getStates().get(w.doc.clientID)?.user?.name === 'ws', 5000,
      { describe: 'the Hocuspocus provider to see the y-websocket awareness state' })
    w.destroy()
    await waitFor(() => !h.provider.awareness.getStates().has(w.doc.clientID), 5000,
      { describe: 'the y-websocket client\'s awareness to be removed when it leaves' })
  })

  test(`${version}: three documents on one shared socket, one denied, the other two work`, { skip }, async () => {
    const s = await startRipple({ env: { RIPPLE_AUTH_JWT_SECRET: 'hp-secret' } })
    const prefix = uniqueRoom(`hp-multi-${version}`)
    const token = mintToken('hp-secret', '--room', `${prefix}-ok-*`, '--access', 'write', '--ttl', '10m')
    const socket = hpSocket(lib, s)
    const ok1 = hpConnect(lib, s, `${prefix}-ok-1`, { socket, token })
    const ok2 = hpConnect(lib, s, `${prefix}-ok-2`, { socket, token })
    const no = hpConnect(lib, s, `${prefix}-secret`, { socket, token })
    await waitFor(() => no.failures.length > 0, 5000, { describe: 'the denied document\'s authenticationFailed' })
    assert.match(no.failures[0], /forbidden|room/i)
    await waitFor(() => ok1.provider.isSynced && ok2.provider.isSynced, 5000, { describe: 'both allowed documents to sync' })
    // A second socket edits the allowed documents: the shared socket's documents get the edits.
    const other = hpConnect(lib, s, `${prefix}-ok-1`, { token })
    await waitFor(() => other.provider.isSynced, 5000)
    other.doc.getText('text').insert(0, 'one')
    ok2.doc.getText('text').insert(0, 'two')
    await waitFor(() => ok1.doc.getText('text').toString() === 'one', 5000, { describe: 'ok-1 to get the edit' })
    await waitFor(() => ok2.provider.unsyncedChanges === 0, 5000, { describe: 'ok-2 edit acknowledged' })
    assert.equal(socket.webSocket?.readyState, WebSocket.OPEN, 'the shared socket is still open')
    assert.equal(no.provider.isSynced, false, 'the denied document never synced')
    // Closing one document (detach sends CLOSE in 3.x; destroy in 2.x) ends that one only.
    ok1.destroy()
    ok2.doc.getText('text').insert(0, '2')
    await waitFor(() => ok2.provider.unsyncedChanges === 0, 5000, { describe: 'ok-2 still acknowledged after ok-1 closed' })
    await s.stop()
  })

  test(`${version}: unsyncedChanges 0 means on disk: SIGKILL and restart keep every acknowledged edit`, { skip }, async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ripple-hp-kill9-'))
    const s = await startRipple({ dataDir })
    const name = uniqueRoom(`hp-kill-${version}`)
    const c = await hpSynced(lib, s, name)
    const acked = []
    for (let i = 0; i < 40; i++) {
      c.doc.getMap('tags').set(`t${i}`, i)
      if (i % 10 === 9) {
        await waitFor(() => c.provider.unsyncedChanges === 0, 5000, { describe: `ack of batch ${i}` })
        for (let j = i - 9; j <= i; j++) acked.push(`t${j}`)
      }
    }
    // More edits that may or may not be acknowledged before the kill.
    for (let i = 40; i < 60; i++) c.doc.getMap('tags').set(`t${i}`, i)
    s.proc.kill('SIGKILL')
    await s.exited
    c.destroy()
    const restarted = await startRipple({ dataDir })
    const check = await hpSynced(lib, restarted, name)
    const stored = new Set(check.doc.getMap('tags').keys())
    const lost = acked.filter((t) => !stored.has(t))
    assert.deepEqual(lost, [], `acknowledged edits lost: ${lost}`)
    await restarted.stop()
  })
}

test('v4 with sessionAwareness: two providers of one document on one socket are two members of its room', { skip }, async () => {
  const s = await server()
  const name = uniqueRoom('hp-session')
  const socket = hpSocket(HP.v4, s)
  const options = { sessionAwareness: true }
  const a = hpConnect(HP.v4, s, name, { socket, options })
  const b = hpConnect(HP.v4, s, name, { socket, options })
  await waitFor(() => a.provider.isSynced && b.provider.isSynced, 5000, { describe: 'both sessions to sync' })
  const w = await connectSynced(s, name, { kind: 'ws' })
  a.doc.getText('text').insert(0, 'from a')
  await waitFor(() => b.doc.getText('text').toString() === 'from a', 5000, { describe: 'b to get a\'s edit' })
  await waitFor(() => w.doc.getText('text').toString() === 'from a', 5000, { describe: 'the room (document name, not the session key) to get it' })
  await waitFor(() => a.provider.unsyncedChanges === 0, 5000)
})

/** A raw Hocuspocus frame: varString(name), varUint(type), then `write(encoder)`. */
function frame (name, type, write = () => {}) {
  const e = encoding.createEncoder()
  encoding.writeVarString(e, name)
  encoding.writeVarUint(e, type)
  write(e)
  return encoding.toUint8Array(e)
}

/**
 * An auth webhook that admits every token with write access, after `slowMs` for the token
 * "slow" (so that a client's messages pile up while its auth is decided).
 */
async function slowWebhook (slowMs) {
  const hook = http.createServer((req, res) => {
    let body = ''
    req.on('data', (d) => { body += d })
    req.on('end', () => {
      const { token } = JSON.parse(body)
      setTimeout(() => {
        res.setHeader('content-type', 'application/json')
        res.end(JSON.stringify({ access: 'write' }))
      }, token === 'slow' ? slowMs : 0)
    })
  })
  await new Promise((resolve) => hook.listen(0, '127.0.0.1', resolve))
  return hook
}

test('messages before auth are bounded: a flood while auth is pending closes that socket only', { skip }, async () => {
  const hook = await slowWebhook(3000)
  const s = await startRipple({
    extraArgs: ['--config', configFile(`[auth]\nmode = "webhook"\nurl = "http://127.0.0.1:${hook.address().port}/"\nsecret = "hook-secret"\ntimeout = "10s"\n`)]
  })
  try {
    const name = uniqueRoom('hp-flood')
    const watcher = await hpSynced(HP.v3, s, name, { token: 'fast' })
    const raw = rawConnect(`${s.wsBase}/`)
    await raw.opened
    raw.ws.send(frame(name, 2, (e) => { encoding.writeVarUint(e, 0); encoding.writeVarString(e, 'slow') }))
    const d = new Y.Doc()
    d.getText('t').insert(0, 'x')
    const update = Y.encodeStateAsUpdate(d)
    // Far more than max_pre_auth_messages (256) while the webhook takes its time.
    for (let i = 0; i < 400; i++) {
      raw.ws.send(frame(name, 0, (e) => { encoding.writeVarUint(e, 2); encoding.writeVarUint8Array(e, update) }))
    }
    const closed = await raw.closed
    assert.equal(closed.code, 1008, `closed with ${closed.code} ${closed.reason}`)
    assert.match(closed.reason, /before its authentication/)
    // The room's other client carries on, and nothing of the flood reached the room.
    watcher.doc.getText('text').insert(0, 'still here')
    await waitFor(() => watcher.provider.unsyncedChanges === 0, 5000)
    assert.equal(watcher.doc.getText('t').toString(), '')
  } finally {
    hook.close()
    await s.stop()
  }
})

test('messages queued while auth is pending are replayed once admitted, after our step 1', { skip }, async () => {
  const hook = await slowWebhook(500)
  const s = await startRipple({
    extraArgs: ['--config', configFile(`[auth]\nmode = "webhook"\nurl = "http://127.0.0.1:${hook.address().port}/"\nsecret = "hook-secret"\n`)]
  })
  try {
    const name = uniqueRoom('hp-replay')
    const raw = rawConnect(`${s.wsBase}/`)
    await raw.opened
    const d = new Y.Doc()
    d.getText('text').insert(0, 'sent before auth')
    // Auth, then (without waiting, as providers do) an update and sync step 1.
    raw.ws.send(frame(name, 2, (e) => { encoding.writeVarUint(e, 0); encoding.writeVarString(e, 'slow') }))
    raw.ws.send(frame(name, 0, (e) => { encoding.writeVarUint(e, 2); encoding.writeVarUint8Array(e, Y.encodeStateAsUpdate(d)) }))
    raw.ws.send(frame(name, 0, (e) => { encoding.writeVarUint(e, 0); encoding.writeVarUint8Array(e, Y.encodeStateVector(new Y.Doc())) }))
    const kinds = () => raw.frames.map((f) => {
      const dec = decoding.createDecoder(f.data)
      return [decoding.readVarString(dec), decoding.readVarUint(dec), decoding.readVarUint(dec)].join('/')
    })
    await waitFor(() => kinds().includes(`${name}/0/1`), 5000, { describe: () => `our step 2; got ${kinds()}` })
    const got = kinds()
    assert.equal(got[0], `${name}/2/2`, 'Authenticated comes first')
    assert.ok(got.indexOf(`${name}/0/0`) < got.indexOf(`${name}/0/1`), `our step 1 before our step 2: ${got}`)
    await waitFor(() => kinds().includes(`${name}/8/1`), 5000, { describe: 'SyncStatus 1 for the queued update' })
    // The queued update was applied: a client joining now gets it.
    const reader = await hpSynced(HP.v3, s, name, { token: 'fast' })
    assert.equal(reader.doc.getText('text').toString(), 'sent before auth')
    raw.close()
  } finally {
    hook.close()
    await s.stop()
  }
})

test('a socket that authenticates nothing is closed with 4401 after the pre-auth deadline', { skip }, async () => {
  const s = await startRipple({
    extraArgs: ['--config', configFile('handshake_timeout_secs = 1.0\n')],
    env: { RIPPLE_AUTH_JWT_SECRET: 'hp-secret' }
  })
  const raw = rawConnect(`${s.wsBase}/`)
  await raw.opened
  // Provider 2.x without a token: sync step 1 with no Auth message (denied: no token).
  raw.ws.send(frame('doc', 0, (e) => { encoding.writeVarUint(e, 0); encoding.writeVarUint8Array(e, new Uint8Array([0])) }))
  const closed = await raw.closed
  assert.equal(closed.code, 4401, `closed with ${closed.code} ${closed.reason}`)
  const denied = raw.frames.map((f) => decoding.createDecoder(f.data))
    .map((d) => [decoding.readVarString(d), decoding.readVarUint(d), decoding.readVarUint(d)])
    .find(([n, type, sub]) => n === 'doc' && type === 2 && sub === 1)
  assert.ok(denied, 'the document got PermissionDenied before the socket closed')
  await s.stop()
})

test('malformed frames close only that socket; its room and other sockets carry on', { skip }, async () => {
  const s = await server()
  const name = uniqueRoom('hp-malformed')
  const good = await hpSynced(HP.v3, s, name)
  for (const bad of [
    new Uint8Array([200]), // a name longer than the frame
    frame(name, 11), // unknown type
    frame(name, 0, (e) => encoding.writeVarUint(e, 9)) // unknown sync type
  ]) {
    const raw = rawConnect(`${s.wsBase}/`)
    await raw.opened
    raw.ws.send(frame(name, 2, (e) => { encoding.writeVarUint(e, 0); encoding.writeVarString(e, '') }))
    raw.ws.send(bad)
    const closed = await raw.closed
    assert.equal(closed.code, 1002, `closed with ${closed.code} ${closed.reason}`)
  }
  good.doc.getText('text').insert(0, 'ok')
  await waitFor(() => good.provider.unsyncedChanges === 0, 5000, { describe: 'the good provider still acknowledged' })
  assert.equal(good.provider.configuration.websocketProvider.webSocket?.readyState, WebSocket.OPEN)
})

test('the server keeps an idle socket alive: SyncStatus frames for no document, once per round', { skip }, async () => {
  const s = await startRipple({ extraArgs: ['--config', configFile('ping_interval_secs = 0.3\n')] })
  const raw = rawConnect(`${s.wsBase}/`)
  await raw.opened
  const names = []
  raw.ws.on('message', (data) => {
    const d = decoding.createDecoder(new Uint8Array(data))
    names.push([decoding.readVarString(d), decoding.readVarUint(d)])
  })
  raw.ws.send(frame('doc-ka', 2, (e) => { encoding.writeVarUint(e, 0); encoding.writeVarString(e, '') }))
  await waitFor(() => names.filter(([n]) => n === '').length >= 2, 5000, { describe: () => JSON.stringify(names) })
  assert.ok(names.filter(([n]) => n === '').every(([, t]) => t === 8), 'keep-alives are SyncStatus')
  raw.ws.close()
  await s.stop()
})
