// Helpers for the Hocuspocus interop tests: the real @hocuspocus/provider, two pinned majors
// (npm aliases hp2 = 2.15.x, hp3 = 3.4.x) and the current one (hp4 = 4.8.x), against a server started with lib.mjs.
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import WebSocket from 'ws'
import * as Y from 'yjs'
import * as hp2 from 'hp2'
import * as hp3 from 'hp3'
import * as hp4 from 'hp4'
import { rippleBin, waitFor } from './lib.mjs'

/** The provider libraries under test, by label. */
export const HP = { v2: hp2, v3: hp3, v4: hp4 }

const live = new Set()

/**
 * `ws`, except that a socket closed while still connecting does not raise an unhandled 'error'
 * ("WebSocket was closed before the connection was established"): that happens only when a test
 * destroys a provider that is reconnecting, and must not fail the file after its tests passed.
 * Every other error reaches the provider as before.
 */
class TestWebSocket extends WebSocket {
  constructor (...args) {
    super(...args)
    this.on('error', () => {})
  }
}

/** A shared socket (`HocuspocusProviderWebsocket`) to `server` at `path` (default `/`). */
export function hpSocket (lib, server, { path: p = '/' } = {}) {
  const socket = new lib.HocuspocusProviderWebsocket({
    url: `${server.wsBase}${p === '/' ? '' : p}`,
    WebSocketPolyfill: TestWebSocket,
    // Quick reconnects keep restart tests short.
    delay: 100,
    minDelay: 100,
    maxDelay: 500
  })
  live.add({ destroy: () => socket.destroy() })
  return socket
}

/**
 * A `HocuspocusProvider` for document `name` on `socket` (or its own socket at `path`). Returns
 * { provider, doc, failures (authenticationFailed reasons), closes (CLOSE reasons), destroy() }.
 */
export function hpConnect (lib, server, name, { socket, token = null, path: p = '/', doc = new Y.Doc(), options = {} } = {}) {
  const ownSocket = !socket
  socket = socket || hpSocket(lib, server, { path: p })
  const client = { doc, failures: [], closes: [], authenticated: [] }
  const provider = new lib.HocuspocusProvider({
    websocketProvider: socket,
    name,
    document: doc,
    token,
    broadcast: false, // 2.x: Node has a global BroadcastChannel, which would bypass the server
    onAuthenticationFailed: ({ reason }) => client.failures.push(reason),
    onAuthenticated: (data) => client.authenticated.push(data?.scope ?? null),
    onClose: ({ event }) => client.closes.push(event?.reason ?? null),
    ...options
  })
  // 3.x attaches a provider to a socket it was given only when asked; 2.x always does.
  if (typeof provider.attach === 'function' && !provider.isAttached) provider.attach()
  client.provider = provider
  client.destroy = () => {
    if (client.destroyed) return
    client.destroyed = true
    live.delete(client)
    provider.destroy()
    if (ownSocket) socket.destroy()
  }
  live.add(client)
  return client
}

/** `hpConnect`, then wait until the provider synced. */
export async function hpSynced (lib, server, name, opts = {}) {
  const c = hpConnect(lib, server, name, opts)
  await waitFor(() => c.provider.isSynced, opts.timeoutMs || 5000,
    { describe: () => `Hocuspocus provider for ${name} to sync (failures: ${c.failures})` })
  return c
}

export function destroyAllHp () {
  for (const c of [...live]) {
    try { c.destroy() } catch {}
  }
  live.clear()
}

/** `ripple token --secret SECRET ...args`; the token is the last line of stdout. */
export function mintToken (secret, ...args) {
  const out = execFileSync(rippleBin(), ['token', '--secret', secret, ...args], { encoding: 'utf8' })
  return out.trim().split('\n').pop()
}

/** A config file with `toml` as its content, for `--config`. */
export function configFile (toml) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ripple-hp-config-'))
  const file = path.join(dir, 'ripple.toml')
  fs.writeFileSync(file, toml)
  return file
}
