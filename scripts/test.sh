#!/usr/bin/env bash
# The project's test command (README): every test, GPU tests on whatever adapter wgpu finds
# (lavapipe on a machine without a GPU). Set WEBDIFFUSION_REQUIRE_GPU=1 to fail instead of
# skipping GPU checks when no adapter exists (CI does).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
  XDG_RUNTIME_DIR="$(mktemp -d)"; export XDG_RUNTIME_DIR
  chmod 700 "$XDG_RUNTIME_DIR"
fi
cargo test --all-targets "$@"
