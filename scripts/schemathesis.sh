#!/usr/bin/env bash
# Runs schemathesis (PyPI) against the HTTP API's own OpenAPI document: starts `ripple dev` on a
# free port with a fresh data directory, then generates requests for every operation in
# /openapi.json and checks that no answer is a 5xx and that every status, content type and body
# matches the document. Bounded: a fixed number of examples per operation.
#
#   bash scripts/schemathesis.sh            # uses target/debug/ripple (built if missing)
#   RIPPLE_BIN=target/release/ripple SCHEMATHESIS_MAX_EXAMPLES=200 bash scripts/schemathesis.sh
set -euo pipefail
cd "$(dirname "$0")/.."

st="${SCHEMATHESIS:-schemathesis}"
if ! command -v "$st" >/dev/null 2>&1; then
  echo "schemathesis not found: pip install schemathesis (or set SCHEMATHESIS=/path/to/it)" >&2
  exit 1
fi
bin="${RIPPLE_BIN:-target/debug/ripple}"
[ -x "$bin" ] || cargo build --locked -p ripple
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
data="$(mktemp -d)"
log="$data/ripple.log"
"$bin" dev --port "$port" --data-dir "$data/rooms" >"$log" 2>&1 &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done

status=0
# Run from the scratch directory: schemathesis leaves its state (.schemathesis/) in the cwd.
st="$(command -v "$st")"
cd "$data"
"$st" run "http://127.0.0.1:$port/openapi.json" \
  --checks "${SCHEMATHESIS_CHECKS:-not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,unsupported_method}" \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-30}" \
  --phases examples,coverage,fuzzing \
  --request-timeout 10 \
  --generation-database none \
  --seed "${SCHEMATHESIS_SEED:-1}" \
  --no-color || status=$?
if [ "$status" != 0 ]; then
  echo "--- ripple log ---" >&2
  tail -50 "$log" >&2
fi
exit "$status"
