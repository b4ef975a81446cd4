#!/usr/bin/env bash
# Rebuilds the pages' JavaScript bundles from web/ (npm packages pinned by web/package-lock.json)
# and fails if they differ from the ones committed in crates/ripple-server/assets/, which the
# server embeds. After changing web/src, run `cd web && node build.mjs` and commit the result.
set -euo pipefail
cd "$(dirname "$0")/../web"
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund
fi
node build.mjs --check
