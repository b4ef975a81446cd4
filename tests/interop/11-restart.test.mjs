// 11. Restart: what real JS clients wrote is there after the server stops and starts again, on
// the embedded SQLite store and on Postgres (RIPPLE_TEST_DATABASE_URL; required when
// RIPPLE_REQUIRE_SERVICES=1).
import { after } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {
  test, startRipple, cleanup, connect, connectSynced, synced, uniqueRoom, waitFor, editAllTypes,
  snapshot, sameState, IS_REFERENCE
} from './lib.mjs'

after(cleanup)

async function restartKeepsEverything (extraArgs) {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ripple-restart-'))
  const room = uniqueRoom('restart')
  let server = await startRipple({ dataDir, extraArgs })
  const a = await connectSynced(server, room, { kind: 'ws' })
  const b = await connectSynced(server, room, { kind: 'pk' })
  editAllTypes(a.doc, 'a')
  editAllTypes(b.doc, 'b')
  for (let i = 0; i < 100; i++) a.doc.getText('text').insert(0, `${i};`)
  await waitFor(() => sameState(a.doc, b.doc), 5000, { describe: 'writers to converge' })
  const expected = snapshot(a.doc)
  a.destroy()
  b.destroy()
  const exit = await server.stop()
  assert.equal(exit.code, 0, 'clean exit on SIGTERM')

  server = await startRipple({ dataDir, extraArgs })
  const fresh = connect(server, room, { kind: 'ws-parties' })
  await synced(fresh, 10000)
  assert.deepEqual(snapshot(fresh.doc), expected)
  fresh.destroy()
  await server.stop()
}

test('SQLite: a fresh client after a restart sees everything', { skip: IS_REFERENCE && 'no persistence' },
  () => restartKeepsEverything([]))

const pg = process.env.RIPPLE_TEST_DATABASE_URL
const required = process.env.RIPPLE_REQUIRE_SERVICES === '1'
test('Postgres: a fresh client after a restart sees everything',
  { skip: (IS_REFERENCE && 'no persistence') || (!pg && !required && 'RIPPLE_TEST_DATABASE_URL not set') },
  () => {
    assert.ok(pg, 'RIPPLE_TEST_DATABASE_URL must be set when RIPPLE_REQUIRE_SERVICES=1')
    return restartKeepsEverything(['--storage', pg])
  })
