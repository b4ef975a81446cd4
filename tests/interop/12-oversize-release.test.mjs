// 12. An oversized message is closed with 1009 by the release binary, every time. The server
//     refuses the frame on its header while the client is still sending the payload; unless the
//     server closes gracefully (close frame, FIN, then discarding what still arrives), the
//     kernel resets the connection and the client sees 1006 instead. The fast release build hits
//     that where the debug build did not, so this file runs the release binary
//     (RIPPLE_RELEASE_BIN, else target/release/ripple; skipped, visibly, when neither exists).
import assert from 'node:assert/strict'
import { test, startRipple, rawConnect, uniqueRoom, releaseBin, IS_REFERENCE } from './lib.mjs'

const bin = IS_REFERENCE ? null : releaseBin()
const skip = (IS_REFERENCE && 'the reference server never closes on oversized messages') ||
  (!bin && 'no release binary: cargo build --release -p ripple, or set RIPPLE_RELEASE_BIN')
const TRIES = 5

/** Sends one `size`-byte binary message on each of TRIES fresh sockets; returns the close codes. */
async function closeCodes (server, size) {
  // Not a y-websocket message: it is refused on its frame header, before any decoding.
  const payload = Buffer.alloc(size, 7)
  const codes = []
  for (let i = 0; i < TRIES; i++) {
    const raw = rawConnect(`${server.wsBase}/${uniqueRoom('oversize')}`)
    await raw.opened
    raw.ws.send(payload, { binary: true })
    let timer
    const timeout = new Promise((resolve, reject) => {
      timer = setTimeout(() => reject(new Error(`try ${i}: no close within 15 s`)), 15000)
    })
    try {
      const { code } = await Promise.race([raw.closed, timeout])
      codes.push(code)
    } finally {
      clearTimeout(timer)
      raw.close()
    }
  }
  return codes
}

test(`40 MB message, default limit (32 MiB), release binary: 1009 on ${TRIES} of ${TRIES} tries`, { skip }, async () => {
  const server = await startRipple({ bin })
  try {
    assert.deepEqual(await closeCodes(server, 40_000_000), Array(TRIES).fill(1009),
      '1006 = the close frame was lost to a connection reset')
  } finally {
    await server.stop()
  }
})

test(`2.5 MB message, --max-message-bytes 1500000, release binary: 1009 on ${TRIES} of ${TRIES} tries`, { skip }, async () => {
  const server = await startRipple({ bin, extraArgs: ['--max-message-bytes', '1500000'] })
  try {
    assert.deepEqual(await closeCodes(server, 2_500_000), Array(TRIES).fill(1009),
      '1006 = the close frame was lost to a connection reset')
  } finally {
    await server.stop()
  }
})
