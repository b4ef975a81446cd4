// 3. Edits made offline merge on reconnect.
import { before, after } from 'node:test'
import assert from 'node:assert/strict'
import {
  test, startRipple, cleanup, connectSynced, synced, uniqueRoom, waitFor, snapshot, sameState
} from './lib.mjs'

let server
before(async () => { server = await startRipple() })
after(cleanup)

async function offlineMerge (kind) {
  const room = uniqueRoom(`offline-${kind}`)
  const a = await connectSynced(server, room, { kind })
  const b = await connectSynced(server, room, { kind })
  try {
    a.doc.getText('text').insert(0, 'shared ')
    a.doc.getMap('map').set('k', 'initial')
    await waitFor(() => sameState(a.doc, b.doc), 5000, { describe: 'initial sync' })

    // A goes offline.
    a.provider.disconnect()
    await waitFor(() => !a.provider.wsconnected && a.provider.ws === null, 5000, { describe: 'A to disconnect' })

    // Both sides edit while A is offline (B stays online).
    a.doc.getText('text').insert(a.doc.getText('text').length, 'A-offline ')
    a.doc.getArray('array').push(['a1', 'a2'])
    a.doc.getMap('map').set('a', 1)
    a.doc.getMap('map').set('k', 'from-a')
    b.doc.getText('text').insert(0, 'B-online ')
    b.doc.getArray('array').push(['b1'])
    b.doc.getMap('map').set('b', 2)
    b.doc.getMap('map').set('k', 'from-b')
    // B's edits are on the server (a probe that joins now gets them): had A still been in the
    // room it would have been sent them by now.
    const probe = await connectSynced(server, room, { kind })
    try {
      await waitFor(() => probe.doc.getText('text').toString().includes('B-online'), 5000,
        { describe: 'B edits to reach the server' })
    } finally {
      probe.destroy()
    }
    assert.ok(!a.doc.getText('text').toString().includes('B-online'), 'offline A must not see B edits')
    assert.ok(!b.doc.getText('text').toString().includes('A-offline'), 'B must not see offline A edits')

    // B goes offline too and edits; then both reconnect.
    b.provider.disconnect()
    await waitFor(() => !b.provider.wsconnected && b.provider.ws === null, 5000, { describe: 'B to disconnect' })
    b.doc.getText('text').insert(b.doc.getText('text').length, 'B-offline')

    a.provider.connect()
    b.provider.connect()
    await synced(a)
    await synced(b)
    await waitFor(() => sameState(a.doc, b.doc), 5000,
      { describe: () => `merge: A=${JSON.stringify(snapshot(a.doc))} B=${JSON.stringify(snapshot(b.doc))}` })
    const s = snapshot(a.doc)
    for (const part of ['shared', 'A-offline', 'B-online', 'B-offline']) {
      assert.ok(s.text.includes(part), `merged text ${JSON.stringify(s.text)} contains ${part}`)
    }
    assert.equal(s.text.length, 'shared A-offline B-online B-offline'.length)
    assert.deepEqual([...s.array].sort(), ['a1', 'a2', 'b1'])
    assert.equal(s.map.a, 1)
    assert.equal(s.map.b, 2)
    assert.ok(['from-a', 'from-b'].includes(s.map.k))
  } finally {
    a.destroy()
    b.destroy()
  }
}

test('offline edits on both sides merge on reconnect (WebsocketProvider)', () => offlineMerge('ws'))
test('offline edits on both sides merge on reconnect (YPartyKitProvider)', () => offlineMerge('pk'))
