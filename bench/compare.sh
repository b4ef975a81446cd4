#!/usr/bin/env bash
# Side-by-side benchmark: the same scenarios, with the same parameters, against Ripple and the
# servers people use today, each on a fresh process per scenario, on this machine only.
#
#   bench/compare.sh                      # everything (about 25 minutes on 2 cores)
#   SERVERS="ripple hocuspocus" bench/compare.sh
#   SERVERS="ripple-hocuspocus hocuspocus" BASELINE=ripple-hocuspocus SCENARIOS="fanout burst connect bigdoc" bench/compare.sh
#   SCENARIOS="fanout burst" bench/compare.sh
#   SCENARIOS="fanout fanout-js" bench/compare.sh   # the Rust client and the JS client side by side
#   OUT=/tmp/bench bench/compare.sh       # where results.jsonl, logs and table.md go
#   REPEAT=5 bench/compare.sh             # fanout and fanout-js rounds (default 3)
#
# Runs go scenario by scenario, every server in turn, so that a scenario's ratios come from
# runs minutes apart. fanout and fanout-js, whose CPU figures vary by ±20% from run to run on
# a small VM, are run REPEAT times, in rounds (every server once, then every server again, ...)
# so that drift hits every server alike; the table shows each figure's median over the runs,
# with the number of runs and the lowest and highest CPU per delivered update. The other
# scenarios run once. The targets also show fanout's CPU as a multiple of this machine's floor
# (ripple-bench floor and fsync, measured at the start, in machine.txt).
#
# The chart, results.jsonl, table.md and machine.txt are also copied to docs/bench/ (CHART's
# directory).
#
# Servers: ripple (release build, SQLite, snapshot persistence, strict durability: every update
# fsynced before anyone sees it), ripple-relaxed (same, synchronous=NORMAL) and ripple-memory
# (--persist none) to show what durability costs, ripple-hocuspocus (Ripple durable as `ripple`,
# driven by Hocuspocus clients at /hocuspocus: the same load in the Hocuspocus protocol, with an
# acknowledgement per update after it is stored), y-websocket-server (@y/websocket-server 0.1.1, in memory), hocuspocus (@hocuspocus/server 3,
# in memory), partykit (partykit 0.0.115 dev + y-partykit 0.0.33, snapshot persistence).
# Scenarios: fanout, burst, connect, idle, bigdoc are driven by ripple-bench (lean Rust clients);
# fanout-js and burst-js are the same two scenarios, same parameters and figures, driven by the JS
# clients people run (bench/js-load.mjs: y-websocket 3.1.0's WebsocketProvider + yjs, one Node
# process), yws servers only.
# Prints one markdown table (each figure per server with its ratio to Ripple) and the issue's
# targets, and writes the chart to docs/bench/compare.svg.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

SERVERS=${SERVERS:-"ripple ripple-relaxed ripple-memory ripple-hocuspocus y-websocket-server hocuspocus partykit"}
# The server the table's ratios are taken against.
BASELINE=${BASELINE:-ripple}
SCENARIOS=${SCENARIOS:-"fanout burst fanout-js burst-js connect idle bigdoc"}
OUT=${OUT:-"$ROOT/target/bench-compare"}
CHART=${CHART:-"$ROOT/docs/bench/compare.svg"}
# Ripple alone also runs connect with this many clients (the 10,000-connection target), right
# after the connect scenario (at the end if connect is not among SCENARIOS); 0 skips.
BIG_CONNECT=${BIG_CONNECT:-10000}
# Rounds of fanout and fanout-js (each a run against every server); figures are medians.
REPEAT=${REPEAT:-3}
case $REPEAT in ''|*[!0-9]*|0) echo "REPEAT must be a positive integer (got '$REPEAT')" >&2; exit 2 ;; esac

# Scenario parameters: identical for every server.
FANOUT_ARGS=${FANOUT_ARGS:-"--rooms 10 --clients 11 --rate 10 --duration 20"}
BURST_ARGS=${BURST_ARGS:-"--rooms 10 --clients 5 --duration 8 --window 16"}
CONNECT_ARGS=${CONNECT_ARGS:-"--clients 2000 --rooms 20"}
IDLE_ARGS=${IDLE_ARGS:-"--rooms 1000 --clients 4 --settle 3"}
BIGDOC_ARGS=${BIGDOC_ARGS:-"--text-inserts 200000 --map-keys 10000 --joins 20"}

mkdir -p "$OUT" "$(dirname "$CHART")"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

log() { printf '\n### %s\n' "$*" >&2; }

