// The inspector (/): the server's rooms, live, and one room's members, awareness, document and
// recent updates, with the room actions. Plain DOM; the data comes from the server's
// /inspector/... endpoints (Server-Sent Events read with fetch, so the admin token can go in an
// Authorization header). The document is fetched as one Yjs update and decoded here.
import * as Y from 'yjs'

const TOKEN_KEY = 'ripple-admin-token'
const app = document.getElementById('app')

// ---------------------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------------------

/** Builds an element: h('td.num', {title: 'x'}, 'text', child, ...). */
function h (tag, attrs, ...children) {
  const [name, ...classes] = tag.split('.')
  const el = document.createElement(name)
  if (classes.length) el.className = classes.join(' ')
  if (attrs && (typeof attrs !== 'object' || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs)
    attrs = null
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v)
    else if (k === 'style') el.style.cssText = v
    else el.setAttribute(k, v === true ? '' : String(v))
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue
    el.append(c instanceof Node ? c : String(c))
  }
  return el
}

const bytes = (n) => {
  if (n === null || n === undefined) return '—'
  if (n < 1024) return `${n} B`
  const units = ['KiB', 'MiB', 'GiB']
  let v = n / 1024
  let i = 0
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++ }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`
}
const num = (n) => (n === null || n === undefined ? '—' : String(n))
const ago = (ms) => {
  if (!ms) return '—'
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000))
  if (s < 60) return `${s} s ago`
  if (s < 3600) return `${Math.floor(s / 60)} min ago`
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`
  return new Date(ms).toISOString().slice(0, 16).replace('T', ' ')
}
const when = (ms) => h('time', { datetime: ms ? new Date(ms).toISOString() : null, title: ms ? new Date(ms).toISOString() : null }, ago(ms))

function token () {
  try { return sessionStorage.getItem(TOKEN_KEY) } catch { return null }
}
function authHeaders (extra = {}) {
  const t = token()
  return t ? { ...extra, Authorization: `Bearer ${t}` } : extra
}
const roomPath = (party, room) => `/inspector/rooms/${party}/${room}`

/** Error raised for a 401: the page shows its sign-in form. */
class Unauthorized extends Error {
  constructor (body) { super(body.detail || 'unauthorized'); this.body = body }
}

async function failure (res) {
  let body = {}
  try { body = await res.json() } catch {}
  if (res.status === 401) return new Unauthorized(body)
  return new Error(`${res.status}: ${body.detail || res.statusText}`)
}

/**
 * Reads the Server-Sent Events at `url` and calls `onEvent(name, data)` for each, until
 * `signal` aborts. Reconnects after a drop; a 401 goes to `onUnauthorized`.
 */
async function follow (url, signal, onEvent, { onUnauthorized, onState }) {
  while (!signal.aborted) {
    try {
      const res = await fetch(url, { headers: authHeaders({ Accept: 'text/event-stream' }), signal })
      if (!res.ok) throw await failure(res)
      onState('live')
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader()
      let buf = ''
      for (;;) {
        const { value, done } = await reader.read()
        if (done) break
        buf += value
        let end
        while ((end = buf.indexOf('\n\n')) >= 0) {
          const block = buf.slice(0, end)
          buf = buf.slice(end + 2)
          let name = 'message'
          let data = ''
          for (const line of block.split('\n')) {
            if (line.startsWith('event: ')) name = line.slice(7)
            else if (line.startsWith('data: ')) data += line.slice(6)
          }
          if (data) onEvent(name, JSON.parse(data))
        }
      }
    } catch (e) {
      if (signal.aborted) return
      if (e instanceof Unauthorized) { onUnauthorized(e.body); return }
    }
    if (signal.aborted) return
    onState('offline')
    await new Promise((resolve) => setTimeout(resolve, 1000))
  }
}

// ---------------------------------------------------------------------------------------------
// Pages
// ---------------------------------------------------------------------------------------------

