// Helpers for the browser tests: start the ripple binary, launch Debian's Chromium through
// playwright-core, watch every page for console errors, wait for conditions, keep screenshots.
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'

const HERE = path.dirname(fileURLToPath(import.meta.url))
export const REPO_ROOT = path.resolve(HERE, '..', '..')

/** Where screenshots go (CI keeps this directory as an artifact). */
export const SCREENSHOTS = process.env.RIPPLE_SCREENSHOTS ||
  path.join(REPO_ROOT, 'target', 'screenshots')

export const CHROMIUM = process.env.RIPPLE_CHROMIUM || '/usr/bin/chromium'

function rippleBin () {
  if (process.env.RIPPLE_BIN) return path.resolve(process.env.RIPPLE_BIN)
  const debug = path.join(REPO_ROOT, 'target', 'debug', 'ripple')
  if (fs.existsSync(debug)) return debug
  throw new Error(`ripple binary not found at ${debug}: build it (cargo build -p ripple) or set RIPPLE_BIN`)
}

/**
 * Starts `ripple MODE` ('dev' or 'serve') on a free port with a fresh data directory, plus
 * `args` and `env`. Resolves once it printed its listening line.
 */
export async function startRipple ({ mode = 'dev', args = [], env = {} } = {}) {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ripple-browser-'))
  const argv = [mode, '--port', '0', '--data-dir', dataDir, ...args]
  const proc = spawn(rippleBin(), argv, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_BACKTRACE: '1', ...env }
  })
  let stderr = ''
  proc.stderr.setEncoding('utf8')
  proc.stderr.on('data', (d) => { stderr = (stderr + d).slice(-200000) })
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })))
  const port = await new Promise((resolve, reject) => {
    let out = ''
    const timer = setTimeout(() => reject(new Error(`ripple ${mode} did not start\n${stderr}`)), 20000)
    proc.stdout.setEncoding('utf8')
    proc.stdout.on('data', (d) => {
      out += d
      const m = /ripple listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(out)
      if (m) { clearTimeout(timer); resolve(Number(m[1])) }
    })
    exited.then((e) => { clearTimeout(timer); reject(new Error(`ripple exited: ${JSON.stringify(e)}\n${stderr}`)) })
  })
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    ws: `ws://127.0.0.1:${port}`,
    logs: () => stderr,
    async stop () {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM')
      const timer = setTimeout(() => proc.kill('SIGKILL'), 10000)
      await exited
      clearTimeout(timer)
      fs.rmSync(dataDir, { recursive: true, force: true })
    }
  }
}

/** Launches headless Chromium with the flags a sandboxed CI machine needs. */
export async function launchBrowser () {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} not found: apt-get install -y chromium (or set RIPPLE_CHROMIUM)`)
  }
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync']
  })
}

/**
 * A page in a fresh browser context whose console errors, uncaught exceptions and failed
 * requests are collected in `page.problems` (tests assert it stays empty).
 * `expectFailures` lists RegExps of URLs whose failed loads a test expects (a 401): Chromium
 * logs those as console errors, which are then not counted.
 */
export async function newPage (browser, { viewport = { width: 1100, height: 720 }, expectFailures = [] } = {}) {
  const context = await browser.newContext({ viewport })
  const page = await context.newPage()
  page.problems = []
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return
    const url = msg.location()?.url || ''
    if (msg.text().startsWith('Failed to load resource') && expectFailures.some((re) => re.test(url))) return
    page.problems.push(`console.error: ${msg.text()} (${url})`)
  })
  page.on('pageerror', (err) => page.problems.push(`uncaught: ${err.message}`))
  page.on('requestfailed', (req) => {
    // Sockets and streams cut by a test closing a page or the server are not page bugs.
    if (req.failure()?.errorText === 'net::ERR_ABORTED') return
    page.problems.push(`request failed: ${req.url()} ${req.failure()?.errorText}`)
  })
  return page
}

/** Polls `fn` (sync or async) until it returns a truthy value; throws `what` after `timeoutMs`. */
export async function waitFor (what, fn, { timeoutMs = 10000, intervalMs = 25 } = {}) {
  const deadline = Date.now() + timeoutMs
  let last
  for (;;) {
    try {
      const v = await fn()
      if (v) return v
    } catch (e) { last = e }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${last.message}` : ''}`)
    }
    await new Promise((resolve) => setTimeout(resolve, intervalMs))
  }
}

/** Saves a full-page screenshot as SCREENSHOTS/NAME.png and returns its path. */
export async function screenshot (page, name) {
  fs.mkdirSync(SCREENSHOTS, { recursive: true })
  const file = path.join(SCREENSHOTS, `${name}.png`)
  await page.screenshot({ path: file, fullPage: true })
  return file
}

/** The text of the demo page's editor. */
export const editorText = (page) => page.locator('.cm-content').innerText()

/**
 * What loading the page cost: bytes of the document and its resources (as sent, before any
 * compression: the server sends none), and when the first content was painted, in ms from the
 * start of the navigation.
 */
export async function pageMetrics (page) {
  return page.evaluate(() => {
    const nav = performance.getEntriesByType('navigation')[0]
    const resources = performance.getEntriesByType('resource')
    const fcp = performance.getEntriesByName('first-contentful-paint')[0]
    return {
      bytes: nav.encodedBodySize + resources.reduce((sum, r) => sum + r.encodedBodySize, 0),
      requests: 1 + resources.length,
      firstPaintMs: fcp ? Math.round(fcp.startTime) : null,
      domReadyMs: Math.round(nav.domContentLoadedEventEnd)
    }
  })
}
