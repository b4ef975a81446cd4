// 9. Auth: a real YPartyKitProvider passing `params: { token }` against `ripple serve` started
//    with RIPPLE_AUTH_JWT_SECRET; tokens are minted with the binary's `ripple token` command.
import { before, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import {
  test, startRipple, cleanup, connect, connectSynced, uniqueRoom, waitFor, rawConnect,
  rippleBin, IS_REFERENCE
} from './lib.mjs'

const SECRET = 'interop-auth-secret'
// The reference stand-in has no auth.
const skip = IS_REFERENCE ? 'the reference server has no auth' : false

/** `ripple token --secret SECRET ...args`; the token is the last line of stdout. */
function mintToken (...args) {
  const out = execFileSync(rippleBin(), ['token', '--secret', SECRET, ...args], { encoding: 'utf8' })
  return out.trim().split('\n').pop()
}

let server
before(async () => {
  if (!IS_REFERENCE) server = await startRipple({ env: { RIPPLE_AUTH_JWT_SECRET: SECRET } })
})
after(cleanup)

test('YPartyKitProvider with params: { token } connects and syncs; a read-only token cannot edit', { skip }, async () => {
  const room = uniqueRoom('doc-auth')
  const write = mintToken('--room', 'doc-*', '--access', 'write', '--ttl', '10m', '--sub', 'alice')
  const read = mintToken('--room', 'doc-*', '--access', 'read', '--ttl', '10m', '--sub', 'bob')
  const a = await connectSynced(server, room, { kind: 'pk', params: { token: write } })
  const b = await connectSynced(server, room, { kind: 'pk', params: { token: write } })
  try {
    a.doc.getText('text').insert(0, 'hello')
    await waitFor(() => b.doc.getText('text').toString() === 'hello', 5000,
      { describe: () => `B to get A's edit; has ${b.doc.getText('text')}` })

    const r = await connectSynced(server, room, { kind: 'pk', params: { token: read } })
    assert.equal(r.doc.getText('text').toString(), 'hello', 'a reader gets the full state')
    r.doc.getText('text').insert(0, 'sneaky ')
    a.doc.getText('text').insert(5, '!')
    await waitFor(() => r.doc.getText('text').toString().includes('!'), 5000,
      { describe: () => `the reader to get live updates; has ${r.doc.getText('text')}` })
    // The server handles a socket's messages in order: once A and B have the reader's
    // awareness, sent after its refused edit, that edit had its chance to reach them.
    r.awareness.setLocalStateField('marker', 'after-edit')
    await waitFor(() => [a, b].every((c) => c.awareness.getStates().get(r.doc.clientID)?.marker === 'after-edit'), 5000,
      { describe: 'the reader\'s awareness (sent after its edit) to reach A and B' })
    assert.equal(a.doc.getText('text').toString(), 'hello!')
    assert.equal(b.doc.getText('text').toString(), 'hello!')

    // A late writer gets what the server holds: the reader's edit is not there.
    const late = await connectSynced(server, room, { kind: 'pk', params: { token: write } })
    assert.equal(late.doc.getText('text').toString(), 'hello!')
  } finally {
    a.destroy()
    b.destroy()
  }
})

test('missing, wrong-room and forged tokens are refused with HTTP errors before the upgrade', { skip }, async () => {
  const room = uniqueRoom('doc-auth-refused')
  const url = (query) => `${server.wsBase}/parties/main/${room}?_pk=x${query}`
  const otherRoom = mintToken('--room', 'diagram-*')
  const forged = execFileSync(rippleBin(), ['token', '--secret', 'not-the-secret', '--room', 'doc-*'],
    { encoding: 'utf8' }).trim().split('\n').pop()
  for (const [query, status] of [['', 401], [`&token=${otherRoom}`, 403], [`&token=${forged}`, 401]]) {
    const raw = rawConnect(url(query))
    const statusCode = await new Promise((resolve) => {
      raw.ws.once('unexpected-response', (_req, res) => { resolve(res.statusCode); raw.close() })
      raw.ws.once('open', () => resolve('open'))
    })
    assert.equal(statusCode, status, `query ${query.slice(0, 20)}...`)
  }

  // A provider with a bad token never syncs (it keeps retrying in the background).
  const c = connect(server, room, { kind: 'pk', params: { token: forged } })
  let refusals = 0
  c.provider.on('connection-close', () => { refusals++ })
  await waitFor(() => refusals >= 2, 10000, { describe: 'the provider to be refused twice' })
  assert.equal(c.provider.synced, false)
  c.destroy()
})
