// 15. Three Ripple nodes on one Postgres database, real y-websocket clients spread over them in
//     one room: the nodes that do not own the room forward their clients to the one that does.
//     All converge live; a late joiner on another node gets the full state; awareness from a
//     client on node 2 reaches node 3 and disappears when that client's socket is killed.
//     Needs RIPPLE_TEST_DATABASE_URL (a Postgres it may create a database in); without it the
//     test is skipped (and fails under RIPPLE_REQUIRE_SERVICES=1).
import { after } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import {
  test, startRipple, cleanup, connectSynced, uniqueRoom, waitFor, killSocketAbruptly, IS_REFERENCE
} from './lib.mjs'

after(cleanup)

const ADMIN_URL = process.env.RIPPLE_TEST_DATABASE_URL
const REQUIRED = process.env.RIPPLE_REQUIRE_SERVICES === '1'
const skip = IS_REFERENCE
  ? 'the reference server has no cluster'
  : (!ADMIN_URL && !REQUIRED ? 'RIPPLE_TEST_DATABASE_URL is not set' : false)

/** A database of this test's own on the test Postgres server; returns its URL and a drop(). */
function createDatabase () {
  if (!ADMIN_URL) throw new Error('RIPPLE_REQUIRE_SERVICES=1 but RIPPLE_TEST_DATABASE_URL is not set')
  const name = `ripple_interop_cluster_${process.pid}`
  const psql = (sql) => execFileSync('psql', [ADMIN_URL, '-v', 'ON_ERROR_STOP=1', '-qc', sql], { stdio: 'pipe' })
  psql(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
  psql(`CREATE DATABASE ${name}`)
  const url = ADMIN_URL.replace(/\/[^/]*$/, `/${name}`)
  return { url, drop: () => psql(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`) }
}

const entries = (doc) => doc.getArray('items').toArray()

test('three nodes, clients on each: live convergence, late joiner, awareness across nodes', { skip }, async () => {
  const db = createDatabase()
  try {
    const nodes = []
    for (let i = 0; i < 3; i++) {
      nodes.push(await startRipple({
        extraArgs: ['--storage', db.url, '--cluster-secret', 'interop-secret', '--node-id', `js-${i}`]
      }))
    }
    const room = uniqueRoom('cluster')
    const clients = []
    for (const node of nodes) clients.push(await connectSynced(node, room))
    // 20 pushes from each node's client.
    for (let round = 0; round < 20; round++) {
      clients.forEach((c, n) => c.doc.getArray('items').push([`n${n}-${round}`]))
    }
    for (const c of clients) {
      await waitFor(() => entries(c.doc).length === 60, 10000,
        { describe: () => `60 items on every client; this one has ${entries(c.doc).length}` })
    }
    const order = JSON.stringify(entries(clients[0].doc))
    for (const c of clients) assert.equal(JSON.stringify(entries(c.doc)), order, 'same order everywhere')

    // A late joiner on another node gets the full state.
    const late = await connectSynced(nodes[2], room)
    await waitFor(() => entries(late.doc).length === 60, 10000, { describe: 'late joiner has all 60' })

    // Awareness from node 2's client (index 1) reaches node 3's (index 2)...
    clients[1].awareness.setLocalStateField('user', { name: 'on-node-2' })
    const seenOnNode3 = () => [...clients[2].awareness.getStates().values()].some((s) => s.user?.name === 'on-node-2')
    await waitFor(seenOnNode3, 10000, { describe: 'node 3 sees the awareness of node 2\'s client' })
    // ...and is gone there once that client's socket dies without a goodbye.
    killSocketAbruptly(clients[1])
    await waitFor(() => !seenOnNode3(), 10000, { describe: 'node 3 no longer sees the killed client' })
    for (const c of [...clients, late]) c.destroy()
    await Promise.all(nodes.map((n) => n.stop()))
  } finally {
    db.drop()
  }
})
