// 6. A 2.5 MB update sent through YPartyKitProvider (chunked by the client into y-pk-batch
//    frames) arrives intact at other clients.
import { before, after } from 'node:test'
import assert from 'node:assert/strict'
import {
  test, startRipple, cleanup, connect, connectSynced, synced, uniqueRoom, waitFor, pseudoRandomText, batchSpy, Y
} from './lib.mjs'

let server
before(async () => { server = await startRipple() })
after(cleanup)

const SIZE = 2_500_000
const BIG = pseudoRandomText(SIZE)

test('2.5 MB Y.Text insert through YPartyKitProvider (chunked) reaches another client intact', async () => {
  const room = uniqueRoom('big-update')
  const spy = batchSpy()
  const a = await connectSynced(server, room, { kind: 'pk', WebSocketPolyfill: spy.WebSocket })
  const b = await connectSynced(server, room, { kind: 'pk' })
  try {
    a.doc.getText('text').insert(0, BIG)
    assert.equal(spy.start, 1, 'the client chunked the update (one y-pk-batch start marker)')
    assert.equal(spy.end, 1)
    assert.equal(spy.binaryChunks, 3)
    await waitFor(() => b.doc.getText('text').length === SIZE, 15000,
      { describe: () => `B to receive the 2.5 MB text (has ${b.doc.getText('text').length} chars)` })
    assert.ok(b.doc.getText('text').toString() === BIG, 'content intact')
    // The big message did not cost A its connection.
    assert.deepEqual(a.closeEvents, [])
    assert.deepEqual(b.closeEvents, [])
    // Small edits keep flowing afterwards, and a late joiner gets the whole document.
    b.doc.getText('text').insert(0, 'after')
    await waitFor(() => a.doc.getText('text').length === SIZE + 5, 5000, { describe: 'small edit after the big one' })
    const c = await connectSynced(server, room, { kind: 'ws-parties' })
    try {
      assert.equal(c.doc.getText('text').toString(), 'after' + BIG)
    } finally {
      c.destroy()
    }
  } finally {
    a.destroy()
    b.destroy()
  }
})

test('2.5 MB offline document pushed as chunked sync step 2 on connect reaches a joiner intact', async () => {
  const room = uniqueRoom('big-step2')
  const doc = new Y.Doc()
  doc.getText('text').insert(0, BIG)
  doc.getMap('map').set('big', true)
  const spy = batchSpy()
  const a = connect(server, room, { kind: 'pk', doc, WebSocketPolyfill: spy.WebSocket })
  try {
    await synced(a, 10000)
    // A answers the server's sync step 1 with a 2.5 MB step 2: chunked by the client.
    await waitFor(() => spy.end >= 1, 5000, { describe: 'A to send its state as a chunked batch' })
    const b = connect(server, room, { kind: 'pk' })
    try {
      await waitFor(() => b.doc.getText('text').length === SIZE, 15000,
        { describe: () => `joiner to receive the 2.5 MB state (has ${b.doc.getText('text').length} chars)` })
      assert.ok(b.doc.getText('text').toString() === BIG, 'content intact')
      assert.equal(b.doc.getMap('map').get('big'), true)
    } finally {
      b.destroy()
    }
  } finally {
    a.destroy()
  }
})
