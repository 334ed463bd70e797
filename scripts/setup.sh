#!/usr/bin/env bash
# Everything the tests need beyond Rust, installed from PyPI into .mldeps/ (gitignored):
# the ONNX Runtime library (second backend) and the Python reference tools the parity tests use.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-onnxruntime.sh
bash scripts/install-python-tools.sh