let current = null // { abort: AbortController }

function route () {
  if (current) current.abort.abort()
  current = { abort: new AbortController() }
  const m = /^#\/room\/([^/]+)\/([^/]+)$/.exec(location.hash)
  if (m) roomPage(m[1], m[2], current.abort.signal)
  else roomsPage(current.abort.signal)
}

function statusLine () {
  const el = h('p.status', { role: 'status' }, h('span', { id: 'feed', 'data-state': 'connecting' }, 'Connecting…'))
  const set = (state) => {
    const span = el.firstChild
    span.dataset.state = state
    span.textContent = { live: 'Live', offline: 'Reconnecting…', connecting: 'Connecting…' }[state]
  }
  return { el, set }
}

function signIn (body) {
  if (current) current.abort.abort()
  if (body.error === 'no_admin_token') {
    app.replaceChildren(h('section.panel', h('h2', 'The inspector is locked'),
      h('p', 'This server has no admin token. Set ', h('code', '[admin] token'), ' in ripple.toml or ',
        h('code', 'RIPPLE_ADMIN_TOKEN'), ' and restart it; `ripple dev` needs none.')))
    return
  }
  const input = h('input', { id: 'token', type: 'password', autocomplete: 'current-password', required: true })
  const form = h('form.panel', {
    onsubmit: (e) => {
      e.preventDefault()
      try { sessionStorage.setItem(TOKEN_KEY, input.value.trim()) } catch {}
      signOut.hidden = false
      route()
    }
  },
  h('h2', 'Sign in'),
  h('p', 'This server shows its rooms to the holder of its admin token. The token is kept in this tab only.'),
  token() ? h('p.error', { role: 'alert' }, 'That token was not accepted.') : null,
  h('label', { for: 'token' }, 'Admin token'),
  input, ' ', h('button', { type: 'submit' }, 'Sign in'))
  app.replaceChildren(form)
  input.focus()
}

function roomsPage (signal) {
  const status = statusLine()
  const filter = h('input', { id: 'filter', type: 'search', placeholder: 'party/room', autocomplete: 'off' })
  const summary = h('p.muted', { id: 'summary' })
  const tbody = h('tbody')
  const table = h('table', { id: 'rooms' },
    h('caption.muted', { style: 'text-align:left' }, 'Loaded rooms first, then stored ones by last change'),
    h('thead', h('tr', h('th', 'Room'), h('th.num', 'Connections'), h('th.num', 'In memory'),
      h('th.num', 'Stored'), h('th.num', 'Stored updates'), h('th.num', 'Updates/s'), h('th', 'Last change'))),
    tbody)
  app.replaceChildren(h('section', status.el, summary,
    h('label', { for: 'filter' }, 'Filter rooms'), filter, h('div.scroll', table)))
  let last = null
  const render = () => {
    if (!last) return
    const s = last.server
    summary.textContent = `${s.connections} connection${s.connections === 1 ? '' : 's'}, ` +
      `${s.rooms_loaded} room${s.rooms_loaded === 1 ? '' : 's'} loaded, ${last.total} in all` +
      (last.rooms.length < last.total ? ` (first ${last.rooms.length} listed)` : '') +
      `; ${s.updates_applied} updates applied since start` +
      (s.storage_failing ? '; STORAGE FAILING' : '') + (s.list_error ? `; listing failed: ${s.list_error}` : '')
    const q = filter.value.trim().toLowerCase()
    const rows = last.rooms.filter((r) => !q || `${r.party}/${r.room}`.toLowerCase().includes(q))
    tbody.replaceChildren(...rows.map((r) => h('tr', { 'data-room': `${r.party}/${r.room}` },
      h('td', h('a', { href: `#/room/${r.party}/${r.room}` }, r.party === 'main' ? r.room : `${r.party}/${r.room}`),
        r.loaded ? '' : h('span.muted', ' (stored)')),
      h('td.num', { 'data-col': 'members' }, num(r.members)),
      h('td.num', bytes(r.doc_bytes)),
      h('td.num', bytes(r.stored_bytes)),
      h('td.num', num(r.stored_updates)),
      h('td.num', r.updates_per_sec === null ? '—' : r.updates_per_sec.toFixed(1)),
      h('td', when(r.last_change_ms)))))
    if (!rows.length) tbody.replaceChildren(h('tr', h('td', { colspan: 7 }, q ? 'No room matches.' : 'No rooms yet. Open /demo/welcome in a tab to make one.')))
  }
  filter.addEventListener('input', render)
  // "N s ago" moves on between events.
  const ticker = setInterval(render, 1000)
  signal.addEventListener('abort', () => clearInterval(ticker))
  follow('/inspector/rooms', signal, (name, data) => {
    if (name === 'rooms') { last = data; render() }
  }, { onUnauthorized: signIn, onState: status.set })
}

