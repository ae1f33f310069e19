#!/usr/bin/env bash
# One command for every benchmark of BENCHMARKS.md's "Engine benchmark" and its peers:
#   1. `webdiffusion bench --json` (release build, native wgpu on the default adapter);
#   2. the CPU peers on the same weights: PyTorch + diffusers, and ONNX Runtime's CPU EP on
#      the UNet exported to ONNX (scripts/bench_peers.py, scripts/export_unet_onnx.py);
#   3. the browser: our wasm engine vs onnxruntime-web's WebGPU EP on the same ONNX graph, in
#      headless Chromium (tests/browser/bench.mjs, pages/bench.html);
# then writes the combined tables as markdown and JSON.
#
#   scripts/bench.sh [--quick] [--no-build] [--out DIR]   (default DIR: .cache/bench/<UTC time>)
#
# --no-build uses the web/pkg and native binary already there ($WEBDIFFUSION_BIN, default
# target/release/webdiffusion) instead of building them.
#
# Idempotent: installs what is missing into .cache/ (the Python venv pinned in
# scripts/bench-requirements.txt, onnxruntime-web pinned in scripts/bench-web/, the e2e
# tests' npm packages), re-exports the ONNX graphs only when the model or the exporter
# changed. Not part of CI. Every timing is a median; run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
say() { printf 'bench: %s (%ss)\n' "$*" "$((SECONDS - start))"; }

quick=()
out=""
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=(--quick) ;;
    --no-build) build=0 ;;
    --out) out=${2:?--out needs a folder}; shift ;;
    *) echo "bench: unknown argument $1 (use --quick, --no-build, --out DIR)" >&2; exit 2 ;;
  esac
  shift
done
out=${out:-.cache/bench/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"

# Python: torch, diffusers, onnx, onnxruntime (pinned).
venv=.cache/peers-venv
stamp="$venv/.requirements"
if [ ! -x "$venv/bin/python" ] || ! cmp -s scripts/bench-requirements.txt "$stamp"; then
  say "installing $venv (scripts/bench-requirements.txt; torch is large)"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r scripts/bench-requirements.txt
  cp scripts/bench-requirements.txt "$stamp"
fi
py="$venv/bin/python"

# npm: the e2e tests' playwright-core, and onnxruntime-web for the browser peer.
if [ ! -f tests/browser/node_modules/.package-lock.json ] ||
   [ tests/browser/package-lock.json -nt tests/browser/node_modules/.package-lock.json ]; then
  say "npm ci in tests/browser"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi
web=.cache/bench-web
if ! cmp -s scripts/bench-web/package-lock.json "$web/package-lock.json" ||
   [ ! -f "$web/node_modules/onnxruntime-web/dist/ort.webgpu.min.mjs" ]; then
  say "npm ci in $web (onnxruntime-web, scripts/bench-web/package.json)"
  mkdir -p "$web"
  cp scripts/bench-web/package.json scripts/bench-web/package-lock.json "$web/"
  (cd "$web" && npm ci --no-audit --no-fund --loglevel=error)
fi
chromium=${WEBDIFFUSION_CHROMIUM:-/usr/bin/chromium}
[ -x "$chromium" ] || { echo "bench: $chromium is missing; scripts/browser-test.sh installs it" >&2; exit 1; }

target_dir=${CARGO_TARGET_DIR:-target}
bin=${WEBDIFFUSION_BIN:-$target_dir/release/webdiffusion}
if [ "$build" = 1 ]; then
  say "building the native release binary and web/pkg"
  cargo build --release --bin webdiffusion --quiet
  bin="$target_dir/release/webdiffusion"
  scripts/build-wasm.sh
fi
[ -x "$bin" ] || { echo "bench: no native binary at $bin; leave out --no-build" >&2; exit 1; }
[ -f web/pkg/webdiffusion.js ] || { echo "bench: web/pkg is missing; leave out --no-build" >&2; exit 1; }
echo "bench: native binary $bin" > "$out/binary.txt"

onnx=.cache/onnx
if [ ! -f "$onnx/export.json" ] ||
   [ -n "$(find models/mnist scripts/export_unet_onnx.py scripts/bench-requirements.txt -newer "$onnx/export.json" -type f)" ]; then
  say "exporting the UNet to ONNX ($onnx)"
  "$py" scripts/export_unet_onnx.py --out "$onnx"
fi

say "webdiffusion bench"
"$bin" bench "${quick[@]}" --json "$out/bench.json" | tee "$out/bench.txt"
say "CPU peers: PyTorch and ONNX Runtime"
"$py" scripts/bench_peers.py "${quick[@]}" --ours "$out/bench.json" --onnx "$onnx" \
  --json "$out/peers.json" | tee "$out/peers.txt"
# Fewer repeats than natively: onnxruntime-web on SwiftShader takes seconds per forward.
say "browser: ours vs onnxruntime-web (WebGPU EP) in $("$chromium" --version 2>/dev/null | head -1)"
node tests/browser/bench.mjs "${quick[@]}" --onnx "$onnx" --ort-dist "$web/node_modules/onnxruntime-web/dist" \
  --repeats 3 --sample-repeats 1 --json "$out/browser.json" | tee "$out/browser.txt"

"$py" scripts/bench_summary.py "$out"
say "done: $out/summary.md, $out/summary.json"
