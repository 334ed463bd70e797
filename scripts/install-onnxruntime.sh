#!/usr/bin/env bash
# Installs the ONNX Runtime shared library from PyPI into .mldeps/onnxruntime (no Python needed at run
# time: `grade` loads libonnxruntime.so from there). ort's own binary download cannot reach its host here.
#   bash scripts/install-onnxruntime.sh          # CPU build (24 MB)
#   bash scripts/install-onnxruntime.sh --gpu    # CUDA build (onnxruntime-gpu, ~256 MB, needs a CUDA 13 driver)
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=1.31.1
PKG=onnxruntime
[ "${1:-}" = "--gpu" ] && PKG=onnxruntime-gpu
DEST=.mldeps/onnxruntime
if ls "$DEST"/onnxruntime/capi/libonnxruntime.so.$VERSION >/dev/null 2>&1 && [ "$(cat "$DEST/.package" 2>/dev/null)" = "$PKG" ]; then
  echo "ONNX Runtime $VERSION ($PKG) already in $DEST"; exit 0
fi
rm -rf "$DEST"
python3 -m pip install --quiet --root-user-action=ignore --disable-pip-version-check --no-deps --target "$DEST" "$PKG==$VERSION"
echo "$PKG" > "$DEST/.package"
ls "$DEST"/onnxruntime/capi/libonnxruntime.so.$VERSION