log "building ripple and ripple-bench (release)"
cargo build --release -q -p ripple -p ripple-bench
BENCH="$ROOT/target/release/ripple-bench"
# Ripple's per-connection quotas off: see the file for why.
export RIPPLE_CONFIG="$ROOT/bench/ripple.bench.toml"

needs_node=0
for s in $SERVERS; do case $s in ripple*) ;; *) needs_node=1 ;; esac; done
# The JS-client scenarios need the peers' node_modules too (y-websocket, yjs, ws).
for s in $SCENARIOS; do case $s in *-js) needs_node=1 ;; esac; done
if [ "$needs_node" = 1 ] && { [ ! -d bench/node_modules ] || [ bench/package-lock.json -nt bench/node_modules ]; }; then
  log "installing the peers from bench/package-lock.json"
  (cd bench && npm ci --no-audit --no-fund)
fi

SERVER_PID=""
PORT=""
DATA=""
# The round of a repeated scenario (empty for scenarios run once): names the server's log.
ROUND=""

free_port() {
  node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

# Starts $1 in its own process group; sets SERVER_PID, PORT. Returns 1 (and shows the log) if it
# does not come up.
start_server() {
  local name=$1 logf="$OUT/$1.$2${ROUND:+.run$ROUND}.log"
  DATA=$(mktemp -d "${TMPDIR:-/tmp}/ripple-bench-$name.XXXXXX")
  case $name in
    ripple|ripple-hocuspocus)
      setsid "$ROOT/target/release/ripple" serve --host 127.0.0.1 --port 0 --data-dir "$DATA" \
        --storage sqlite --persist snapshot --durability strict >"$logf" 2>&1 &
      ;;
    ripple-relaxed)
      setsid "$ROOT/target/release/ripple" serve --host 127.0.0.1 --port 0 --data-dir "$DATA" \
        --storage sqlite --persist snapshot --durability relaxed >"$logf" 2>&1 &
      ;;
    ripple-memory)
      setsid "$ROOT/target/release/ripple" serve --host 127.0.0.1 --port 0 --data-dir "$DATA" \
        --persist none >"$logf" 2>&1 &
      ;;
    y-websocket-server)
      setsid node bench/peers/y-websocket-server.mjs --port 0 >"$logf" 2>&1 &
      ;;
    hocuspocus)
      setsid node bench/peers/hocuspocus.mjs --port 0 >"$logf" 2>&1 &
      ;;
    partykit)
      local p
      p=$(free_port)
      (cd bench/peers/partykit && exec setsid ../../node_modules/.bin/partykit dev --no-hotkeys \
        --disable-request-cf-fetch --compatibility-date 2024-07-18 --port "$p" \
        --persist "$DATA/state") >"$logf" 2>&1 &
      ;;
    *) echo "unknown server $name" >&2; exit 2 ;;
  esac
  SERVER_PID=$!
  PORT=""
  for _ in $(seq 1 300); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      echo "$name exited during startup; log:" >&2; cat "$logf" >&2; SERVER_PID=""; rm -rf "$DATA"; return 1
    fi
    if [ "$name" = partykit ]; then
      if grep -q "Ready on" "$logf" 2>/dev/null; then PORT=$p; fi
    else
      PORT=$(grep -o 'listening on http://127.0.0.1:[0-9]*' "$logf" 2>/dev/null | grep -o '[0-9]*$' || true)
    fi
    [ -n "$PORT" ] && break
    sleep 0.1
  done
  if [ -z "$PORT" ]; then
    echo "$name did not start; log:" >&2; cat "$logf" >&2; stop_server; return 1
  fi
}

stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM -- "-$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL -- "-$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
  rm -rf "$DATA"
}
trap stop_server EXIT

url_for() {
  case $1 in
    partykit) echo "ws://127.0.0.1:$PORT/parties/main/{room}?_pk={conn}" ;;
    ripple-hocuspocus) echo "ws://127.0.0.1:$PORT/hocuspocus" ;;
    *) echo "ws://127.0.0.1:$PORT/{room}" ;;
  esac
}

proto_for() {
  case $1 in
    hocuspocus|ripple-hocuspocus) echo hocuspocus ;;
    *) echo yws ;;
  esac
}

