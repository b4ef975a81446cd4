// Writes N single-keystroke Yjs updates (one client typing and deleting at random places in one
// Y.Text, as a live session logs them) to updates.bin as <u32le length><bytes> records.
//   node bench/partykit-import/gen.cjs N      (yjs comes from tests/interop/node_modules)
const { createRequire } = require('node:module')
const path = require('node:path')
const r = createRequire(path.join(__dirname, '..', '..', 'tests', 'interop', 'package.json'))
const Y = r('yjs')
const fs = require('fs')
const n = Number(process.argv[2])
const doc = new Y.Doc()
const t = doc.getText('t')
const out = fs.openSync('updates.bin', 'w')
doc.on('update', (u) => { const len = Buffer.alloc(4); len.writeUInt32LE(u.length); fs.writeSync(out, len); fs.writeSync(out, u) })
for (let i = 0; i < n; i++) {
  const pos = Math.floor(Math.random() * (t.length + 1))
  if (i % 5 === 4 && t.length > 0) t.delete(Math.min(pos, t.length - 1), 1)
  else t.insert(pos, String.fromCharCode(97 + (i % 26)))
}
fs.closeSync(out)
console.log('text length', t.length)
