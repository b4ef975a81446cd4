// 1. Two clients converge on Y.Text, Y.Map, Y.Array and Y.XmlFragment, in both directions.
import { before, after } from 'node:test'
import assert from 'node:assert/strict'
import {
  test, startRipple, cleanup, connectSynced, uniqueRoom, waitFor, editAllTypes, snapshot, sameState
} from './lib.mjs'

let server
before(async () => { server = await startRipple() })
after(cleanup)

async function converge (kindA, kindB) {
  const room = uniqueRoom(`conv-${kindA}-${kindB}`)
  const a = await connectSynced(server, room, { kind: kindA })
  const b = await connectSynced(server, room, { kind: kindB })
  try {
    // A -> B
    editAllTypes(a.doc, 'from-a')
    await waitFor(() => sameState(a.doc, b.doc), 5000,
      { describe: () => `B to see A's edits: A=${JSON.stringify(snapshot(a.doc))} B=${JSON.stringify(snapshot(b.doc))}` })
    assert.deepEqual(snapshot(b.doc), {
      text: '[from-a]',
      map: { 'from-a': { by: 'from-a', n: 1 } },
      array: ['from-a', { nested: ['from-a'] }],
      xml: '<p data-tag="from-a">xml from-a</p>'
    })
    // B -> A
    editAllTypes(b.doc, 'from-b')
    b.doc.getMap('map').delete('from-a')
    b.doc.getText('text').delete(0, 1)
    await waitFor(() => sameState(a.doc, b.doc), 5000,
      { describe: () => `A to see B's edits: A=${JSON.stringify(snapshot(a.doc))} B=${JSON.stringify(snapshot(b.doc))}` })
    assert.deepEqual(snapshot(a.doc), {
      text: 'from-a][from-b]',
      map: { 'from-b': { by: 'from-b', n: 1 } },
      array: ['from-a', { nested: ['from-a'] }, 'from-b', { nested: ['from-b'] }],
      xml: '<p data-tag="from-a">xml from-a</p><p data-tag="from-b">xml from-b</p>'
    })
    // Concurrent edits from both sides at once
    a.doc.getText('text').insert(0, 'A')
    b.doc.getText('text').insert(0, 'B')
    a.doc.getMap('map').set('k', 'a')
    b.doc.getMap('map').set('k', 'b')
    await waitFor(() => sameState(a.doc, b.doc) && a.doc.getText('text').length === 17, 5000,
      { describe: () => `concurrent edits to converge: A=${JSON.stringify(snapshot(a.doc))} B=${JSON.stringify(snapshot(b.doc))}` })
  } finally {
    a.destroy()
    b.destroy()
  }
}

test('y-websocket WebsocketProvider (ws://HOST/ROOM): two clients converge on Text, Map, Array, XmlFragment', () => converge('ws', 'ws'))
test('y-partykit YPartyKitProvider (/parties/main/ROOM?_pk=..&token=x): two clients converge on all types', () => converge('pk', 'pk'))
test('stock WebsocketProvider with base ws://HOST/parties/main: two clients converge on all types', () => converge('ws-parties', 'ws-parties'))
test('YPartyKitProvider and stock WebsocketProvider on /parties/main/ROOM share the room', () => converge('pk', 'ws-parties'))
