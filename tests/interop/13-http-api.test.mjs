// 13. The HTTP document API with the real `yjs` package: updates a backend makes with Yjs and
//     POSTs over HTTP reach a connected WebsocketProvider and storage; GET state equals the
//     clients' state and ?sv= diffs apply cleanly; JSON edits reach the client's Y types.
import { before, after } from 'node:test'
import assert from 'node:assert/strict'
import {
  Y, test, startRipple, cleanup, connectSynced, uniqueRoom, waitFor, editAllTypes, snapshot,
  sameState, IS_REFERENCE
} from './lib.mjs'

const skip = IS_REFERENCE ? 'the reference server has no HTTP API' : false

let server
before(async () => { if (!IS_REFERENCE) server = await startRipple() })
after(cleanup)

const api = (room, what = '') => `${server.httpUrl}/api/v1/rooms/main/${room}${what}`

async function postUpdate (room, update) {
  const res = await fetch(api(room, '/update'), {
    method: 'POST',
    headers: { 'content-type': 'application/octet-stream' },
    body: update
  })
  const body = await res.json()
  assert.equal(res.status, 200, JSON.stringify(body))
  return body
}

async function getState (room, sv) {
  const q = sv ? `?sv=${encodeURIComponent(Buffer.from(sv).toString('base64'))}` : ''
  const res = await fetch(api(room, `/state${q}`))
  assert.equal(res.status, 200)
  assert.equal(res.headers.get('content-type'), 'application/octet-stream')
  return new Uint8Array(await res.arrayBuffer())
}

test('an update made with yjs and POSTed over HTTP reaches a WebsocketProvider and storage', { skip }, async () => {
  const room = uniqueRoom('api-post')
  const client = await connectSynced(server, room, { kind: 'ws' })
  const backend = new Y.Doc()
  editAllTypes(backend, 'backend')
  const answer = await postUpdate(room, Y.encodeStateAsUpdate(backend))
  assert.equal(answer.changed, true)
  assert.ok(answer.seq >= 1)
  await waitFor(() => sameState(client.doc, backend), 5000,
    { describe: () => `the client to get the posted update: ${JSON.stringify(snapshot(client.doc))}` })

  // Stored: a restart on the same data directory serves it to a fresh client.
  client.destroy()
  const dataDir = server.dataDir
  await server.stop()
  server = await startRipple({ dataDir })
  const fresh = await connectSynced(server, room, { kind: 'pk' })
  try {
    assert.deepEqual(snapshot(fresh.doc), snapshot(backend))
  } finally {
    fresh.destroy()
  }
})

test('GET state equals the clients\' state, and ?sv= returns a diff that applies cleanly', { skip }, async () => {
  const room = uniqueRoom('api-state')
  const a = await connectSynced(server, room, { kind: 'ws' })
  const b = await connectSynced(server, room, { kind: 'pk' })
  try {
    editAllTypes(a.doc, 'a')
    // A backend that saw only the first edit (its state vector comes from a copy of it).
    const backend = new Y.Doc()
    Y.applyUpdate(backend, Y.encodeStateAsUpdate(a.doc))
    editAllTypes(b.doc, 'b')
    await waitFor(() => sameState(a.doc, b.doc), 5000, { describe: 'a and b to converge' })

    const whole = await getState(room)
    const copy = new Y.Doc()
    Y.applyUpdate(copy, whole)
    assert.ok(sameState(copy, a.doc), `GET state ${JSON.stringify(snapshot(copy))} vs client ${JSON.stringify(snapshot(a.doc))}`)

    const diff = await getState(room, Y.encodeStateVector(backend))
    assert.ok(diff.length < whole.length, `a diff (${diff.length} bytes) smaller than the state (${whole.length})`)
    Y.applyUpdate(backend, diff)
    assert.ok(sameState(backend, a.doc), 'the diff brings the backend to the clients\' state')
    // An up-to-date state vector gets an empty update: nothing to apply.
    const nothing = await getState(room, Y.encodeStateVector(backend))
    const before = Y.encodeStateVector(backend)
    Y.applyUpdate(backend, nothing)
    assert.deepEqual(Y.encodeStateVector(backend), before)
  } finally {
    a.destroy()
    b.destroy()
  }
})

test('JSON edits over HTTP reach the Y types of a connected client', { skip }, async () => {
  const room = uniqueRoom('api-json')
  const client = await connectSynced(server, room, { kind: 'ws' })
  try {
    client.doc.getText('text').insert(0, 'world')
    await waitFor(async () => {
      const res = await fetch(api(room, '/json'))
      return res.status === 200 && (await res.json()).data.text === 'world'
    }, 5000, { describe: 'the server to have the client\'s text' })
    const res = await fetch(api(room, '/json?types=array:array'), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        ops: [
          { text: 'text', insert: 'Hello ', at: 0 },
          { map: 'map', set: { title: 'Q3 plan', n: 3 } },
          { array: 'array', push: [{ id: 1 }] }
        ]
      })
    })
    assert.equal(res.status, 200, JSON.stringify(await res.clone().json()))
    await waitFor(() => client.doc.getText('text').toString() === 'Hello world' &&
      client.doc.getMap('map').get('title') === 'Q3 plan' &&
      client.doc.getArray('array').length === 1, 5000,
    { describe: () => `the client to see the JSON edit: ${JSON.stringify(snapshot(client.doc))}` })
    assert.deepEqual(client.doc.getMap('map').toJSON(), { title: 'Q3 plan', n: 3 })
    assert.deepEqual(client.doc.getArray('array').toJSON(), [{ id: 1 }])

    // A type mismatch is refused and changes nothing.
    const bad = await fetch(api(room, '/json'), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ ops: [{ map: 'map', set: { x: 1 } }, { text: 'map', insert: 'x' }] })
    })
    assert.equal(bad.status, 400)
    assert.equal((await bad.json()).error, 'bad_request')
    const read = await (await fetch(api(room, '/json?types=array:array'))).json()
    assert.deepEqual(read.data.map, { title: 'Q3 plan', n: 3 })
  } finally {
    client.destroy()
  }
})