run() {
  local server=$1 scenario=$2 name=$3
  shift 3
  # The load generator: ripple-bench, or for the -js scenarios the JS clients (bench/js-load.mjs,
  # protocol yws-js), which speak yws only.
  local driver=("$BENCH" "$scenario" --protocol "$(proto_for "$server")") what="ripple-bench $scenario"
  case $scenario in
    *-js)
      if [ "$(proto_for "$server")" != yws ]; then
        echo "NOTE: $name not run against $server (y-websocket's provider speaks yws only); the table shows 'not run'" >&2
        return 0
      fi
      driver=(node bench/js-load.mjs "${scenario%-js}") what="js-load.mjs ${scenario%-js}"
      ;;
  esac
  if ! start_server "$server" "$name"; then
    echo "SKIPPED: $name against $server (the server did not start); the table shows 'not run'" >&2
    return 0
  fi
  log "$name against $server${ROUND:+ (round $ROUND of $REPEAT)} (pid $SERVER_PID, port $PORT)"
  "${driver[@]}" --label "$server" --name "$name" \
    --url "$(url_for "$server")" --server-pid "$SERVER_PID" --json-out "$RESULTS" "$@" \
    | grep -v '^{' || echo "$what against $server failed" >&2
  stop_server
  sleep 1
}

args_for() {
  case $1 in
    fanout|fanout-js) echo "$FANOUT_ARGS" ;;
    burst|burst-js) echo "$BURST_ARGS" ;;
    connect) echo "$CONNECT_ARGS" ;;
    idle) echo "$IDLE_ARGS" ;;
    bigdoc) echo "$BIGDOC_ARGS" ;;
  esac
}

# This machine's floor for a delivery, also passed to the report: the CPU of one small loopback
# send, and of one fsync (what strict durability adds per write).
disk_before=$("$BENCH" fsync --dir "${TMPDIR:-/tmp}") || disk_before="fsync probe failed"
delivery_floor=$("$BENCH" floor) || delivery_floor="floor probe failed"
{
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"
  echo "kernel: $(uname -r); load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "code: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- crates 2>/dev/null || echo ' + uncommitted changes under crates/'); node $(node --version 2>/dev/null || echo none)"
  echo "disk before: $disk_before"
  echo "delivery floor: $delivery_floor"
} | tee "$OUT/machine.txt" >&2
# "send floor 4.92 µs CPU per small loopback send (...)" and "fsync p50 ..., 30.2 µs CPU each (...)".
floor_send_us=$(sed -nE 's/^send floor ([0-9.]+) .*/\1/p' <<<"$delivery_floor")
fsync_cpu_us=$(sed -nE 's/.*, ([0-9.]+) [^ ]+ CPU each .*/\1/p' <<<"$disk_before")
floor_args=()
if [ -n "$floor_send_us" ] && [ -n "$fsync_cpu_us" ]; then
  floor_args=(--floor-send-us "$floor_send_us" --fsync-cpu-us "$fsync_cpu_us")
else
  echo "NOTE: could not read the floor from ripple-bench floor/fsync; the targets leave out the floor rows" >&2
fi

run_big_connect() {
  case " $SERVERS " in *" ripple "*) ;; *) return 0 ;; esac
  [ "$BIG_CONNECT" -gt 0 ] || return 0
  run ripple connect connect-10k --clients "$BIG_CONNECT" --rooms 100 --connect-concurrency 128
}

started=$(date +%s)
big_done=0
for scenario in $SCENARIOS; do
  rounds=1
  case $scenario in fanout|fanout-js) rounds=$REPEAT ;; esac
  for round in $(seq 1 "$rounds"); do
    ROUND=""
    if [ "$rounds" -gt 1 ]; then ROUND=$round; fi
    for server in $SERVERS; do
      # shellcheck disable=SC2046
      run "$server" "$scenario" "$scenario" $(args_for "$scenario")
    done
  done
  ROUND=""
  if [ "$scenario" = connect ] && [ "$big_done" = 0 ]; then
    run_big_connect
    big_done=1
  fi
done
[ "$big_done" = 1 ] || run_big_connect

echo "disk after: $("$BENCH" fsync --dir "${TMPDIR:-/tmp}"); load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" \
  | tee -a "$OUT/machine.txt" >&2
log "comparison ($(($(date +%s) - started)) s of runs; raw results in $RESULTS)"
"$BENCH" report --input "$RESULTS" --md "$OUT/table.md" --svg "$CHART" \
  --baseline "$BASELINE" ${floor_args[@]+"${floor_args[@]}"} \
  --title "Ripple vs peers on $(nproc) cores ($(date -u +%Y-%m-%d))"
# Keep the raw results next to the chart so the published figures can be traced.
chart_dir=$(cd "$(dirname "$CHART")" && pwd)
if [ "$chart_dir" != "$(cd "$OUT" && pwd)" ]; then
  cp "$RESULTS" "$OUT/table.md" "$OUT/machine.txt" "$chart_dir/"
fi
