#!/usr/bin/env bash
# Builds the browser package (scripts/build-web.sh) and serves the demo on 127.0.0.1:
#   scripts/serve-demo.sh            # http://127.0.0.1:8080/
#   PORT=9000 scripts/serve-demo.sh  # another port
#   scripts/serve-demo.sh --no-build # serve what web/pkg/ has now
# Open the printed URL in a browser with WebGPU (Chrome/Edge 113+; on Linux enable
# chrome://flags/#enable-unsafe-webgpu). The server binds to loopback only and serves
# www/, web/ and models/ (the bundled MNIST model) and nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v node >/dev/null || { echo "serve-demo: node is needed (apt-get install nodejs)" >&2; exit 1; }
if [ "${1:-}" != "--no-build" ]; then
  scripts/build-web.sh
fi
exec node scripts/demo-server.mjs --port "${PORT:-8080}"
