#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test webdiffusion natively:
# Mesa's lavapipe (software Vulkan, so wgpu finds an adapter without a GPU) and the Vulkan
# loader; Xvfb and xwd for the preview-window test (tests/preview.rs: a virtual X server,
# and a screenshot of it). Idempotent; does nothing when everything is present.
set -euo pipefail
need=()
for p in mesa-vulkan-drivers libvulkan1 xvfb x11-apps; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]} (software Vulkan for machines without a GPU)"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root or sudo to install ${need[*]}" >&2; exit 1; }
    SUDO="sudo"
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
