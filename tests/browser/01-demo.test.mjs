// The demo page in a real browser: two people (two browser contexts, so no shared storage or
// BroadcastChannel) edit /demo/room-x through the server, each sees the other's text and
// cursor, and a plain Node y-websocket client in the same room sees the text too.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { startRipple, launchBrowser, newPage, waitFor, screenshot, editorText, pageMetrics } from './lib.mjs'

let server, browser
before(async () => {
  server = await startRipple({ mode: 'dev' })
  browser = await launchBrowser()
})
after(async () => {
  await browser?.close()
  await server?.stop()
})

async function openDemo (name) {
  const page = await newPage(browser)
  const started = Date.now()
  const response = await page.goto(`${server.url}/demo/room-x`)
  assert.equal(response.status(), 200)
  await page.locator('#status[data-state="synced"]').waitFor({ timeout: 10000 })
  const m = await pageMetrics(page)
  console.log(`demo page: ${m.bytes} bytes in ${m.requests} requests, first paint ${m.firstPaintMs} ms, ` +
    `DOM ready ${m.domReadyMs} ms, synced with the server ${Date.now() - started} ms after navigating`)
  await page.fill('#name', name)
  return page
}

test('two tabs on /demo/room-x see each other\'s text and cursor; a Node client sees the text', async () => {
  const ada = await openDemo('Ada')
  const bob = await openDemo('Bob')

  await ada.locator('.cm-content').click()
  await ada.keyboard.type('Hello from Ada.')
  await waitFor('Bob to see Ada\'s text', async () => (await editorText(bob)).includes('Hello from Ada.'))

  await bob.locator('.cm-content').click()
  await bob.keyboard.press('End')
  await bob.keyboard.type(' And Bob.')
  await waitFor('Ada to see Bob\'s text', async () => (await editorText(ada)).includes('Hello from Ada. And Bob.'))

  // Each sees the other's caret, labelled with the other's name.
  await ada.locator('.cm-content').click()
  await waitFor('Bob to see Ada\'s caret', async () =>
    (await bob.locator('.cm-ySelectionInfo').allInnerTexts()).some((t) => t.includes('Ada')))
  await bob.locator('.cm-content').click()
  await waitFor('Ada to see Bob\'s caret', async () =>
    (await ada.locator('.cm-ySelectionInfo').allInnerTexts()).some((t) => t.includes('Bob')))
  // And the other in the list of people here.
  await waitFor('Ada to list Bob', async () => (await ada.locator('#people').innerText()).includes('Bob'))

  // A Node client in the same room (party main) gets the text from the server.
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(`${server.ws}/parties/main`, 'room-x', doc, { WebSocketPolyfill: WebSocket, disableBc: true })
  try {
    await waitFor('the Node client to see the text', () =>
      doc.getText('codemirror').toString() === 'Hello from Ada. And Bob.')
  } finally {
    provider.destroy()
    doc.destroy()
  }

  // The page tells how to open the same room elsewhere.
  assert.match(await ada.locator('.hint').innerText(), /\/demo\/room-x/)
  await screenshot(ada, 'demo')
  const phone = await newPage(browser, { viewport: { width: 390, height: 760 } })
  await phone.goto(`${server.url}/demo/room-x`)
  await waitFor('the phone page to sync', async () => (await editorText(phone)).includes('And Bob.'))
  await screenshot(phone, 'demo-phone')

  for (const page of [ada, bob, phone]) assert.deepEqual(page.problems, [])
})

test('a bad room name is refused with the reason; a room path still refuses a plain GET', async () => {
  const long = 'x'.repeat(5000)
  const res = await fetch(`${server.url}/demo/${long}`)
  assert.equal(res.status, 400)
  assert.match(await res.text(), /bad room id/)
  const room = await fetch(`${server.url}/room-x`)
  assert.equal(room.status, 426)
})
