#!/usr/bin/env bash
# The one test command: formatting, lints, every Rust test (unit, integration, storage against
# real services when configured) and the interop suite with real JS clients from npm.
#
#   bash scripts/test.sh
#
# Services: tests that need Postgres/Redis read RIPPLE_TEST_DATABASE_URL / RIPPLE_TEST_REDIS_URL;
# with RIPPLE_REQUIRE_SERVICES=1 a missing service fails instead of skipping (.ci/run sets all three).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked

echo "== interop (real JS clients)"
cargo build --locked -p ripple
export RIPPLE_BIN="$PWD/target/debug/ripple"
cd tests/interop
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
npm test
