#!/usr/bin/env bash
# Runs the README's run command (the code block under "## Run") verbatim, as a new user would,
# and checks that it starts a server: it must print "ripple listening on http://..." on stdout,
# answer GET /healthz, and stop cleanly (exit 0) on SIGTERM. Called by scripts/test.sh, so the
# README's first command cannot break unnoticed.
#
#   bash scripts/readme-run-check.sh
#
# The command runs from a fresh directory under target/ (cargo finds the workspace from there),
# so its ./.ripple state never touches the checkout and is removed afterwards; the release build
# it makes stays in target/release for later steps. `ripple dev` binds 127.0.0.1:1999: if that
# port is taken, this fails and says so. README_RUN_TIMEOUT (seconds, default 600) bounds the
# wait for the listening line.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
timeout_secs=${README_RUN_TIMEOUT:-600}

# The first line of the first code block after "## Run".
cmd=$(awk '
  /^## / { in_run = ($0 == "## Run"); next }
  in_run && /^```/ { if (in_block) exit; in_block = 1; next }
  in_run && in_block { print; exit }
' README.md)
if [ -z "$cmd" ]; then
  echo "readme-run-check: no command found in README.md's \"## Run\" code block" >&2
  exit 1
fi
echo "README run command: $cmd"

if (exec 3<>/dev/tcp/127.0.0.1/1999) 2>/dev/null; then
  echo "readme-run-check: port 1999 on 127.0.0.1 is already in use (another \`ripple dev\`?);" \
    "the README's command needs it. Stop that process and run again." >&2
  exit 1
fi

mkdir -p target
work=$(mktemp -d "$repo/target/readme-run.XXXXXX")
pid=
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -KILL -- "-$pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

: >"$work/stdout"
: >"$work/stderr"
# In a session of its own, so that the whole group (cargo and the server) can be signalled.
(cd "$work" && exec setsid bash -c "$cmd") >"$work/stdout" 2>"$work/stderr" </dev/null &
pid=$!

fail() {
  echo "readme-run-check: $*" >&2
  echo "--- stdout ---" >&2; cat "$work/stdout" >&2
  echo "--- stderr (last 40 lines) ---" >&2; tail -n 40 "$work/stderr" >&2
  exit 1
}

deadline=$((SECONDS + timeout_secs))
until grep -q '^ripple listening on http://' "$work/stdout"; do
  kill -0 "$pid" 2>/dev/null || fail "the command exited before printing its listening line"
  [ "$SECONDS" -lt "$deadline" ] || fail "no listening line within ${timeout_secs}s"
  sleep 0.5
done
url=$(grep -m1 '^ripple listening on http://' "$work/stdout" | sed 's/^ripple listening on //')
echo "listening on $url"

health=$(curl -fsS --max-time 10 "$url/healthz") || fail "GET $url/healthz failed"
[ "$health" = "ok" ] || fail "GET $url/healthz answered $health"
[ -d "$work/.ripple" ] || fail "no ./.ripple state directory in the working directory"

kill -TERM -- "-$pid"
status=0
deadline=$((SECONDS + 30))
while kill -0 "$pid" 2>/dev/null; do
  [ "$SECONDS" -lt "$deadline" ] || fail "still running 30s after SIGTERM"
  sleep 0.2
done
wait "$pid" || status=$?
pid=
[ "$status" -eq 0 ] || fail "exited with status $status after SIGTERM"
echo "README run command: ok (listened, answered /healthz, stopped on SIGTERM)"
