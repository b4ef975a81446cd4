#!/usr/bin/env bash
# Short, bounded fuzzing of every cargo-fuzz target on its committed corpus (fuzz/corpus/<target>):
# fails on any crash, panic, failed property or allocation over the limit.
#
#   bash scripts/fuzz-smoke.sh            # 30 s per target
#   FUZZ_SECONDS=300 bash scripts/fuzz-smoke.sh ws_decoder batch
#   FUZZ_RUNS=20000 bash scripts/fuzz-smoke.sh   # a fixed number of runs from seed 1: what
#                                                # scripts/test.sh (and so CI) runs, repeatable
#
# Needs cargo-fuzz (installed from crates.io if missing) and a nightly feature of rustc, enabled on
# the stable toolchain with RUSTC_BOOTSTRAP=1. See fuzz/README.md for what each target checks and
# for the known defects the room target skips.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${FUZZ_SECONDS:-30}"
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(ws_decoder message_decode batch room_handle link_frame)
  # Only present once the decode-bound checker exists.
  if grep -q '^name = "update_bounds"' fuzz/Cargo.toml; then
    TARGETS+=(update_bounds)
  fi
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
# Fallible reservations (try_reserve) fail under ASan instead of aborting, as they do without it.
export ASAN_OPTIONS="${ASAN_OPTIONS:-allocator_may_return_null=1}"

cd fuzz
echo "== cargo fuzz build"
cargo fuzz build

for t in "${TARGETS[@]}"; do
  if [ -n "${FUZZ_RUNS:-}" ]; then
    echo "== fuzz $t: $FUZZ_RUNS runs from seed 1"
  else
    echo "== fuzz $t for ${SECONDS_PER_TARGET}s"
  fi
  mkdir -p "corpus/$t"
  # A scratch copy: new inputs found here are not meant to be committed by CI.
  work="$(mktemp -d)"
  cp -r "corpus/$t/." "$work/"
  status=0
  if [ -n "${FUZZ_RUNS:-}" ]; then
    bound=(-runs="$FUZZ_RUNS" -seed=1)
  else
    bound=(-max_total_time="$SECONDS_PER_TARGET")
  fi
  cargo fuzz run "$t" "$work" -- \
    "${bound[@]}" \
    -malloc_limit_mb=512 -rss_limit_mb=1024 \
    -print_final_stats=1 2>"$work.log" || status=$?
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)|DONE' "$work.log" || true
  if [ "$status" -ne 0 ]; then
    echo "!! $t failed (exit $status):"
    grep -E -A30 'panicked|ERROR|SUMMARY' "$work.log" | head -60
    rm -rf "$work" "$work.log"
    exit 1
  fi
  rm -rf "$work" "$work.log"
done
echo "== fuzz smoke: all targets passed"
