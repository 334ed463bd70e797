#!/usr/bin/env bash
# libtorch for the trainer (cargo feature `train`): tch 0.24 needs PyTorch 2.11.0 exactly (the version the
# lent GPU machines hold), taken from PyPI because tch's own download host is unreachable.
#
#   bash scripts/install-libtorch.sh        # cpu (default): link libtorch_cpu only
#   bash scripts/install-libtorch.sh cuda   # the full CUDA build, for GPU runners
#
# Makes .mldeps/libtorch/{include,lib,root,route}; .cargo/config.toml points torch-sys at it and build.rs
# sets the binary's rpath to the real torch/lib, so no LD_LIBRARY_PATH is needed.
# cpu: reuses the torch of .mldeps/torch (scripts/install-torch.sh) when it is 2.11.0, else installs the
# torch wheel without dependencies plus the two small CUDA runtime wheels libtorch_cpu.so needs (~600 MB).
# lib/ then holds links to torch/lib without the CUDA libraries, and libtorch.so -> libtorch_cpu.so, so
# torch-sys links the CPU library alone (STACK.md). cuda: needs the full venv (install-torch.sh, 2.6 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUTE=${1:-cpu}
VERSION=2.11.0
DEST=${LIBTORCH_DEST:-.mldeps/libtorch}  # .cargo/config.toml reads .mldeps/libtorch
PY=python3

torch_site() { # the site-packages holding torch $VERSION, or nothing
  local py=$1
  [ -x "$py" ] || return 0
  "$py" - "$VERSION" <<'PY' 2>/dev/null || true
import sys, importlib.metadata as md, sysconfig
try:
    if md.version("torch").split("+")[0] == sys.argv[1]:
        print(sysconfig.get_paths()["purelib"])
except md.PackageNotFoundError:
    pass
PY
}

case "$ROUTE" in
  cpu)
    SITE=$(torch_site .mldeps/torch/bin/python)
    if [ -z "$SITE" ]; then
      SITE=$PWD/.mldeps/libtorch-wheels
      if [ ! -f "$SITE/torch/lib/libtorch_cpu.so" ]; then
        $PY -m pip install --quiet --disable-pip-version-check --no-deps --target "$SITE" \
          torch==$VERSION nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
      fi
    fi ;;
  cuda)
    bash scripts/install-torch.sh
    SITE=$(torch_site .mldeps/torch/bin/python)
    [ -n "$SITE" ] || { echo "error: .mldeps/torch does not hold torch $VERSION; remove it and rerun" >&2; exit 2; } ;;
  *) echo "usage: $0 [cpu|cuda]" >&2; exit 2 ;;
esac
SITE=$(cd "$SITE" && pwd)
TORCH=$SITE/torch
[ -f "$TORCH/lib/libtorch_cpu.so" ] || { echo "error: no libtorch_cpu.so under $TORCH/lib" >&2; exit 2; }

rm -rf "$DEST"
mkdir -p "$DEST/lib"
ln -s "$TORCH/include" "$DEST/include"
if [ "$ROUTE" = cpu ]; then
  for f in "$TORCH"/lib/*.so*; do
    case "$(basename "$f")" in *cuda*|*nvshmem*|*nvrtc*|libtorch.so|libtorch_python.so) continue ;; esac
    ln -s "$f" "$DEST/lib/"
  done
  ln -s "$TORCH/lib/libtorch_cpu.so" "$DEST/lib/libtorch.so"
  for f in "$SITE"/nvidia/cu13/lib/libcudart.so.13 "$SITE"/nvidia/cu13/lib/libcupti.so.13; do
    [ -f "$f" ] && ln -s "$f" "$DEST/lib/"
  done
else
  for f in "$TORCH"/lib/*.so*; do ln -s "$f" "$DEST/lib/"; done
fi
echo "$TORCH/lib" > "$DEST/root"
echo "$ROUTE" > "$DEST/route"
echo "$VERSION" > "$DEST/build-version"
echo "libtorch $VERSION ($ROUTE) ready in $DEST (from $TORCH)"
