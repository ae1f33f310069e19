#!/usr/bin/env bash
# The engine in a real browser: builds web/pkg (scripts/build-wasm.sh) and runs
# tests/browser/ (node --test) in headless Chromium with WebGPU on SwiftShader, so Chrome's
# WGSL compiler (Tint) and Dawn run every kernel against the CPU reference. Installs what is
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

say "running tests/browser in $("$chromium" --version 2>/dev/null | head -1)"
# Each test has its own timeout; this one also catches a wedged node or browser.
(cd tests/browser && timeout --kill-after=30 900 node --test selfcheck.test.mjs)
say "done"
