// 4. Awareness: propagation, removal after clean close and after an abrupt socket kill,
//    current awareness sent to joiners, echo to the sender, query-awareness tolerated.
import { before, after } from 'node:test'
import assert from 'node:assert/strict'
import {
  test, startRipple, cleanup, connectSynced, uniqueRoom, waitFor, sleep, killSocketAbruptly,
  rawConnect, encodeAwarenessMessage, encodeSyncStep1, decodeMessage, MSG_SYNC, MSG_AWARENESS,
  MSG_QUERY_AWARENESS, Y
} from './lib.mjs'

let server
before(async () => { server = await startRipple() })
after(cleanup)

// y-protocols drops remote states not renewed for 30 s; every wait here is far shorter, so a
// removal seen by B can only come from the client's goodbye message or from the server.
const REMOVAL_TIMEOUT = 5000

const userOf = (client, clientID) => client.awareness.getStates().get(clientID)?.user

async function seenBy (b, a, name) {
  await waitFor(() => userOf(b, a.doc.clientID)?.name === name, 5000,
    { describe: () => `B to see A's awareness user=${name}; B states: ${JSON.stringify([...b.awareness.getStates()])}` })
}

// Waits until the server holds A's awareness (a probe in the room has received it), so that a
// client joining afterwards can only get it from the server's greeting, not from a broadcast
// of A's update that was still on its way.
async function serverHas (room, a, name, kind) {
  const probe = await connectSynced(server, room, { kind })
  try {
    await seenBy(probe, a, name)
  } finally {
    probe.destroy()
  }
}

for (const kind of ['ws', 'pk']) {
  test(`[${kind}] awareness propagates A -> B and is removed from B after A's provider.destroy()`, async () => {
    const room = uniqueRoom(`aw-destroy-${kind}`)
    const a = await connectSynced(server, room, { kind })
    const b = await connectSynced(server, room, { kind })
    try {
      a.awareness.setLocalStateField('user', { name: 'alice' })
      await seenBy(b, a, 'alice')
      a.awareness.setLocalStateField('user', { name: 'alice2' })
      await seenBy(b, a, 'alice2')
      const aId = a.doc.clientID
      a.destroy()
      await waitFor(() => !b.awareness.getStates().has(aId), REMOVAL_TIMEOUT,
        { describe: 'A awareness to disappear from B after destroy()' })
    } finally {
      a.destroy()
      b.destroy()
    }
  })

  test(`[${kind}] server removes A's awareness when A's socket closes cleanly without a goodbye`, async () => {
    // provider.destroy() sends a null-state awareness update itself; here only a close frame
    // is sent, so B can only learn about it from the server's per-connection cleanup.
    const room = uniqueRoom(`aw-close-${kind}`)
    const a = await connectSynced(server, room, { kind })
    const b = await connectSynced(server, room, { kind })
    try {
      a.awareness.setLocalStateField('user', { name: 'carol' })
      await seenBy(b, a, 'carol')
      a.provider.shouldConnect = false
      a.provider.ws.close(1000)
      await waitFor(() => !b.awareness.getStates().has(a.doc.clientID), REMOVAL_TIMEOUT,
        { describe: 'A awareness to disappear from B after a clean WebSocket close' })
    } finally {
      a.destroy()
      b.destroy()
    }
  })

  test(`[${kind}] server removes A's awareness after A's TCP connection is killed (no close frame)`, async () => {
    const room = uniqueRoom(`aw-kill-${kind}`)
    const a = await connectSynced(server, room, { kind })
    const b = await connectSynced(server, room, { kind })
    try {
      a.awareness.setLocalStateField('user', { name: 'bob' })
      await seenBy(b, a, 'bob')
      const aId = a.doc.clientID
      killSocketAbruptly(a)
      await waitFor(() => a.closeEvents.length > 0, 5000, { describe: 'A to notice its dead socket' })
      assert.equal(a.closeEvents[0], 1006, 'client side saw an abnormal closure (no close frame)')
      assert.ok(a.awareness.getStates().has(aId), 'A never sent a removal of its own state')
      await waitFor(() => !b.awareness.getStates().has(aId), REMOVAL_TIMEOUT,
        { describe: 'A awareness to disappear from B after the socket was killed' })
      assert.ok(b.provider.wsconnected, 'B stays connected')
    } finally {
      a.destroy()
      b.destroy()
    }
  })

  test(`[${kind}] a joiner receives the awareness of clients already in the room`, async () => {
    const room = uniqueRoom(`aw-join-${kind}`)
    const a = await connectSynced(server, room, { kind })
    try {
      a.awareness.setLocalStateField('user', { name: 'early' })
      await serverHas(room, a, 'early', kind)
      // y-websocket does not query awareness on connect and re-sends it only every 15 s:
      // B sees A within 2 s only if the server sends the current awareness on connect.
      const b = await connectSynced(server, room, { kind })
      try {
        await waitFor(() => userOf(b, a.doc.clientID)?.name === 'early', 2000,
          { describe: 'joiner to receive existing awareness' })
      } finally {
        b.destroy()
      }
    } finally {
      a.destroy()
    }
  })
}

