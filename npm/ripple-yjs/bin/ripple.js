#!/usr/bin/env node
// The `ripple` command of the ripple-yjs package. npm installs exactly one of the
// optionalDependencies, the ripple-yjs-<platform>-<arch> package that matches this machine
// (its "os" and "cpu" fields decide), and that package carries the binary. This shim finds it
// and runs it with the same arguments, stdio and exit status, passing on SIGINT, SIGTERM and
// SIGHUP so that `npm run dev` (concurrently, turbo, ...) stops the server cleanly.
'use strict'

const { spawn } = require('node:child_process')

function binaryPath () {
  if (process.env.RIPPLE_BINARY) return process.env.RIPPLE_BINARY
  const pkg = `ripple-yjs-${process.platform}-${process.arch}`
  const exe = process.platform === 'win32' ? 'ripple.exe' : 'ripple'
  try {
    return require.resolve(`${pkg}/bin/${exe}`)
  } catch {
    console.error(
      `ripple-yjs: the package ${pkg}, which carries the ripple binary for this machine, ` +
      'is not installed. Reinstall without --omit=optional / --no-optional, or, if there is ' +
      'no build for this platform, build from source (cargo install --path crates/ripple) ' +
      'and set RIPPLE_BINARY to the binary.'
    )
    process.exit(1)
  }
}

const child = spawn(binaryPath(), process.argv.slice(2), { stdio: 'inherit' })
const forward = (signal) => () => child.kill(signal)
const signals = ['SIGINT', 'SIGTERM', 'SIGHUP']
const handlers = signals.map((signal) => [signal, forward(signal)])
for (const [signal, handler] of handlers) process.on(signal, handler)
child.on('error', (err) => {
  console.error(`ripple-yjs: could not run the ripple binary: ${err.message}`)
  process.exit(1)
})
child.on('exit', (code, signal) => {
  if (signal) {
    // Die of the same signal, as a shell would report it.
    for (const [s, handler] of handlers) process.off(s, handler)
    process.kill(process.pid, signal)
  } else {
    process.exit(code ?? 1)
  }
})
