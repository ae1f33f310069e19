#!/usr/bin/env bash
# The project's test command (README): every test, GPU tests on whatever adapter wgpu finds
# (lavapipe on a machine without a GPU). Set WEBDIFFUSION_REQUIRE_GPU=1 to fail instead of
# skipping GPU checks when no adapter exists (CI does). Then the browser test
# (scripts/browser-test.sh: every kernel in headless Chromium's WebGPU); set
# WEBDIFFUSION_SKIP_BROWSER=1 to leave it out of a quick local run (CI never does).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
  XDG_RUNTIME_DIR="$(mktemp -d)"; export XDG_RUNTIME_DIR
  chmod 700 "$XDG_RUNTIME_DIR"
fi
# The terrain parity test (tests/terrain.rs) needs the converted model: fetched from PyPI
# and converted by scripts/setup-terrain.sh (idempotent). WEBDIFFUSION_SKIP_TERRAIN=1 leaves
# the download out of a quick local run (the test then skips, unless
# WEBDIFFUSION_REQUIRE_TERRAIN=1, which CI sets, makes it fail).
if [ "${WEBDIFFUSION_SKIP_TERRAIN:-}" = 1 ]; then
  echo "test: WEBDIFFUSION_SKIP_TERRAIN=1, not fetching the terrain model"
else
  scripts/setup-terrain.sh
fi
# The galaxy parity test (tests/galaxy.rs) likewise needs galaxygrad's converted networks
# (scripts/setup-galaxy.sh); WEBDIFFUSION_SKIP_GALAXY=1 leaves the download out (the test then
# skips unless WEBDIFFUSION_REQUIRE_GALAXY=1, which CI sets).
if [ "${WEBDIFFUSION_SKIP_GALAXY:-}" = 1 ]; then
  echo "test: WEBDIFFUSION_SKIP_GALAXY=1, not fetching the galaxy models"
else
  scripts/setup-galaxy.sh
fi
cargo test --all-targets "$@"
if [ "${WEBDIFFUSION_SKIP_BROWSER:-}" = 1 ]; then
  echo "test: WEBDIFFUSION_SKIP_BROWSER=1, skipping the browser test (scripts/browser-test.sh)"
else
  scripts/browser-test.sh
fi