/** What kind a root type is, from its content (an update does not say). */
function kindOf (type) {
  let item = type._start
  while (item) {
    if (!item.deleted) {
      const c = item.content
      if (c instanceof Y.ContentString || c instanceof Y.ContentFormat || c instanceof Y.ContentEmbed) return 'text'
      if (c instanceof Y.ContentType && (c.type instanceof Y.XmlElement || c.type instanceof Y.XmlText)) return 'xml'
      return 'array'
    }
    item = item.right
  }
  return type._map.size > 0 ? 'map' : 'text'
}

/** The document's root types as JSON, and their kinds. */
function decode (update) {
  const doc = new Y.Doc()
  Y.applyUpdate(doc, update)
  const json = {}
  const kinds = {}
  for (const name of [...doc.share.keys()].sort()) {
    const kind = kindOf(doc.share.get(name))
    kinds[name] = kind
    json[name] = kind === 'text'
      ? doc.getText(name).toString()
      : kind === 'xml'
        ? doc.getXmlFragment(name).toString()
        : kind === 'map' ? doc.getMap(name).toJSON() : doc.getArray(name).toJSON()
  }
  doc.destroy()
  return { json, kinds }
}

const MAX_NODES = 3000
const RECENT_SHOWN = 12
const MAX_STRING = 4000

/** A JSON value as a tree of <details> (keyboard: Tab to a summary, Enter to fold). */
function tree (value, budget = { left: MAX_NODES }) {
  if (budget.left-- <= 0) return h('span.muted', '…')
  if (value === null || typeof value !== 'object') {
    let text = JSON.stringify(value)
    if (typeof value === 'string' && value.length > MAX_STRING) {
      text = JSON.stringify(value.slice(0, MAX_STRING)) + ` … (${value.length - MAX_STRING} more characters)`
    }
    return h('span.mono', text)
  }
  const entries = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value)
  return h('ul.tree', entries.map(([k, v]) => {
    const child = tree(v, budget)
    const label = h('span.k.mono', Array.isArray(value) ? `${k}` : JSON.stringify(k))
    return v !== null && typeof v === 'object'
      ? h('li', h('details', { open: true }, h('summary', label, h('span.muted', Array.isArray(v) ? ` [${v.length}]` : ` {${Object.keys(v).length}}`)), child))
      : h('li', label, ': ', child)
  }))
}

/** A colour dot; the colour is a client's string, set as a property (never parsed as CSS text). */
function dot (colour) {
  const el = h('span.dot')
  el.style.background = colour
  return el
}

function download (name, blob) {
  const a = h('a', { href: URL.createObjectURL(blob), download: name })
  document.body.append(a)
  a.click()
  a.remove()
  setTimeout(() => URL.revokeObjectURL(a.href), 10000)
}

