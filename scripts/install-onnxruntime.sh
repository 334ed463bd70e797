#!/usr/bin/env bash
# Installs the ONNX Runtime shared library from PyPI into .mldeps/onnxruntime (no Python needed at run
# time: `grade` loads libonnxruntime.so from there). ort's own binary download cannot reach its host here.
#   bash scripts/install-onnxruntime.sh          # CPU build (24 MB)
#   bash scripts/install-onnxruntime.sh --gpu    # CUDA build: onnxruntime-gpu[cuda,cudnn] (~256 MB) with the
#                                                # CUDA 13 / cuDNN 9 libraries it loads (nvidia-* wheels, ~1.5 GB)
#                                                # in .mldeps/onnxruntime/nvidia/*/lib, where `grade` finds them
#                                                # (no LD_LIBRARY_PATH needed); needs a CUDA 13 driver (R580+).
# ORT_GPU_NO_NVIDIA=1 with --gpu installs the provider alone, for machines that already have CUDA 13 and
# cuDNN 9 (then name their folders in LD_LIBRARY_PATH or GRADEKIT_CUDA_LIBS).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=1.31.1
PKG=onnxruntime
[ "${1:-}" = "--gpu" ] && PKG=onnxruntime-gpu
DEST=.mldeps/onnxruntime
WANT=$PKG
[ "$PKG" = onnxruntime-gpu ] && [ "${ORT_GPU_NO_NVIDIA:-0}" != 1 ] && WANT="$PKG[cuda,cudnn]"
if ls "$DEST"/onnxruntime/capi/libonnxruntime.so.$VERSION >/dev/null 2>&1 && [ "$(cat "$DEST/.package" 2>/dev/null)" = "$WANT" ]; then
  echo "ONNX Runtime $VERSION ($WANT) already in $DEST"; exit 0
fi
rm -rf "$DEST"
pip=(python3 -m pip install --quiet --root-user-action=ignore --disable-pip-version-check --target "$DEST")
if [ "$WANT" = "$PKG" ]; then
  "${pip[@]}" --no-deps "$PKG==$VERSION"
else
  # With its extras' dependencies: the nvidia-* wheels (and numpy/protobuf, unused by grade).
  "${pip[@]}" "$WANT==$VERSION"
  ls -d "$DEST"/nvidia/*/lib
fi
echo "$WANT" > "$DEST/.package"
ls "$DEST"/onnxruntime/capi/libonnxruntime.so.$VERSION
