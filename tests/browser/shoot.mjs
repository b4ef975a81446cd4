// Not a test: `node shoot.mjs` retakes the README's screenshots (docs/img/) from a live
// `ripple dev` with two demo tabs typing.
import path from 'node:path'
import { startRipple, launchBrowser, newPage, waitFor, editorText, REPO_ROOT } from './lib.mjs'

const server = await startRipple({ mode: 'dev' })
const browser = await launchBrowser()
try {
  const tabs = []
  for (const [name, text] of [['Ada', '# Meeting notes\n\n- Ship the inspector\n'], ['Grace', '- Write the demo down\n']]) {
    const page = await newPage(browser, { viewport: { width: 900, height: 520 } })
    await page.goto(`${server.url}/demo/welcome`)
    await page.locator('#status[data-state="synced"]').waitFor()
    await page.fill('#name', name)
    await page.locator('.cm-content').click()
    await page.keyboard.press('Control+End')
    await page.keyboard.type(text)
    tabs.push(page)
  }
  await waitFor('both texts everywhere', async () => (await editorText(tabs[0])).includes('Write the demo'))
  await tabs[0].locator('.cm-content').click()
  await tabs[0].keyboard.press('Control+Home')
  await tabs[0].screenshot({ path: path.join(REPO_ROOT, 'docs', 'img', 'demo.png') })
  const inspector = await newPage(browser, { viewport: { width: 1000, height: 900 } })
  await inspector.goto(`${server.url}/#/room/main/welcome`)
  await waitFor('the tree', async () => (await inspector.locator('#json').innerText().catch(() => '')).includes('Write the demo'))
  await waitFor('two members', async () => (await inspector.locator('#members tbody tr').count()) === 2)
  await inspector.screenshot({ path: path.join(REPO_ROOT, 'docs', 'img', 'inspector.png') })
} finally {
  await browser.close()
  await server.stop()
}
