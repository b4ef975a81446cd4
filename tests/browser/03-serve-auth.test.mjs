// The inspector under `ripple serve`: without the admin token the page answers 401 and shows no
// room names (nor does any of its data endpoints); with the token, typed into the sign-in form,
// it shows the rooms. Without an admin token configured it stays locked for everyone.
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { startRipple, launchBrowser, newPage, waitFor, screenshot } from './lib.mjs'

const TOKEN = 'admin-token-for-the-browser-test-0123456789'
const ROOM = 'secret-room-42'
const cleanup = []
after(async () => { for (const f of cleanup.reverse()) await f() })

/** A Node client that writes into ROOM, so the server has a room whose name must not leak. */
async function seed (server) {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(`${server.ws}/parties/main`, ROOM, doc, { WebSocketPolyfill: WebSocket, disableBc: true })
  cleanup.push(async () => { provider.destroy(); doc.destroy() })
  await waitFor('the seed client to sync', () => provider.synced)
  doc.getText('codemirror').insert(0, 'classified')
  return provider
}

test('serve with an admin token: 401 and no room names without it, the rooms with it', async () => {
  const server = await startRipple({ mode: 'serve', env: { RIPPLE_ADMIN_TOKEN: TOKEN } })
  cleanup.push(() => server.stop())
  const browser = await launchBrowser()
  cleanup.push(() => browser.close())
  await seed(server)

  // The data endpoints refuse, and say nothing about rooms.
  for (const path of ['/inspector/rooms', `/inspector/rooms/main/${ROOM}`, `/inspector/rooms/main/${ROOM}/state`]) {
    const res = await fetch(server.url + path)
    assert.equal(res.status, 401, path)
    assert.doesNotMatch(await res.text(), /secret-room/, path)
  }
  for (const [method, path] of [['POST', `/inspector/rooms/main/${ROOM}/close`], ['DELETE', `/inspector/rooms/main/${ROOM}`]]) {
    const res = await fetch(server.url + path, { method, headers: { 'X-Ripple-Inspector': '1' } })
    assert.equal(res.status, 401, `${method} ${path}`)
  }

  const page = await newPage(browser, { expectFailures: [/^http:\/\/127\.0\.0\.1:\d+\/(inspector\/rooms)?$/] })
  const res = await page.goto(server.url + '/')
  assert.equal(res.status(), 401)
  await page.locator('#token').waitFor()
  // What the browser got and shows: no room name anywhere.
  assert.doesNotMatch(await res.text(), /secret-room/)
  assert.doesNotMatch(await page.content(), /secret-room/)
  await screenshot(page, 'inspector-sign-in')

  // A wrong token is refused, and still nothing shows.
  await page.fill('#token', 'not-the-token')
  await page.click('button[type="submit"]')
  await page.locator('text=That token was not accepted').waitFor()
  assert.doesNotMatch(await page.content(), /secret-room/)

  // The right one shows the rooms; it is kept in this tab's sessionStorage.
  await page.fill('#token', TOKEN)
  await page.click('button[type="submit"]')
  await page.locator(`#rooms tr[data-room="main/${ROOM}"]`).waitFor({ timeout: 5000 })
  await page.reload()
  await page.locator(`#rooms tr[data-room="main/${ROOM}"]`).waitFor({ timeout: 5000 })
  // An Authorization header works as well as the form (for scripts and proxies).
  const withHeader = await fetch(server.url + '/', { headers: { Authorization: `Bearer ${TOKEN}` } })
  assert.equal(withHeader.status, 200)
  // Actions also need the X-Ripple-Inspector header (no cross-site form can send it).
  const forged = await fetch(`${server.url}/inspector/rooms/main/${ROOM}/close`, { method: 'POST', headers: { Authorization: `Bearer ${TOKEN}` } })
  assert.equal(forged.status, 403)
  assert.deepEqual(page.problems, [])
})

test('serve without an admin token: the inspector is locked for everyone', async () => {
  const server = await startRipple({ mode: 'serve', env: { RIPPLE_ADMIN_TOKEN: '' } })
  cleanup.push(() => server.stop())
  const browser = await launchBrowser()
  cleanup.push(() => browser.close())
  await seed(server)
  const page = await newPage(browser, { expectFailures: [/^http:\/\/127\.0\.0\.1:\d+\/(inspector\/rooms)?$/] })
  const res = await page.goto(server.url + '/')
  assert.equal(res.status(), 401)
  await page.locator('text=The inspector is locked').waitFor()
  assert.doesNotMatch(await page.content(), /secret-room/)
  const feed = await fetch(server.url + '/inspector/rooms', { headers: { Authorization: 'Bearer anything' } })
  assert.equal(feed.status, 401)
  assert.deepEqual(page.problems, [])
})
