// 5. Rooms whose names share a prefix (doc, doc-1, doc-10) stay isolated.
import { before, after } from 'node:test'
import assert from 'node:assert/strict'
import {
  test, startRipple, cleanup, connectSynced, uniqueRoom, waitFor, snapshot
} from './lib.mjs'

let server
before(async () => { server = await startRipple() })
after(cleanup)

for (const kind of ['ws', 'pk']) {
  test(`[${kind}] rooms doc, doc-1, doc-10 (shared prefix) stay isolated`, async () => {
    const base = uniqueRoom(`doc-${kind}`)
    const rooms = [base, `${base}-1`, `${base}-10`]
    const writers = []
    const readers = []
    try {
      for (const room of rooms) {
        writers.push(await connectSynced(server, room, { kind }))
        readers.push(await connectSynced(server, room, { kind }))
      }
      rooms.forEach((room, i) => {
        writers[i].doc.getText('text').insert(0, `content of ${room}`)
        writers[i].doc.getMap('map').set(room, i)
        writers[i].awareness.setLocalStateField('room', room)
      })
      for (let i = 0; i < rooms.length; i++) {
        await waitFor(() => readers[i].doc.getText('text').toString() === `content of ${rooms[i]}`, 5000,
          { describe: () => `reader of ${rooms[i]} to get its content; has ${readers[i].doc.getText('text')}` })
      }
      // Every room's content was written to all of that room's sockets before its reader saw
      // it. A marker edit per room now reaches each reader after anything misrouted to it.
      writers.forEach((w) => w.doc.getMap('marker').set('done', true))
      for (let i = 0; i < rooms.length; i++) {
        await waitFor(() => readers[i].doc.getMap('marker').get('done') === true, 5000,
          { describe: `reader of ${rooms[i]} to get its marker` })
      }
      rooms.forEach((room, i) => {
        assert.deepEqual(snapshot(readers[i].doc), {
          text: `content of ${room}`, map: { [room]: i }, array: [], xml: ''
        }, `reader of ${room} sees only its own room`)
        const foreign = [...readers[i].awareness.getStates().values()]
          .filter((s) => s.room !== undefined && s.room !== room)
        assert.deepEqual(foreign, [], `no foreign awareness in ${room}`)
      })
      // Fresh joiners get exactly their room's state from the server.
      for (let i = 0; i < rooms.length; i++) {
        const c = await connectSynced(server, rooms[i], { kind })
        try {
          assert.equal(c.doc.getText('text').toString(), `content of ${rooms[i]}`)
          assert.deepEqual(c.doc.getMap('map').toJSON(), { [rooms[i]]: i })
        } finally {
          c.destroy()
        }
      }
    } finally {
      for (const c of [...writers, ...readers]) c.destroy()
    }
  })
}
