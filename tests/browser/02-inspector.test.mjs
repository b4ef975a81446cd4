// The inspector in a real browser, on `ripple dev` (open): two demo tabs on room-x show up as 2
// connections within a second, the typed text appears in the room's JSON tree, closing a tab
// updates both views, and the actions work (download state, close connections: the tabs
// reconnect and keep their text; delete).
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import * as Y from 'yjs'
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
  await page.goto(`${server.url}/demo/room-x`)
  await page.locator('#status[data-state="synced"]').waitFor({ timeout: 10000 })
  await page.fill('#name', name)
  return page
}

/** The inspector's row for main/ROOM: its connections cell, or null when not listed. */
const membersCell = (page, room) => page.evaluate((room) => {
  const row = document.querySelector(`#rooms tr[data-room="main/${room}"]`)
  return row ? row.querySelector('[data-col="members"]').textContent : null
}, room)

test('the inspector lists rooms live, shows a room\'s members, awareness and document, and its actions work', async () => {
  const inspector = await newPage(browser)
  const res = await inspector.goto(server.url + '/')
  assert.equal(res.status(), 200)
  await inspector.locator('#feed[data-state="live"]').waitFor({ timeout: 5000 })
  const m = await pageMetrics(inspector)
  console.log(`inspector page: ${m.bytes} bytes in ${m.requests} requests, first paint ${m.firstPaintMs} ms, DOM ready ${m.domReadyMs} ms`)

  const ada = await openDemo('Ada')
  const bob = await openDemo('Bob')
  // Both joined (each saw the other): from here the inspector has a second to show them.
  await waitFor('the tabs to see each other', async () => (await ada.locator('#people li').count()) === 2)
  const joinedAt = Date.now()
  await waitFor('room-x with 2 connections', async () => (await membersCell(inspector, 'room-x')) === '2', { timeoutMs: 1000 })
  console.log(`inspector listed room-x with 2 connections ${Date.now() - joinedAt} ms after both joined`)

  await ada.locator('.cm-content').click()
  await ada.keyboard.type('Inspect me')
  await waitFor('Bob to get the text', async () => (await editorText(bob)).includes('Inspect me'))

  // The filter narrows the list by name.
  await inspector.fill('#filter', 'nothing-like-this')
  await waitFor('the filter to hide room-x', async () => (await membersCell(inspector, 'room-x')) === null)
  await inspector.fill('#filter', 'room-x')
  await waitFor('the filter to show room-x', async () => (await membersCell(inspector, 'room-x')) === '2')
  await screenshot(inspector, 'inspector-rooms')

  // The room page: members, awareness with names, the text in the JSON tree.
  await inspector.click('#rooms a:text-is("room-x")')
  await waitFor('two members', async () => (await inspector.locator('#members tbody tr').count()) === 2 &&
    (await inspector.locator('#members').innerText()).includes('y-websocket'))
  await waitFor('awareness names', async () => {
    const text = await inspector.locator('#awareness').innerText()
    return text.includes('Ada') && text.includes('Bob')
  })
  await waitFor('the text in the JSON tree', async () =>
    (await inspector.locator('#json').innerText().catch(() => '')).includes('"Inspect me"'))
  // Live: more typing shows up without a reload.
  await ada.keyboard.type(', live')
  await waitFor('the new text in the tree', async () =>
    (await inspector.locator('#json').innerText().catch(() => '')).includes('"Inspect me, live"'))
  await waitFor('recent updates', async () => (await inspector.locator('#recent tbody tr').count()) > 1)
  await screenshot(inspector, 'inspector-room')

  // A tab closes: the room shows one member, and so does the list.
  await bob.context().close()
  await waitFor('one member left', async () => (await inspector.locator('#members tbody tr').count()) === 1)
  await waitFor('Bob gone from awareness', async () => !(await inspector.locator('#awareness').innerText()).includes('Bob'))
  await inspector.click('text=← All rooms')
  await waitFor('the list to show 1 connection', async () => (await membersCell(inspector, 'room-x')) === '1')
  await inspector.click('#rooms a:text-is("room-x")')
  await waitFor('the room page again', async () => (await inspector.locator('#members tbody tr').count()) === 1)

  // Download the state: a Yjs update holding the text.
  const [download] = await Promise.all([inspector.waitForEvent('download'), inspector.click('#download-bin')])
  assert.equal(download.suggestedFilename(), 'main-room-x.bin')
  const doc = new Y.Doc()
  Y.applyUpdate(doc, fs.readFileSync(await download.path()))
  assert.equal(doc.getText('codemirror').toString(), 'Inspect me, live')
  const [json] = await Promise.all([inspector.waitForEvent('download'), inspector.click('#download-json')])
  assert.deepEqual(JSON.parse(fs.readFileSync(await json.path(), 'utf8')), { codemirror: 'Inspect me, live' })

  // Compact: the stored log is folded.
  await inspector.click('#compact')
  await waitFor('compacted', async () => (await inspector.locator('#said').innerText()).startsWith('Compacted'))

  // Close all connections: Ada's tab reconnects by itself and keeps its text.
  const carol = await openDemo('Carol')
  await waitFor('two members again', async () => (await inspector.locator('#members tbody tr').count()) === 2)
  const before = new Set(await inspector.locator('#members tbody td:first-child').allInnerTexts())
  await inspector.click('#close-all')
  await waitFor('the close to be reported', async () => /Closed 2 connections/.test(await inspector.locator('#said').innerText()))
  await waitFor('two new members (the tabs reconnected)', async () => {
    const ids = await inspector.locator('#members tbody td:first-child').allInnerTexts()
    return ids.length === 2 && ids.every((id) => !before.has(id))
  })
  for (const page of [ada, carol]) {
    await page.locator('#status[data-state="synced"]').waitFor({ timeout: 10000 })
    assert.equal(await editorText(page), 'Inspect me, live')
  }
  await carol.locator('.cm-content').click()
  await carol.keyboard.press('End')
  await carol.keyboard.type('!')
  await waitFor('Ada to get the edit made after the reconnect', async () => (await editorText(ada)) === 'Inspect me, live!')

  // Delete, with confirmation: a wrong name deletes nothing.
  await inspector.click('#delete')
  await inspector.fill('#confirm-name', 'room-y')
  await inspector.click('#delete-confirmed')
  await waitFor('the refusal', async () => (await inspector.locator('#said').innerText()).includes('nothing was deleted'))
  await ada.context().close()
  await carol.context().close()
  await waitFor('nobody in the room', async () => (await inspector.locator('#members').innerText()).includes('Nobody is connected'))
  await inspector.click('#delete')
  await inspector.fill('#confirm-name', 'room-x')
  await inspector.click('#delete-confirmed')
  await waitFor('deleted', async () => (await inspector.locator('#said').innerText()).startsWith('Deleted'))
  // A new tab on room-x finds an empty document.
  const dave = await openDemo('Dave')
  assert.equal((await editorText(dave)).trim(), '')

  assert.deepEqual(inspector.problems, [])
  assert.deepEqual(dave.problems, [])
})

test('the inspector on a phone-sized screen', async () => {
  const phone = await newPage(browser, { viewport: { width: 390, height: 760 } })
  await phone.goto(server.url + '/')
  await phone.locator('#feed[data-state="live"]').waitFor({ timeout: 5000 })
  await screenshot(phone, 'inspector-phone')
  assert.deepEqual(phone.problems, [])
})