function roomPage (party, room, signal) {
  const status = statusLine()
  const path = roomPath(party, room)
  const said = h('p', { id: 'said', role: 'status' })
  const say = (text, bad) => { said.textContent = text; said.className = bad ? 'error' : 'muted' }

  const act = async (label, method, suffix, done) => {
    say(`${label}…`)
    try {
      const res = await fetch(path + suffix, { method, headers: authHeaders({ 'X-Ripple-Inspector': '1' }) })
      if (!res.ok) throw await failure(res)
      say(done(await res.json()))
    } catch (e) {
      if (e instanceof Unauthorized) return signIn(e.body)
      say(`${label} failed: ${e.message}`, true)
    }
  }
  let lastDoc = null
  const confirmName = h('input', { id: 'confirm-name', type: 'text', autocomplete: 'off' })
  const confirmBox = h('div.panel', { id: 'confirm', hidden: true },
    h('label', { for: 'confirm-name' }, `Type ${room} to delete this room, its stored state and its connections`),
    confirmName, ' ',
    h('button.danger', {
      type: 'button',
      id: 'delete-confirmed',
      onclick: async () => {
        if (confirmName.value !== room) { say('The name does not match; nothing was deleted.', true); return }
        confirmBox.hidden = true
        await act('Deleting', 'DELETE', '', () => 'Deleted: its connections were closed and its stored state removed.')
      }
    }, 'Delete for good'), ' ',
    h('button', { type: 'button', onclick: () => { confirmBox.hidden = true } }, 'Cancel'))
  const actions = h('div.actions',
    h('button', { type: 'button', id: 'compact', onclick: () => act('Compacting', 'POST', '/compact', () => 'Compacted: the log is folded into the snapshot.') }, 'Compact now'),
    h('button', { type: 'button', id: 'close-all', onclick: () => act('Closing', 'POST', '/close', (r) => `Closed ${r.closed} connection${r.closed === 1 ? '' : 's'}; clients reconnect.`) }, 'Close all connections'),
    h('button', {
      type: 'button',
      id: 'download-bin',
      onclick: async () => {
        try {
          const res = await fetch(path + '/state', { headers: authHeaders() })
          if (!res.ok) throw await failure(res)
          download(`${party}-${room}.bin`, await res.blob())
          say('Downloaded the state as one Yjs update.')
        } catch (e) { say(`Download failed: ${e.message}`, true) }
      }
    }, 'Download .bin'),
    h('button', {
      type: 'button',
      id: 'download-json',
      onclick: () => {
        if (!lastDoc) return say('The document has not been read yet.', true)
        download(`${party}-${room}.json`, new Blob([JSON.stringify(lastDoc.json, null, 2) + '\n'], { type: 'application/json' }))
        say('Downloaded the document as JSON.')
      }
    }, 'Download JSON'),
    h('button.danger', { type: 'button', id: 'delete', onclick: () => { confirmBox.hidden = false; confirmName.focus() } }, 'Delete…'))

  const facts = h('p.muted', { id: 'facts' })
  const members = h('tbody')
  const awareness = h('tbody')
  const recent = h('tbody')
  const doc = h('div.panel', { id: 'doc' }, h('span.muted', 'Reading…'))
  app.replaceChildren(h('section',
    h('p', h('a', { href: '#/' }, '← All rooms')),
    h('h2', party === 'main' ? `Room ${room}` : `Room ${party}/${room}`),
    status.el, facts, actions, confirmBox, said,
    h('h3', 'Members'),
    h('div.scroll', h('table', { id: 'members' }, h('thead', h('tr', h('th', 'Member'), h('th', 'User'), h('th', 'Access'),
      h('th', 'Protocol'), h('th', 'Remote address'), h('th', 'Connected'), h('th.num', 'Outbound queue'))), members)),
    h('h3', 'Awareness'),
    h('div.scroll', h('table', { id: 'awareness' }, h('thead', h('tr', h('th', 'Client'), h('th', 'Name'), h('th.num', 'Clock'), h('th', 'State'))), awareness)),
    h('h3', 'Document'),
    doc,
    h('h3', 'Last updates'),
    h('div.scroll', h('table', { id: 'recent' }, h('thead', h('tr', h('th', 'When'), h('th.num', 'Size'), h('th', 'From'))), recent))))

  let version = null
  let reading = false
  let again = false
  const readDoc = async () => {
    if (reading) { again = true; return }
    reading = true
    try {
      do {
        again = false
        const res = await fetch(path + '/state', { headers: authHeaders(), signal })
        if (!res.ok) throw await failure(res)
        lastDoc = decode(new Uint8Array(await res.arrayBuffer()))
        const names = Object.keys(lastDoc.json)
        doc.replaceChildren(names.length
          ? h('div', { id: 'json' }, h('p.muted', names.map((n) => `${n}: ${lastDoc.kinds[n]}`).join(', ')), tree(lastDoc.json))
          : h('span.muted', 'The document is empty.'))
      } while (again && !signal.aborted)
    } catch (e) {
      if (!signal.aborted) doc.replaceChildren(h('span.error', `Could not read the document: ${e.message}`))
    } finally {
      reading = false
    }
  }

  follow(path, signal, (name, data) => {
    if (name !== 'room') return
    if (data.error) { facts.textContent = data.error; return }
    const r = data.room
    facts.textContent = `${r.members.length} member${r.members.length === 1 ? '' : 's'}; document ${bytes(r.doc_bytes)} in memory; ` +
      `stored log ${r.log_updates} update${r.log_updates === 1 ? '' : 's'} (${bytes(r.log_bytes)}) after the snapshot; last sequence number ${r.seq}`
    members.replaceChildren(...r.members.map((m) => h('tr',
      h('td.mono', m.id), h('td', m.user ?? '—'), h('td', m.access), h('td', m.protocol),
      h('td.mono', m.remote ?? '—'), h('td', when(m.since_ms)), h('td.num', bytes(m.queued_bytes)))))
    if (!r.members.length) members.replaceChildren(h('tr', h('td', { colspan: 7 }, 'Nobody is connected.')))
    awareness.replaceChildren(...r.awareness.map((a) => {
      let state = null
      try { state = JSON.parse(a.state) } catch {}
      const user = state && typeof state.user === 'object' && state.user ? state.user : {}
      const colour = typeof user.color === 'string' ? user.color : null
      return h('tr', h('td.mono', a.client),
        h('td', colour ? dot(colour) : null, user.name ?? '—'),
        h('td.num', a.clock),
        h('td', h('details', h('summary', 'JSON'), h('pre', JSON.stringify(state, null, 2)))))
    }))
    if (!r.awareness.length) awareness.replaceChildren(h('tr', h('td', { colspan: 4 }, 'No awareness states.')))
    recent.replaceChildren(...r.recent.slice(-RECENT_SHOWN).reverse().map((u) => h('tr',
      h('td', when(u.at_ms)), h('td.num', bytes(u.bytes)), h('td.mono', u.member ?? 'request'))))
    if (!r.recent.length) recent.replaceChildren(h('tr', h('td', { colspan: 3 }, 'No updates since the room was loaded.')))
    const v = `${r.seq}/${r.doc_bytes}/${r.recent.length}/${r.recent.length ? r.recent[r.recent.length - 1].at_ms : 0}`
    if (v !== version) { version = v; readDoc() }
  }, { onUnauthorized: signIn, onState: status.set })
}

// The header: a way to the demo, and out (when signed in with a token).
const nav = document.getElementById('nav')
const signOut = h('button', {
  type: 'button',
  hidden: !token(),
  onclick: () => { try { sessionStorage.removeItem(TOKEN_KEY) } catch {} signOut.hidden = true; route() }
}, 'Sign out')
nav.replaceChildren(h('a', { href: '/demo/welcome' }, 'Demo editor'), ' ', signOut)

window.addEventListener('hashchange', route)
route()
