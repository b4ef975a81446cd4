#!/usr/bin/env bash
# Packs the npm packages: ripple-yjs (the `ripple` bin shim) and one ripple-yjs-PLATFORM package
# per binary given, each carrying that binary, all at the workspace's version.
#
#   bash npm/pack.sh OUT_DIR PLATFORM=BINARY [PLATFORM=BINARY ...]
#   bash npm/pack.sh dist linux-x64=target/release/ripple
#
# PLATFORM is Node's `${process.platform}-${process.arch}` (linux-x64, linux-arm64, darwin-x64,
# darwin-arm64, win32-x64); npm/ripple-yjs-PLATFORM/package.json must exist. The main package
# lists exactly the packed platforms in optionalDependencies, so a release packs them all at
# once (npm/README.md) and a test may pack only the one it runs on. Prints the tarballs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
out=$1
shift
[ $# -ge 1 ] || { echo "usage: $0 OUT_DIR PLATFORM=BINARY..." >&2; exit 2; }
mkdir -p "$out"
out=$(cd "$out" && pwd)
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$repo/Cargo.toml")
[ -n "$version" ] || { echo "no [workspace.package] version in Cargo.toml" >&2; exit 1; }
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

platforms=()
for spec in "$@"; do
  platform=${spec%%=*}
  binary=${spec#*=}
  src="$here/ripple-yjs-$platform"
  [ -f "$src/package.json" ] || { echo "no $src/package.json" >&2; exit 1; }
  [ -f "$binary" ] || { echo "no binary $binary" >&2; exit 1; }
  dir="$stage/ripple-yjs-$platform"
  cp -R "$src" "$dir"
  mkdir -p "$dir/bin"
  exe=ripple
  case $platform in win32-*) exe=ripple.exe ;; esac
  cp "$binary" "$dir/bin/$exe"
  chmod 755 "$dir/bin/$exe"
  node -e '
    const fs = require("fs"); const [file, version, exe] = process.argv.slice(1);
    const p = JSON.parse(fs.readFileSync(file, "utf8"));
    p.version = version; p.files = ["bin/" + exe];
    fs.writeFileSync(file, JSON.stringify(p, null, 2) + "\n");
  ' "$dir/package.json" "$version" "$exe"
  (cd "$dir" && npm pack --silent --pack-destination "$out" >/dev/null)
  platforms+=("$platform")
done

main="$stage/ripple-yjs"
cp -R "$here/ripple-yjs" "$main"
node -e '
  const fs = require("fs"); const [file, version, ...platforms] = process.argv.slice(1);
  const p = JSON.parse(fs.readFileSync(file, "utf8"));
  p.version = version;
  p.optionalDependencies = Object.fromEntries(platforms.map((pl) => ["ripple-yjs-" + pl, version]));
  fs.writeFileSync(file, JSON.stringify(p, null, 2) + "\n");
' "$main/package.json" "$version" "${platforms[@]}"
(cd "$main" && npm pack --silent --pack-destination "$out" >/dev/null)
ls "$out"/ripple-yjs-*"$version".tgz
