#!/usr/bin/env bash
# Prepares a GPU training session on the lent machines (see scripts/gpu/ddpm-session.sh), here:
#  - a release `train` built against the CUDA route of libtorch 2.11.0 (links libtorch_cuda), stripped
#    and gzipped (~7 MB);
#  - an MNIST-M subset (first N training digits, default 24000, ~39 MB gzipped PNGs): with the repo it
#    has to fit the 64 MiB a device call carries.
# Output: .gpu/{train.gz,mnistm-data.tar.gz,mnistm-csv.tar} (ignored through .git/info/exclude).
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-24000}
DATA=data/hw2_data/digits/mnistm
[ -f "$DATA/train.csv" ] || { echo "error: $DATA missing: run scripts/setup.sh (unpacks ../shared/data)" >&2; exit 2; }
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
LIBTORCH_DEST=.mldeps/libtorch-cuda bash scripts/install-libtorch.sh cuda
LIBTORCH=$PWD/.mldeps/libtorch-cuda CARGO_TARGET_DIR=target-cuda cargo build --release --features train --bin train
rm -rf .gpu && mkdir -p .gpu/stage/mnistm
strip -o .gpu/train target-cuda/release/train && gzip -f .gpu/train
head -$((N + 1)) $DATA/train.csv > .gpu/stage/mnistm/train.csv
head -1001 $DATA/val.csv > .gpu/stage/mnistm/val.csv
{ tail -n +2 .gpu/stage/mnistm/train.csv; tail -n +2 .gpu/stage/mnistm/val.csv; } | cut -d, -f1 > .gpu/stage/names
tar -czf .gpu/mnistm-data.tar.gz -C $DATA/data -T .gpu/stage/names
tar -cf .gpu/mnistm-csv.tar -C .gpu/stage mnistm/train.csv mnistm/val.csv
rm -rf .gpu/stage
du -sh --apparent-size .gpu
