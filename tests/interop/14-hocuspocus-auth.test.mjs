// 14. Hocuspocus token auth inside the socket, with the server's JWT rules (the room is the
//     document): valid, invalid, read-only, expired mid-session; for provider 2.15.x and 3.4.x.
import { after } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { test, startRipple, cleanup, uniqueRoom, waitFor, connectSynced, IS_REFERENCE } from './lib.mjs'
import {
  HP, hpConnect, hpSocket, hpSynced, destroyAllHp, mintToken, configFile
} from './hocuspocus-lib.mjs'

const skip = IS_REFERENCE ? 'the reference server does not speak Hocuspocus' : false
const SECRET = 'hp-auth-secret'
// No leeway, so that a short-lived token expires within the test.
const CONFIG = `[auth]\nmode = "jwt"\nsecret = "${SECRET}"\nleeway = "0s"\n`

after(async () => {
  destroyAllHp()
  await cleanup()
})

let shared
async function server () {
  if (!shared) shared = await startRipple({ extraArgs: ['--config', configFile(CONFIG)] })
  return shared
}

for (const [version, lib] of Object.entries(HP)) {
  test(`${version}: a valid token authenticates read-write; an invalid one fires authenticationFailed`, { skip }, async () => {
    const s = await server()
    const name = uniqueRoom(`doc-hpauth-${version}`)
    const good = await hpSynced(lib, s, name, { token: mintToken(SECRET, '--room', 'doc-*') })
    assert.equal(good.provider.authorizedScope, 'read-write')
    const bad = hpConnect(lib, s, name, { token: 'not-a-jwt' })
    await waitFor(() => bad.failures.length > 0, 5000, { describe: 'authenticationFailed for a bad token' })
    assert.match(bad.failures[0], /unauthorized/i)
    const wrongRoom = hpConnect(lib, s, name, { token: mintToken(SECRET, '--room', 'other-*') })
    await waitFor(() => wrongRoom.failures.length > 0, 5000, { describe: 'authenticationFailed for another room' })
    assert.match(wrongRoom.failures[0], /forbidden/i)
    assert.equal(bad.provider.isSynced, false)
    assert.equal(wrongRoom.provider.isSynced, false)
  })

  test(`${version}: a read-only token: scope readonly, its edits reach nobody and are not stored`, { skip }, async () => {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ripple-hp-ro-'))
    const s = await startRipple({ dataDir, extraArgs: ['--config', configFile(CONFIG)] })
    const name = uniqueRoom(`doc-hpro-${version}`)
    const writer = await hpSynced(lib, s, name, { token: mintToken(SECRET, '--room', 'doc-*') })
    writer.doc.getText('text').insert(0, 'hello')
    await waitFor(() => writer.provider.unsyncedChanges === 0, 5000)
    const reader = await hpSynced(lib, s, name, { token: mintToken(SECRET, '--room', 'doc-*', '--access', 'read') })
    assert.equal(reader.provider.authorizedScope, 'readonly')
    assert.equal(reader.doc.getText('text').toString(), 'hello', 'a reader gets the document')
    // Its answer to our step 1 brings nothing new: acknowledged, as Hocuspocus does.
    await waitFor(() => reader.provider.unsyncedChanges === 0, 5000,
      { describe: () => `the reader's sync acknowledged (unsyncedChanges ${reader.provider.unsyncedChanges})` })
    reader.doc.getText('text').insert(0, 'sneaky ')
    // Its update is answered with SyncStatus 0: unsyncedChanges never reaches 0 again.
    // Then its awareness, sent after the edit on the same socket, reaching the writer shows
    // that the edit had its chance to reach it too.
    reader.provider.setAwarenessField('marker', 'after-edit')
    await waitFor(() => writer.provider.awareness.getStates().get(reader.doc.clientID)?.marker === 'after-edit', 5000,
      { describe: 'the reader\'s awareness to reach the writer' })
    assert.equal(writer.doc.getText('text').toString(), 'hello', 'the read-only edit reached the writer')
    assert.ok(reader.provider.unsyncedChanges > 0, 'the read-only edit was acknowledged')
    writer.doc.getText('text').insert(5, '!')
    await waitFor(() => reader.doc.getText('text').toString().includes('!'), 5000, { describe: 'the reader gets live updates' })
    // Nothing of it was stored.
    reader.destroy()
    writer.destroy()
    await s.stop()
    const again = await startRipple({ dataDir, extraArgs: ['--config', configFile(CONFIG)] })
    const check = await hpSynced(lib, again, name, { token: mintToken(SECRET, '--room', 'doc-*') })
    assert.equal(check.doc.getText('text').toString(), 'hello!')
    await again.stop()
  })

  test(`${version}: a token that expires mid-session ends that document only`, { skip }, async () => {
    const s = await server()
    const prefix = uniqueRoom(`doc-hpexp-${version}`)
    const socket = hpSocket(lib, s)
    const short = hpConnect(lib, s, `${prefix}-a`, { socket, token: mintToken(SECRET, '--room', 'doc-*', '--ttl', '2s') })
    const long = hpConnect(lib, s, `${prefix}-b`, { socket, token: mintToken(SECRET, '--room', 'doc-*') })
    await waitFor(() => short.provider.isSynced && long.provider.isSynced, 5000)
    await waitFor(() => short.failures.length > 0, 8000, { describe: 'authenticationFailed when the token expires' })
    assert.match(short.failures[0], /expired/)
    // Its later edits go nowhere; the other document on the same socket still works.
    short.doc.getText('text').insert(0, 'too late')
    long.doc.getText('text').insert(0, 'fine')
    // The socket handles its frames in order: once the later one is acknowledged, the earlier
    // one was dropped or handed to its room, and a client joining that room afterwards would
    // get it.
    await waitFor(() => long.provider.unsyncedChanges === 0, 5000, { describe: 'the other document is still acknowledged' })
    const fresh = await connectSynced(s, `${prefix}-a`, { kind: 'ws', params: { token: mintToken(SECRET, '--room', 'doc-*') } })
    assert.equal(fresh.doc.getText('text').toString(), '', 'an edit after expiry reached the room')
    assert.equal(socket.webSocket?.readyState, 1, 'the shared socket stays open')
  })
}
