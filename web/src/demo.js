// The demo page (/demo/ROOM): a CodeMirror 6 editor bound to a Y.Text, synced with this server
// over the y-websocket protocol, with the other people in the room shown as coloured cursors.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { yCollab, yUndoManagerKeymap } from 'y-codemirror.next'
import { EditorView, keymap, drawSelection, highlightActiveLine, lineNumbers } from '@codemirror/view'
import { EditorState } from '@codemirror/state'
import { defaultKeymap } from '@codemirror/commands'

const COLOURS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#e377c2', '#8c564b', '#17becf', '#bcbd22']

const $ = (id) => document.getElementById(id)

// The room is the raw path segment after /demo/, as the server names it (party "main").
const room = location.pathname.replace(/^\/demo\//, '').replace(/\/.*$/, '') || 'welcome'
const wsBase = `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/parties/main`

const ydoc = new Y.Doc()
// No BroadcastChannel: two tabs of this browser talk through the server, as two people would.
const provider = new WebsocketProvider(wsBase, room, ydoc, { disableBc: true })
const ytext = ydoc.getText('codemirror')

// Who I am: a name kept in this browser, a colour from my awareness client id (changed once,
// just after joining, if someone already here has it and another is free).
let colour = COLOURS[ydoc.clientID % COLOURS.length]
let colourChecked = false
const joinedAt = Date.now()
const nameInput = $('name')
let name = ''
try { name = localStorage.getItem('ripple-demo-name') || '' } catch {}
if (!name) name = `Guest ${100 + (ydoc.clientID % 900)}`
nameInput.value = name
const setUser = () => {
  provider.awareness.setLocalStateField('user', {
    name: nameInput.value.trim() || 'Anonymous',
    color: colour,
    colorLight: colour + '33'
  })
}
setUser()
nameInput.addEventListener('input', () => {
  setUser()
  try { localStorage.setItem('ripple-demo-name', nameInput.value.trim()) } catch {}
})

new EditorView({ // eslint-disable-line no-new
  parent: $('editor'),
  state: EditorState.create({
    doc: ytext.toString(),
    extensions: [
      lineNumbers(),
      drawSelection(),
      highlightActiveLine(),
      EditorView.lineWrapping,
      keymap.of([...yUndoManagerKeymap, ...defaultKeymap]),
      EditorView.contentAttributes.of({ 'aria-label': `Shared document of room ${room}` }),
      yCollab(ytext, provider.awareness)
    ]
  })
})

// The room line and the second-tab hint.
$('room').textContent = room
const here = $('here')
here.href = location.href
here.textContent = location.href

// Connection status: data-state is what the browser tests wait for.
const status = $('status')
const showStatus = () => {
  const state = provider.synced ? 'synced' : provider.wsconnected ? 'connected' : 'connecting'
  status.dataset.state = state
  status.textContent = { synced: 'Connected', connected: 'Syncing…', connecting: 'Connecting…' }[state]
}
provider.on('status', showStatus)
provider.on('sync', showStatus)
showStatus()

// Who is here, from awareness.
const people = $('people')
const showPeople = () => {
  const items = []
  provider.awareness.getStates().forEach((state, clientId) => {
    const user = state && state.user
    if (!user) return
    const li = document.createElement('li')
    const dot = document.createElement('span')
    dot.className = 'dot'
    dot.style.background = typeof user.color === 'string' ? user.color : '#888'
    li.append(dot, String(user.name ?? clientId) + (clientId === ydoc.clientID ? ' (you)' : ''))
    items.push(li)
  })
  people.replaceChildren(...items)
}
provider.awareness.on('change', showPeople)
provider.awareness.on('change', () => {
  const others = [...provider.awareness.getStates()].filter(([id, s]) => id !== ydoc.clientID && s.user)
  if (colourChecked || !others.length || Date.now() - joinedAt > 3000) return
  colourChecked = true
  const taken = new Set(others.map(([, s]) => s.user.color))
  const free = COLOURS.filter((c) => !taken.has(c))
  if (taken.has(colour) && free.length) {
    colour = free[ydoc.clientID % free.length]
    setUser()
  }
})
showPeople()
