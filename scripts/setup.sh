#!/usr/bin/env bash
# Everything the tests need beyond Rust, installed from PyPI into .mldeps/ (gitignored):
# the ONNX Runtime library (second backend) and the Python reference tools the parity tests use
# (onnx.checker, numpy/scipy, PyTorch with pytorch-fid). Grading itself needs none of them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-onnxruntime.sh
bash scripts/install-python-tools.sh
# PyTorch + pytorch-fid for the parity tests (~2.6 GB from PyPI, about 4 minutes).
bash scripts/install-torch.sh
