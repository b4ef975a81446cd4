#!/usr/bin/env bash
# Soak: one Ripple server (release, SQLite, strict durability) under mixed load for SOAK_SECS
# (default 1800): rounds of connect/disconnect storms, fanout edits with awareness, bursts, big
# joins and idle rooms, back to back. A sampler records the server's RSS, open file descriptors,
# loaded rooms and connections every 10 s; at the end the load stops, the rooms linger out, and
# the final sample must be back at the baseline. Summary: first vs last round RSS and fds.
#
#   bench/soak.sh                        # 30 minutes
#   SOAK_SECS=300 bench/soak.sh          # a short one
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SOAK_SECS=${SOAK_SECS:-1800}
OUT=${OUT:-"$ROOT/target/bench-soak"}
mkdir -p "$OUT"
cargo build --release -q -p ripple -p ripple-bench
BENCH="$ROOT/target/release/ripple-bench"
export RIPPLE_CONFIG="$ROOT/bench/ripple.bench.toml"
ulimit -n 65536 2>/dev/null || true
DATA=$(mktemp -d "${TMPDIR:-/tmp}/ripple-soak.XXXXXX")
"$ROOT/target/release/ripple" serve --host 127.0.0.1 --port 0 --data-dir "$DATA" \
  --room-linger-secs 2 >"$OUT/server.out" 2>"$OUT/server.log" &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do
  PORT=$(grep -oE 'listening on http://127.0.0.1:[0-9]+' "$OUT/server.out" 2>/dev/null | grep -oE '[0-9]+$' || true)
  [ -n "$PORT" ] && break
  sleep 0.05
done
URL="ws://127.0.0.1:$PORT/{room}"
metric() { curl -s "http://127.0.0.1:$PORT/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
sample() {
  local rss fds
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
  fds=$(ls "/proc/$PID/fd" | wc -l)
  echo "$(date +%s) rss_kib=$rss fds=$fds rooms=$(metric ripple_rooms_active) conns=$(metric ripple_connections_active) $1"
}
sample baseline | tee "$OUT/samples.txt"
( while kill -0 $PID 2>/dev/null; do sleep 10; sample load >> "$OUT/samples.txt"; done ) &
SAMPLER=$!
END=$(( $(date +%s) + SOAK_SECS ))
round=0
while [ "$(date +%s)" -lt "$END" ]; do
  round=$((round + 1))
  {
    "$BENCH" connect --url "$URL" --server-pid $PID --name "soak-connect-$round" --clients 1000 --rooms 50 --settle 1
    "$BENCH" fanout --url "$URL" --server-pid $PID --name "soak-fanout-$round" --rooms 20 --clients 6 --rate 20 --duration 20
    "$BENCH" burst --url "$URL" --server-pid $PID --name "soak-burst-$round" --rooms 10 --clients 4 --duration 5 --window 16
    "$BENCH" bigdoc --url "$URL" --server-pid $PID --name "soak-bigdoc-$round" --text-inserts 20000 --map-keys 2000 --joins 10
    "$BENCH" idle --url "$URL" --server-pid $PID --name "soak-idle-$round" --rooms 300 --clients 3 --settle 2
  } >>"$OUT/rounds.log" 2>&1 || echo "round $round: a scenario failed (see rounds.log)" | tee -a "$OUT/samples.txt"
  sample "after-round-$round" | tee -a "$OUT/samples.txt"
done
# Load off: rooms linger 2 s, then unload; give them time.
sleep 15
sample final | tee -a "$OUT/samples.txt"
kill $SAMPLER 2>/dev/null || true
grep -E "after-round|baseline|final" "$OUT/samples.txt" > "$OUT/summary.txt"
grep -c "missing updates 0" "$OUT/rounds.log" | sed 's/^/fanout\/burst runs with no missing update: /' >> "$OUT/summary.txt" || true
grep -E "errors:" "$OUT/rounds.log" | sort | uniq -c >> "$OUT/summary.txt" || true
cat "$OUT/summary.txt"
