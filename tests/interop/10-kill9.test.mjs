// 10. Nothing an observer has seen is lost when the server is killed with SIGKILL.
//
// Real JS writers stream uniquely tagged edits; an observer records every tag the server relayed
// to it. The server is killed mid-stream at a random moment and restarted on the same data dir;
// a fresh client must find every tag the observer had seen (the server stores an update before
// it relays it). Writers are destroyed at the kill so they cannot re-send what was lost.
import { after } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import {
  test, startRipple, cleanup, connect, connectSynced, synced, uniqueRoom, sleep, IS_REFERENCE
} from './lib.mjs'

after(cleanup)

const ROUNDS = 4

async function round (dataDir, i) {
  const server = await startRipple({ dataDir })
  const room = uniqueRoom(`kill9-${i}`)
  const writers = [
    await connectSynced(server, room, { kind: 'ws' }),
    await connectSynced(server, room, { kind: 'pk' })
  ]
  const observer = await connectSynced(server, room, { kind: 'ws-parties' })
  const seen = new Set()
  observer.doc.getMap('tags').observe((ev) => {
    for (const key of ev.keysChanged) seen.add(key)
  })
  let n = 0
  const timers = writers.map((w, wi) => setInterval(() => {
    for (let k = 0; k < 5; k++) w.doc.getMap('tags').set(`w${wi}-${n++}`, Date.now())
  }, 2))
  await sleep(150 + Math.floor(Math.random() * 600))
  server.proc.kill('SIGKILL')
  for (const t of timers) clearInterval(t)
  for (const w of writers) w.destroy()
  const seenAtKill = new Set(seen)
  observer.destroy()
  const exit = await server.exited
  assert.equal(exit.signal, 'SIGKILL')
  assert.ok(seenAtKill.size > 0, 'the observer saw edits before the kill')

  const restarted = await startRipple({ dataDir })
  const check = connect(restarted, room, { kind: 'ws' })
  await synced(check, 10000)
  const stored = new Set(check.doc.getMap('tags').keys())
  const lost = [...seenAtKill].filter((tag) => !stored.has(tag))
  check.destroy()
  await restarted.stop()
  return { seen: seenAtKill.size, written: n, stored: stored.size, lost }
}

test('every edit an observer received survives kill -9 (several random kill points)', { skip: IS_REFERENCE && 'the reference server keeps nothing' }, async () => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ripple-kill9-'))
  for (let i = 0; i < ROUNDS; i++) {
    const r = await round(dataDir, i)
    assert.deepEqual(r.lost, [], `round ${i}: ${r.lost.length} of ${r.seen} observed tags lost ` +
      `(written ${r.written}, stored ${r.stored})`)
    console.log(`round ${i}: observer saw ${r.seen} of ${r.written} written tags; ${r.stored} stored after restart`)
  }
})
