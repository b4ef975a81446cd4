// 2. A late joiner gets the full state after the others left (room still loaded: connect < 1 s).
import { before, after } from 'node:test'
import assert from 'node:assert/strict'
import {
  test, startRipple, cleanup, connect, connectSynced, synced, uniqueRoom, waitFor, editAllTypes,
  snapshot, sameState, stateVector
} from './lib.mjs'

let server
before(async () => { server = await startRipple() })
after(cleanup)

async function lateJoiner (kind) {
  const room = uniqueRoom(`late-${kind}`)
  const a = await connectSynced(server, room, { kind })
  const b = await connectSynced(server, room, { kind })
  editAllTypes(a.doc, 'a')
  editAllTypes(b.doc, 'b')
  for (let i = 0; i < 50; i++) a.doc.getText('text').insert(0, `${i},`)
  await waitFor(() => sameState(a.doc, b.doc), 5000, { describe: 'A and B to converge' })
  const expected = snapshot(a.doc)
  const expectedSv = stateVector(a.doc)
  a.destroy()
  b.destroy()
  const leftAt = Date.now()
  await new Promise((resolve) => setTimeout(resolve, 200))
  const c = connect(server, room, { kind })
  try {
    await synced(c)
    assert.ok(Date.now() - leftAt < 1500, 'late joiner connected within ~1 s of the others leaving')
    // Sync step 2 from the server must already carry the whole document.
    assert.deepEqual(snapshot(c.doc), expected)
    assert.deepEqual(stateVector(c.doc), expectedSv)
  } finally {
    c.destroy()
  }
}

test('late joiner (WebsocketProvider) receives the full state in sync step 2 after the others left', () => lateJoiner('ws'))
test('late joiner (YPartyKitProvider) receives the full state in sync step 2 after the others left', () => lateJoiner('pk'))
