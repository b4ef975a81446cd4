#!/usr/bin/env bash
# Cluster benchmark: the same fanout load against one Ripple node and against three nodes on one
# Postgres database (each room's writer on the owner, every reader on another node, so every
# delivery crosses a node-to-node link), then kill -9 failover times over RUNS runs.
#
#   bench/cluster.sh                     # about 3 minutes
#   RUNS=20 FANOUT_ARGS="--rooms 10 --clients 11 --rate 20 --duration 20" bench/cluster.sh
#
# Needs Postgres (RIPPLE_TEST_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/test: a
# database of its own is created next to it) and tests/interop's node_modules (the failover
# clients are real y-websocket providers). Results go to $OUT (target/bench-cluster).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

ADMIN_URL=${RIPPLE_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
FANOUT_ARGS=${FANOUT_ARGS:-"--rooms 10 --clients 11 --rate 10 --duration 20"}
RUNS=${RUNS:-10}
OUT=${OUT:-"$ROOT/target/bench-cluster"}
DB=ripple_bench_cluster
mkdir -p "$OUT"
: > "$OUT/results.jsonl"

cargo build --release -q -p ripple -p ripple-bench
BIN="$ROOT/target/release/ripple"
BENCH="$ROOT/target/release/ripple-bench"
export RIPPLE_CONFIG="$ROOT/bench/ripple.bench.toml"
URL="${ADMIN_URL%/*}/$DB"

fresh_db() {
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
  psql "$ADMIN_URL" -qc "CREATE DATABASE $DB" >/dev/null
}

PIDS=()
PORTS=()
start_node() { # $1: node id
  local log="$OUT/$1.log"
  "$BIN" serve --host 127.0.0.1 --port 0 --storage "$URL" --cluster-secret bench \
    --node-id "$1" >"$OUT/$1.out" 2>"$log" &
  local pid=$! port=""
  for _ in $(seq 1 200); do
    port=$(grep -oE 'listening on http://127.0.0.1:[0-9]+' "$OUT/$1.out" 2>/dev/null | grep -oE '[0-9]+$' || true)
    [ -n "$port" ] && break
    sleep 0.05
  done
  [ -n "$port" ] || { echo "node $1 did not start"; cat "$log"; exit 1; }
  PIDS+=("$pid")
  PORTS+=("$port")
}
stop_nodes() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
  PORTS=()
}
cpu_ticks() { # utime+stime of a pid, in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}

echo "== one node"
fresh_db
start_node single
# shellcheck disable=SC2086
"$BENCH" fanout --url "ws://127.0.0.1:${PORTS[0]}/{room}" --server-pid "${PIDS[0]}" \
  --label one-node --json-out "$OUT/results.jsonl" $FANOUT_ARGS
stop_nodes

echo "== three nodes: writers on the owner, every reader forwarded"
fresh_db
start_node n0
start_node n1
start_node n2
before=()
for p in "${PIDS[@]}"; do before+=("$(cpu_ticks "$p")"); done
# The owner's CPU is what --server-pid samples; the forwarding nodes' is read here.
# shellcheck disable=SC2086
"$BENCH" fanout --url "ws://127.0.0.1:${PORTS[0]}/{room},ws://127.0.0.1:${PORTS[1]}/{room},ws://127.0.0.1:${PORTS[2]}/{room}" \
  --server-pid "${PIDS[0]}" --label three-nodes --json-out "$OUT/results.jsonl" $FANOUT_ARGS
after=()
for p in "${PIDS[@]}"; do after+=("$(cpu_ticks "$p")"); done
HZ=$(getconf CLK_TCK)
{
  echo "node CPU seconds during the three-node run (owner first):"
  for i in 0 1 2; do
    echo "n$i $(( ${after[$i]} - ${before[$i]} )) ticks = $(awk "BEGIN{print (${after[$i]} - ${before[$i]})/$HZ}") s"
  done
} | tee "$OUT/node-cpu.txt"
stop_nodes

echo "== kill -9 failover, $RUNS runs"
: > "$OUT/failover.txt"
for run in $(seq 1 "$RUNS"); do
  fresh_db
  start_node "f0-$run"
  start_node "f1-$run"
  node "$ROOT/bench/cluster-failover.mjs" "${PORTS[0]}" "${PORTS[1]}" "${PIDS[0]}" | tee -a "$OUT/failover.txt"
  stop_nodes
done
node -e '
  const ms = require("fs").readFileSync(process.argv[1], "utf8").split("\n")
    .map((l) => /failover_ms=(\d+(\.\d+)?)/.exec(l)).filter(Boolean).map((m) => Number(m[1])).sort((a, b) => a - b)
  const q = (p) => ms[Math.min(ms.length - 1, Math.ceil(p * ms.length) - 1)]
  console.log(`failover after kill -9: runs=${ms.length} p50=${q(0.5)} ms p99=${q(0.99)} ms max=${ms[ms.length - 1]} ms`)
' "$OUT/failover.txt" | tee "$OUT/failover-summary.txt"
psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null
echo "results: $OUT/results.jsonl, $OUT/node-cpu.txt, $OUT/failover-summary.txt"