const roomUrl = (room) => `${server.wsBase}/${room}`

test('raw socket: on connect the server sends sync step 1 first, then the current awareness', async () => {
  const room = uniqueRoom('aw-raw-join')
  const a = await connectSynced(server, room, { kind: 'ws' })
  a.awareness.setLocalStateField('user', { name: 'present' })
  await serverHas(room, a, 'present', 'ws')
  const raw = rawConnect(roomUrl(room))
  try {
    await raw.opened
    await waitFor(() => raw.binaryFrames().some((m) => m.type === MSG_AWARENESS), 3000,
      { describe: () => `awareness on connect; got ${JSON.stringify(raw.binaryFrames().map((m) => [m.type, m.syncType]))}` })
    const msgs = raw.binaryFrames()
    assert.equal(msgs[0].type, MSG_SYNC)
    assert.equal(msgs[0].syncType, 0, 'first frame is sync step 1')
    assert.equal(msgs[0].rest, 0, 'one protocol message per frame')
    const aw = msgs.find((m) => m.type === MSG_AWARENESS)
    assert.equal(aw.rest, 0, 'one protocol message per frame')
    assert.deepEqual(aw.awareness.find((e) => e.clientID === a.doc.clientID)?.state, { user: { name: 'present' } })
  } finally {
    raw.close()
    a.destroy()
  }
})

test('raw socket: awareness sent by a client is echoed back to it', async () => {
  const room = uniqueRoom('aw-echo')
  const raw = rawConnect(roomUrl(room))
  try {
    await raw.opened
    const clientID = 1234567
    raw.ws.send(encodeAwarenessMessage([{ clientID, clock: 1, state: { echo: 'me' } }]))
    await waitFor(() => raw.binaryFrames().some((m) => m.type === MSG_AWARENESS &&
      m.awareness.some((e) => e.clientID === clientID && e.clock === 1 && e.state?.echo === 'me')), 3000,
    { describe: () => `echo of own awareness; frames: ${JSON.stringify(raw.binaryFrames())}` })
    assert.equal(raw.closeInfo, null, 'socket still open')
  } finally {
    raw.close()
  }
})

test('raw socket: awareness of a raw client reaches a provider, and its removal on close too', async () => {
  const room = uniqueRoom('aw-raw-remove')
  const b = await connectSynced(server, room, { kind: 'ws' })
  const raw = rawConnect(roomUrl(room))
  try {
    await raw.opened
    const clientID = 7654321
    raw.ws.send(encodeAwarenessMessage([{ clientID, clock: 3, state: { user: { name: 'raw' } } }]))
    await waitFor(() => userOf(b, clientID)?.name === 'raw', 3000, { describe: 'B to see raw awareness' })
    raw.ws.close(1000)
    await raw.closed
    await waitFor(() => !b.awareness.getStates().has(clientID), REMOVAL_TIMEOUT,
      { describe: 'raw client awareness removed after it closed' })
  } finally {
    raw.close()
    b.destroy()
  }
})

test('raw socket: query-awareness (type 3) does not close the connection', async () => {
  const room = uniqueRoom('aw-query')
  const a = await connectSynced(server, room, { kind: 'ws' })
  const raw = rawConnect(roomUrl(room))
  try {
    a.awareness.setLocalStateField('user', { name: 'queried' })
    await raw.opened
    await sleep(100)
    const before = raw.frames.length
    raw.ws.send(Uint8Array.of(MSG_QUERY_AWARENESS))
    // The connection must still work afterwards: step 1 is answered with step 2.
    raw.ws.send(encodeSyncStep1(new Y.Doc()))
    await waitFor(() => raw.binaryFrames().slice(before).some((m) => m.type === MSG_SYNC && m.syncType === 1), 3000,
      { describe: () => `step 2 after query-awareness; closed=${JSON.stringify(raw.closeInfo)}` })
    assert.equal(raw.closeInfo, null)
  } finally {
    raw.close()
    a.destroy()
  }
})
