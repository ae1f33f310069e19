#!/usr/bin/env bash
# The engine in a real browser: builds web/pkg (scripts/build-wasm.sh) and the native CLI,
# and runs every tests/browser/*.test.mjs (node --test) in headless Chromium with WebGPU on
# SwiftShader: Chrome's WGSL compiler (Tint) and Dawn run every kernel against the CPU
# reference, and the Engine API loads, samples and draws the bundled model, which must give
# the native CLI's image for the same seed. Installs what is
# missing: Debian's chromium (root or sudo), the npm packages pinned in
# tests/browser/package-lock.json, the wasm32 target and the pinned wasm-bindgen-cli.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
say() { printf 'browser-test: %s (%ss)\n' "$*" "$((SECONDS - start))"; }

apt_install() {
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "browser-test: need root or sudo to install $*" >&2; exit 1; }
    sudo="sudo"
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

chromium=${WEBDIFFUSION_CHROMIUM:-/usr/bin/chromium}
if [ ! -x "$chromium" ]; then
  say "installing Debian's chromium"
  apt_install chromium
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  say "installing node and npm"
  apt_install nodejs npm
fi

# npm ci wipes node_modules, so only when the lock file changed since the last install.
if [ ! -f tests/browser/node_modules/.package-lock.json ] ||
   [ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]; then
  say "npm ci (playwright-core, binaryen)"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi

say "building web/pkg"
scripts/build-wasm.sh

# The native CLI, for the test that compares the browser's image with `webdiffusion sample`.
say "building the native release binary"
cargo build --release --bin webdiffusion --quiet
target_dir=${CARGO_TARGET_DIR:-target}
WEBDIFFUSION_BIN=${WEBDIFFUSION_BIN:-$(cd "$target_dir" && pwd)/release/webdiffusion}
export WEBDIFFUSION_BIN

say "running tests/browser/*.test.mjs in $("$chromium" --version 2>/dev/null | head -1)"
# Each test has its own timeout; this one also catches a wedged node or browser. Files run
# one after another (--test-concurrency=1): each starts its own Chromium, and SwiftShader
# shares the same few cores.
(cd tests/browser && timeout --kill-after=30 1200 node --test --test-concurrency=1 ./*.test.mjs)
say "done"
