#!/usr/bin/env bash
# The npm package, for real: packs ripple-yjs and ripple-yjs-linux-x64 around the built binary
# (npm/pack.sh), installs the two tarballs into a fresh temporary app, runs `npx ripple dev
# --port 0` there, syncs YPartyKitProvider clients through it (sync.mjs), and stops it with
# SIGTERM through the launcher (it must exit 0).
#
#   bash tests/npm-package/run.sh            # RIPPLE_BIN=path/to/ripple, default target/release/ripple
#
# Needs Node 18+ and tests/interop/node_modules (npm ci there; run.sh does it if missing). The
# install itself reads only the two tarballs; nothing is fetched for them.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
bin=${RIPPLE_BIN:-$repo/target/release/ripple}
[ -x "$bin" ] || { echo "no ripple binary at $bin: cargo build --release -p ripple, or set RIPPLE_BIN" >&2; exit 1; }
case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) platform=linux-x64 ;;
  *) echo "run.sh packs the linux-x64 package only; this is $(uname -s)-$(uname -m)" >&2; exit 1 ;;
esac
if [ ! -d "$repo/tests/interop/node_modules" ]; then
  (cd "$repo/tests/interop" && npm ci --no-audit --no-fund)
fi

work=$(mktemp -d)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill -KILL -- "-$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== pack"
# Packed stripped, as a release is built (CARGO_PROFILE_RELEASE_STRIP=symbols, npm/README.md):
# the workspace's release profile keeps line tables for backtraces, several times the size.
cp "$bin" "$work/ripple"
if command -v strip >/dev/null; then strip "$work/ripple"; fi
echo "binary: $(du -k "$bin" | cut -f1) KiB built, $(du -k "$work/ripple" | cut -f1) KiB packed"
bash "$repo/npm/pack.sh" "$work/tarballs" "$platform=$work/ripple"
for t in "$work"/tarballs/*.tgz; do
  echo "$(basename "$t"): $(du -k "$t" | cut -f1) KiB packed"
done

echo "== install into a fresh app"
mkdir "$work/app"
cd "$work/app"
echo '{ "name": "app", "private": true, "version": "0.0.0" }' > package.json
npm install --no-audit --no-fund --offline "$work"/tarballs/*.tgz
test -x node_modules/ripple-yjs-$platform/bin/ripple || { echo "the binary is not executable" >&2; exit 1; }
test -e node_modules/.bin/ripple || { echo "no node_modules/.bin/ripple" >&2; exit 1; }
echo "installed: $(du -sk node_modules | cut -f1) KiB in node_modules"
npx --no-install ripple --version

# Starts `$@ dev --port 0` in the background, in a process group of its own (as a terminal runs
# a foreground job); sets pid (= the group) and addr once it prints its listening line.
start() {
  setsid "$@" dev --port 0 --data-dir "$work/data" > "$work/stdout" 2> "$work/stderr" &
  pid=$!
  addr=
  for _ in $(seq 1 200); do
    addr=$(sed -n 's|^ripple listening on http://||p' "$work/stdout" | head -n 1)
    [ -n "$addr" ] && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$work/stderr" >&2; echo "ripple dev exited" >&2; exit 1; }
    sleep 0.1
  done
  cat "$work/stderr" >&2
  echo "no listening line after 20 s" >&2
  exit 1
}

# Sends SIGTERM to `$1` (a pid, or -pid for its whole group) and waits for pid; the server must
# have drained and stopped ("stopped" logged). Returns pid's exit status.
stop() {
  kill -TERM -- "$1"
  local status=0
  wait "$pid" || status=$?
  pid=
  # npx may exit before the server it started has finished draining: wait for the last line.
  for _ in $(seq 1 150); do
    grep -q "stopped" "$work/stderr" && return "$status"
    sleep 0.1
  done
  cat "$work/stderr" >&2
  echo "no clean stop within 15 s" >&2
  exit 1
}

echo "== npx ripple dev --port 0"
start npx --no-install ripple
echo "listening on $addr"

echo "== YPartyKitProvider sync"
node "$repo/tests/npm-package/sync.mjs" "$addr"
# Ctrl-C in a terminal signals the whole foreground group: npx, the launcher and ripple. (npx
# does not pass a signal sent to it alone on, and reports one it got as 143: what matters is
# that ripple drained and stopped.)
stop "-$pid" || true

echo "== SIGTERM through the launcher (node_modules/.bin/ripple, as npm run scripts call it)"
start ./node_modules/.bin/ripple
status=0
stop "$pid" || status=$?
[ "$status" -eq 0 ] || { cat "$work/stderr" >&2; echo "ripple dev exited with $status" >&2; exit 1; }
echo "ok: the npm package installs, runs, syncs YPartyKitProvider clients and stops cleanly"
