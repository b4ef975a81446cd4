// 7. Garbage frames close only the offending socket (1002 protocol error, or 1003/1007 where
//    applicable), while providers in the same room keep syncing.
import { before, after } from 'node:test'
import assert from 'node:assert/strict'
import {
  test, startRipple, cleanup, connectSynced, uniqueRoom, waitFor, rawConnect, pseudoRandomBytes,
  pseudoRandomText, MSG_SYNC, sameState
} from './lib.mjs'

let server, room, a, b
before(async () => {
  server = await startRipple()
  room = uniqueRoom('garbage')
  a = await connectSynced(server, room, { kind: 'ws' })
  b = await connectSynced(server, room, { kind: 'ws' })
  a.doc.getText('text').insert(0, 'before')
  await waitFor(() => sameState(a.doc, b.doc), 5000, { describe: 'initial sync' })
})
after(cleanup)

// Random bytes whose first varint is > 127 (continuation bit set): an unknown message type.
const randomBytes = pseudoRandomBytes(64, 0xdeadbeef)
randomBytes[0] |= 0x80
randomBytes[1] |= 0x80

const BINARY_CODES = [1002, 1007]
const TEXT_CODES = [1002, 1003, 1007]

const cases = [
  { name: 'random bytes', frame: randomBytes, codes: BINARY_CODES },
  { name: 'truncated varint [0x00, 0x80]', frame: Uint8Array.of(0x00, 0x80), codes: BINARY_CODES },
  { name: 'unknown message type 0x63', frame: Uint8Array.of(0x63), codes: BINARY_CODES },
  { name: 'unknown sync sub-type [0x00, 0x07, 0x00]', frame: Uint8Array.of(0x00, 0x07, 0x00), codes: BINARY_CODES },
  { name: 'sync update with a corrupt Yjs update', frame: Uint8Array.of(0x00, 0x02, 0x04, 0x05, 0xff, 0xff, 0xff), codes: BINARY_CODES },
  { name: 'text frame that is not a y-pk-batch marker', frame: 'hello, not a batch', codes: TEXT_CODES },
  { name: 'y-pk-batch marker with invalid JSON', frame: 'y-pk-batch#{not json', codes: TEXT_CODES }
]

const recorded = {}

for (const c of cases) {
  test(`garbage frame (${c.name}) closes that socket with ${c.codes.join('/')}`, async (t) => {
    const raw = rawConnect(`${server.wsBase}/${room}`)
    try {
      await raw.opened
      // Wait until the server has set the connection up (it sends sync step 1 first).
      await waitFor(() => raw.binaryFrames().some((m) => m.type === MSG_SYNC), 3000, { describe: 'server step 1' })
      raw.ws.send(c.frame)
      const timeout = new Promise((resolve) => setTimeout(() => resolve(null), 3000))
      const info = await Promise.race([raw.closed, timeout])
      recorded[c.name] = info
      t.diagnostic(`server closed with ${JSON.stringify(info)}`)
      assert.ok(info, 'server closed the socket within 3 s')
      assert.ok(![1000, 1005, 1006].includes(info.code), `close code ${info.code} is not a normal/absent close`)
      assert.ok(c.codes.includes(info.code), `close code ${info.code} is one of ${c.codes.join('/')}`)
    } finally {
      raw.close()
    }
  })
}

test('providers in the same room stayed connected and keep syncing after the garbage', async () => {
  assert.deepEqual(a.closeEvents, [], 'A was not disconnected')
  assert.deepEqual(b.closeEvents, [], 'B was not disconnected')
  a.doc.getText('text').insert(0, 'A:')
  b.doc.getMap('map').set('after', 'garbage')
  await waitFor(() => sameState(a.doc, b.doc) && b.doc.getText('text').toString() === 'A:before' &&
    a.doc.getMap('map').get('after') === 'garbage', 5000, { describe: 'sync after garbage' })
  // A new client still gets the (uncorrupted) state.
  const c = await connectSynced(server, room, { kind: 'ws' })
  try {
    assert.equal(c.doc.getText('text').toString(), 'A:before')
    assert.deepEqual(c.doc.getMap('map').toJSON(), { after: 'garbage' })
  } finally {
    c.destroy()
  }
})

// Oversized messages: close 1009 (message too big) or 1007. A separate server with a small
// limit (`--max-message-bytes`, default 32 MiB) keeps the test cheap.
const LIMIT = 1_500_000
const OVERSIZED_CODES = [1007, 1009]

test(`oversized unchunked frame (2.5 MB, limit ${LIMIT}) from WebsocketProvider is closed with 1009/1007`, async () => {
  const small = await startRipple({ extraArgs: ['--max-message-bytes', String(LIMIT)] })
  const room = uniqueRoom('oversize-ws')
  const big = await connectSynced(small, room, { kind: 'ws' })
  const other = await connectSynced(small, room, { kind: 'ws' })
  try {
    big.doc.getText('text').insert(0, pseudoRandomText(2_500_000))
    await waitFor(() => big.closeEvents.length > 0, 5000, { describe: 'the sender to be disconnected' })
    assert.ok(OVERSIZED_CODES.includes(big.closeEvents[0]), `close code ${big.closeEvents[0]} is 1009/1007`)
    assert.deepEqual(other.closeEvents, [], 'only the offending connection is closed')
  } finally {
    big.destroy()
    other.destroy()
    await small.stop()
  }
})

test(`oversized chunked y-pk-batch (2.5 MB, limit ${LIMIT}) from YPartyKitProvider is closed with 1009/1007`, async () => {
  const small = await startRipple({ extraArgs: ['--max-message-bytes', String(LIMIT)] })
  const room = uniqueRoom('oversize-pk')
  const big = await connectSynced(small, room, { kind: 'pk' })
  const other = await connectSynced(small, room, { kind: 'pk' })
  try {
    // sendChunked writes start marker, 3 binary chunks and the end marker back to back.
    big.doc.getText('text').insert(0, pseudoRandomText(2_500_000))
    await waitFor(() => big.closeEvents.length > 0, 5000, { describe: 'the sender to be disconnected' })
    assert.ok(OVERSIZED_CODES.includes(big.closeEvents[0]),
      `close code ${big.closeEvents[0]} is 1009/1007 (1006 = the close frame never reached the client)`)
    assert.deepEqual(other.closeEvents, [], 'only the offending connection is closed')
  } finally {
    big.destroy()
    other.destroy()
    await small.stop()
  }
})
