#!/usr/bin/env bash
# A small Python venv (.mldeps/py) with the reference tools the tests compare against: onnx (for
# onnx.checker), numpy and scipy (pytorch-fid's Frechet distance). Grading itself never needs Python.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.mldeps/py
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check onnx==1.23.2 numpy scipy
"$VENV/bin/python" -c "import onnx, numpy, scipy; print('python tools:', onnx.__version__, numpy.__version__, scipy.__version__)"
