#!/usr/bin/env bash
# Fetches galaxygrad 0.2.1 (PyPI; its equinox score networks, arXiv:2401.07313) and converts
# the HSC and ZTF ScoreNets into models/galaxy/<name>/ (model.safetensors + config.json,
# gitignored). The package declares no licence, so nothing of it is committed: every machine
# fetches and converts it here. Idempotent: does nothing when the converted files are newer
# than the converter.
#
#   scripts/setup-galaxy.sh             # into models/galaxy/{hsc32,hsc64,ztf32,ztf64}
#   GALAXY_DIR=/some/dir scripts/setup-galaxy.sh
#   (GALAXY_VENV and GALAXY_CACHE move the venv and the download folder)
#
# The converter needs numpy only (no JAX/equinox: the .eqx files are plain np.save records).
# The wheel is checked against its sha256 before anything inside it is read.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=0.2.1
WHEEL=galaxygrad-$VERSION-py3-none-any.whl
SHA256=56fd8f02de3b025e87f690a494014371391894f2288356288068f9f5e90d8a97
MODELS=hsc32,hsc64,ztf32,ztf64
CACHE=${GALAXY_CACHE:-.cache/galaxy}
VENV=${GALAXY_VENV:-.cache/galaxy-venv}
OUT=${GALAXY_DIR:-models/galaxy}
PY=${PYTHON:-python3}

up_to_date=1
for m in ${MODELS//,/ }; do
  if ! { [ -f "$OUT/$m/model.safetensors" ] && [ -f "$OUT/$m/config.json" ] \
    && [ "$OUT/$m/config.json" -nt scripts/convert_galaxygrad.py ]; }; then
    up_to_date=0
  fi
done
if [ "$up_to_date" = 1 ]; then
  echo "setup-galaxy: $OUT is up to date"
  exit 0
fi

if ! { command -v "$PY" >/dev/null && "$PY" -c 'import venv, ensurepip' 2>/dev/null; }; then
  echo "setup-galaxy: installing python3 and python3-venv"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup-galaxy: need root or sudo to install python3-venv" >&2; exit 1; }
    SUDO="sudo"
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 python3-venv >/dev/null
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup-galaxy: creating $VENV (numpy)"
  "$PY" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import numpy' 2>/dev/null; then
  "$VENV/bin/pip" install -q --disable-pip-version-check numpy==2.3.5
fi

mkdir -p "$CACHE"
if [ ! -f "$CACHE/$WHEEL" ]; then
  echo "setup-galaxy: pip download galaxygrad==$VERSION"
  "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps \
    "galaxygrad==$VERSION" -d "$CACHE"
fi
# pip names the file after the version it got; anything else is not the model we convert
# (0.3.0 onwards download their weights from a hub instead of shipping them).
other=$(find "$CACHE" -maxdepth 1 -name 'galaxygrad-*.whl' ! -name "$WHEEL" | head -1)
if [ ! -f "$CACHE/$WHEEL" ]; then
  echo "setup-galaxy: expected $WHEEL in $CACHE${other:+, found $(basename "$other")}:" \
    "only version $VERSION is supported (delete $CACHE and rerun)" >&2
  exit 1
fi
got=$(sha256sum "$CACHE/$WHEEL" | cut -d' ' -f1)
if [ "$got" != "$SHA256" ]; then
  echo "setup-galaxy: $CACHE/$WHEEL has sha256 $got, expected $SHA256:" \
    "not the published galaxygrad $VERSION (delete it and rerun)" >&2
  exit 1
fi

"$VENV/bin/python" scripts/convert_galaxygrad.py "$CACHE/$WHEEL" --out "$OUT" --models "$MODELS"
