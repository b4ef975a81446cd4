// Bundles the pages' JavaScript (src/*.js) with esbuild into crates/ripple-server/assets/, where
// the server embeds it (include_bytes!), plus licenses.txt: the license of every npm package that
// ended up in a bundle. The output is committed, so building the server never needs npm.
//
//   node build.mjs          write the bundles
//   node build.mjs --check  build in memory and fail if the committed files differ (CI)
//
// The output depends only on the sources, package-lock.json and esbuild's version (pinned).
import * as esbuild from 'esbuild'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const HERE = path.dirname(fileURLToPath(import.meta.url))
const OUT = path.resolve(HERE, '..', 'crates', 'ripple-server', 'assets')
const ENTRIES = ['demo', 'inspector']
const check = process.argv.includes('--check')

const result = await esbuild.build({
  absWorkingDir: HERE,
  entryPoints: Object.fromEntries(ENTRIES.map((name) => [name, `src/${name}.js`])),
  outdir: OUT,
  bundle: true,
  minify: true,
  format: 'esm',
  target: ['es2020', 'chrome100', 'firefox100', 'safari15'],
  charset: 'utf8',
  legalComments: 'none', // licenses.txt carries them, whole
  sourcemap: false,
  metafile: true,
  write: false,
  logLevel: 'warning'
})

// licenses.txt: each package found in the bundles' inputs, with its LICENSE file.
const packages = new Map()
for (const input of Object.keys(result.metafile.inputs)) {
  const m = /^(.*node_modules\/((?:@[^/]+\/)?[^/]+))\//.exec(input)
  if (m) packages.set(m[2], path.join(HERE, m[1]))
}
let licenses = 'Third-party software in the JavaScript bundles of these pages (built by web/build.mjs).\n'
for (const [name, dir] of [...packages].sort(([a], [b]) => (a < b ? -1 : 1))) {
  const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'))
  const file = fs.readdirSync(dir).sort().find((f) => /^(license|licence|copying)/i.test(f))
  const text = file ? fs.readFileSync(path.join(dir, file), 'utf8').trim() : `License: ${pkg.license}`
  licenses += `\n==== ${name}@${pkg.version} (${pkg.license}) ====\n\n${text}\n`
}

const outputs = result.outputFiles.map((f) => [f.path, Buffer.from(f.contents)])
outputs.push([path.join(OUT, 'licenses.txt'), Buffer.from(licenses)])

let stale = 0
for (const [file, bytes] of outputs) {
  const rel = path.relative(path.resolve(HERE, '..'), file)
  if (check) {
    const committed = fs.existsSync(file) ? fs.readFileSync(file) : null
    if (!committed || !committed.equals(bytes)) {
      console.error(`${rel}: differs from what web/build.mjs builds (run: cd web && npm ci && node build.mjs, then commit)`)
      stale++
    } else {
      console.log(`${rel}: up to date (${bytes.length} bytes)`)
    }
  } else {
    fs.writeFileSync(file, bytes)
    console.log(`${rel}: ${bytes.length} bytes`)
  }
}
if (stale) process.exit(1)
