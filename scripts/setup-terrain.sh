#!/usr/bin/env bash
# Fetches the terrain consistency model (adaptive-terrain-diffusion 0.4.2 on PyPI, MIT) and
# converts its ONNX graph into models/terrain/ (model.safetensors + config.json, gitignored:
# 45 MB). Idempotent: does nothing when the converted files are newer than the converter.
#
#   scripts/setup-terrain.sh            # into models/terrain
#   TERRAIN_DIR=/some/dir scripts/setup-terrain.sh
#   (TERRAIN_VENV and TERRAIN_CACHE move the venv and the download folder)
#
# A private virtual environment (.cache/terrain-venv, gitignored) holds the pinned onnx,
# onnxruntime and numpy; onnxruntime is only used by scripts/goldens/make_terrain_goldens.py.
# The wheel is checked against its sha256 before anything inside it is read.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=0.4.2
WHEEL=adaptive_terrain_diffusion-$VERSION-py3-none-any.whl
SHA256=dd803be2c98d764e4e64db18c631eef46c210282b398c4dd080f4cda3fa7c84d
ONNX_IN_WHEEL=terrain_diffusion/weights/terrain_consistency_unet_difficulty100.onnx
CACHE=${TERRAIN_CACHE:-.cache/terrain}
VENV=${TERRAIN_VENV:-.cache/terrain-venv}
OUT=${TERRAIN_DIR:-models/terrain}
PY=${PYTHON:-python3}

if [ -f "$OUT/model.safetensors" ] && [ -f "$OUT/config.json" ] \
  && [ "$OUT/config.json" -nt scripts/convert_terrain.py ]; then
  echo "setup-terrain: $OUT is up to date"
  exit 0
fi

if ! { command -v "$PY" >/dev/null && "$PY" -c 'import venv, ensurepip' 2>/dev/null; }; then
  echo "setup-terrain: installing python3 and python3-venv"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup-terrain: need root or sudo to install python3-venv" >&2; exit 1; }
    SUDO="sudo"
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 python3-venv >/dev/null
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup-terrain: creating $VENV (onnx, onnxruntime, numpy)"
  "$PY" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import onnx, onnxruntime, numpy' 2>/dev/null; then
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    onnx==1.23.2 onnxruntime==1.31.1 numpy==2.3.5
fi

mkdir -p "$CACHE"
if [ ! -f "$CACHE/$WHEEL" ]; then
  echo "setup-terrain: pip download adaptive-terrain-diffusion==$VERSION"
  "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps \
    "adaptive-terrain-diffusion==$VERSION" -d "$CACHE"
fi
# pip names the file after the version it got; anything else is not the model we convert.
other=$(find "$CACHE" -maxdepth 1 -name 'adaptive_terrain_diffusion-*.whl' ! -name "$WHEEL" | head -1)
if [ ! -f "$CACHE/$WHEEL" ]; then
  echo "setup-terrain: expected $WHEEL in $CACHE${other:+, found $(basename "$other")}:" \
    "only version $VERSION is supported (delete $CACHE and rerun)" >&2
  exit 1
fi
got=$(sha256sum "$CACHE/$WHEEL" | cut -d' ' -f1)
if [ "$got" != "$SHA256" ]; then
  echo "setup-terrain: $CACHE/$WHEEL has sha256 $got, expected $SHA256:" \
    "not the published adaptive-terrain-diffusion $VERSION (delete it and rerun)" >&2
  exit 1
fi

"$VENV/bin/python" - "$CACHE/$WHEEL" "$ONNX_IN_WHEEL" "$CACHE/terrain.onnx" <<'EOF'
import sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    if member not in z.namelist():
        sys.exit(f"setup-terrain: {wheel} has no {member}: not the expected wheel layout")
    with z.open(member) as src, open(dest, "wb") as out:
        out.write(src.read())
EOF

"$VENV/bin/python" scripts/convert_terrain.py "$CACHE/terrain.onnx" --out "$OUT"
