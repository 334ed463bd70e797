#!/usr/bin/env bash
# The GPU grading session rehearsed on this CPU machine: packs the small dry-run payload
# (pack-grading.sh with DRY_RUN=1: 20 digits, 24 faces, ONNX Runtime without its CUDA provider), then
# runs grade-session.sh once per call as the device session would, each call seeing only the folders
# carried so far, with --device cpu and short budgets. Each call's $OUT lands in /tmp/gpu-grade-dry/callK.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "${SKIP_PACK:-0}" = 1 ] || DRY_RUN=1 bash scripts/gpu/pack-grading.sh
rm -rf .gpu-grade-dry/work .gpu-grade-dry/chunks /tmp/gpu-grade-dry
n=$(find .gpu-grade-dry -maxdepth 1 -name 'c*' -type d | wc -l)
for k in $(seq 1 "$n"); do
  DRY_RUN=1 ONLY_CALLS="$(seq -s' ' 1 "$k")" OUT=/tmp/gpu-grade-dry/call$k bash scripts/gpu/grade-session.sh >/dev/null 2>&1 \
    || { echo "call $k failed: /tmp/gpu-grade-dry/call$k/log.txt"; exit 1; }
  echo "call $k: $(ls /tmp/gpu-grade-dry/call"$k" | tr '\n' ' ')"
done
cat /tmp/gpu-grade-dry/call*/summary.txt
