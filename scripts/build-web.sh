#!/usr/bin/env bash
# Builds the npm package `webdiffusion` (web/): the wasm and its JS glue into web/pkg/
# (scripts/build-wasm.sh: release cdylib, wasm-bindgen --target web, wasm-opt), then
# `npm pack` to target/npm/webdiffusion-<version>.tgz, and prints what is in it.
#   scripts/build-web.sh              # build everything
#   scripts/build-web.sh --skip-wasm  # reuse web/pkg/ as it is (JS-only changes)
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf 'build-web: %s\n' "$*"; }

if [ "${1:-}" != "--skip-wasm" ]; then
  # wasm-opt comes from the npm binaryen pinned in tests/browser (optional but 2x smaller).
  if [ ! -x tests/browser/node_modules/.bin/wasm-opt ] && command -v npm >/dev/null; then
    say "npm ci in tests/browser (binaryen for wasm-opt)"
    (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
  fi
  scripts/build-wasm.sh
fi

for f in web/pkg/webdiffusion.js web/pkg/webdiffusion_bg.wasm; do
  [ -f "$f" ] || { echo "build-web: $f is missing; run without --skip-wasm" >&2; exit 1; }
done
command -v npm >/dev/null || { echo "build-web: npm is needed for npm pack (apt-get install npm)" >&2; exit 1; }

out=target/npm
mkdir -p "$out"
tgz=$(cd web && npm pack --silent --pack-destination "../$out" 2>/dev/null | tail -1)
say "$out/$tgz: $(stat -c %s "$out/$tgz") bytes"
tar -tzvf "$out/$tgz" | awk '{ printf "build-web:   %8s  %s\n", $3, $6 }'
