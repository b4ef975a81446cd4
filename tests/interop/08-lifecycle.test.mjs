// 8. Health check, clean shutdown on SIGTERM (exit code 0, providers observe a close), and
//    edits surviving a SIGTERM restart on the same data dir.
import { after } from 'node:test'
import assert from 'node:assert/strict'
import {
  test, startRipple, cleanup, connectSynced, uniqueRoom, waitFor, sameState, IS_REFERENCE
} from './lib.mjs'

after(cleanup)

test('GET /healthz returns 200', async () => {
  const server = await startRipple()
  try {
    const res = await fetch(`${server.httpUrl}/healthz`)
    assert.equal(res.status, 200)
    await res.arrayBuffer()
  } finally {
    await server.stop()
  }
})

test('SIGTERM: server exits with code 0 and connected providers observe a close', async () => {
  const server = await startRipple()
  const room = uniqueRoom('sigterm')
  const a = await connectSynced(server, room, { kind: 'ws-parties' })
  const b = await connectSynced(server, room, { kind: 'pk' })
  try {
    a.doc.getText('text').insert(0, 'bye')
    await waitFor(() => sameState(a.doc, b.doc), 5000, { describe: 'sync before shutdown' })
    const t0 = Date.now()
    const exit = await server.stop({ signal: 'SIGTERM', timeoutMs: 10000 })
    const logs = server.logs()
    assert.deepEqual(exit, { code: 0, signal: null }, `exit after SIGTERM (${Date.now() - t0} ms)\n${logs}`)
    assert.ok(!server.killedByHarness, 'exited without SIGKILL')
    await waitFor(() => a.closeEvents.length > 0 && b.closeEvents.length > 0, 5000,
      { describe: () => `both providers to see a close (a: ${a.closeEvents}, b: ${b.closeEvents})` })
    assert.ok(!a.provider.wsconnected && !b.provider.wsconnected)
  } finally {
    a.destroy()
    b.destroy()
  }
})

test('edits acknowledged by the room survive a SIGTERM restart on the same data dir',
  { skip: IS_REFERENCE && 'the reference server does not persist' }, async () => {
  let server = await startRipple()
  const dataDir = server.dataDir
  const room = uniqueRoom('persist')
  const pkRoom = uniqueRoom('persist-pk')
  const a = await connectSynced(server, room, { kind: 'ws' })
  const b = await connectSynced(server, room, { kind: 'ws' })
  const p = await connectSynced(server, pkRoom, { kind: 'pk' })
  const q = await connectSynced(server, pkRoom, { kind: 'pk' })
  try {
    a.doc.getText('text').insert(0, 'persisted text')
    a.doc.getMap('map').set('k', 'v')
    p.doc.getArray('array').push(['pk', 1])
    // Once another client has the edit, the server has applied it.
    await waitFor(() => sameState(a.doc, b.doc) && sameState(p.doc, q.doc), 5000, { describe: 'edits relayed' })
    for (const c of [a, b, p, q]) c.destroy()
    const exit = await server.stop()
    assert.deepEqual(exit, { code: 0, signal: null })
    server = await startRipple({ dataDir })
    const c = await connectSynced(server, room, { kind: 'ws' })
    const r = await connectSynced(server, pkRoom, { kind: 'pk' })
    assert.equal(c.doc.getText('text').toString(), 'persisted text')
    assert.deepEqual(c.doc.getMap('map').toJSON(), { k: 'v' })
    assert.deepEqual(r.doc.getArray('array').toJSON(), ['pk', 1])
    c.destroy()
    r.destroy()
  } finally {
    for (const c of [a, b, p, q]) c.destroy()
    await server.stop()
  }
})
