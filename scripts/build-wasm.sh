#!/usr/bin/env bash
# Builds the browser package into web/pkg/ (gitignored): the release wasm with LTO,
# `wasm-bindgen --target web`, then `wasm-opt` from the npm binaryen pinned in
# tests/browser/package.json when it is installed (`npm ci` there; scripts/browser-test.sh
# does it). Installs the wasm32 target and the wasm-bindgen-cli that matches Cargo.lock
# when they are missing (the CLI must equal the crate's version; a cold install takes
# about 6 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'build-wasm: %s\n' "$*"; }

rustup target list --installed | grep -q '^wasm32-unknown-unknown$' ||
  rustup target add wasm32-unknown-unknown

# The version of the wasm-bindgen crate Cargo.lock resolved (the line after its name).
want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock)
[ -n "$want" ] || { echo "build-wasm: no wasm-bindgen in Cargo.lock" >&2; exit 1; }
have=$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }' || true)
if [ "$have" != "$want" ]; then
  say "installing wasm-bindgen-cli $want (found '${have:-none}'); takes minutes"
  # Not --locked: its lock file names a crate version the registry no longer has.
  cargo install wasm-bindgen-cli --version "$want"
fi

# `cargo rustc --crate-type cdylib` builds only the cdylib, and LTO then applies to it (with
# crate-type = ["cdylib", "rlib"] a plain `cargo build` skips LTO). Only the wasm32 release
# artifacts see these profile overrides; the native release build keeps its settings.
say "cargo rustc --release --target wasm32-unknown-unknown (lto)"
cargo rustc --release --target wasm32-unknown-unknown --lib --crate-type cdylib \
  --config 'profile.release.lto=true' --config 'profile.release.codegen-units=1'
target_dir=${CARGO_TARGET_DIR:-target}
wasm="$target_dir/wasm32-unknown-unknown/release/webdiffusion.wasm"

rm -rf web/pkg
wasm-bindgen --target web --out-dir web/pkg "$wasm"
out=web/pkg/webdiffusion_bg.wasm
size() { stat -c %s "$1"; }
say "$wasm: $(size "$wasm") bytes; after wasm-bindgen: $(size "$out") bytes"

opt=tests/browser/node_modules/.bin/wasm-opt
if [ -x "$opt" ]; then
  # Features rustc's wasm32 target emits by default; wasm-opt must be told to keep them.
  "$opt" -O3 --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext \
    --enable-mutable-globals --enable-reference-types --enable-multivalue \
    "$out" -o "$out.opt"
  mv "$out.opt" "$out"
  say "after wasm-opt ($("$opt" --version)): $(size "$out") bytes"
else
  say "wasm-opt not installed (npm ci in tests/browser); web/pkg is unoptimised"
fi
