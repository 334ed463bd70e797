#!/usr/bin/env bash
# Packs, here, everything scripts/gpu/grade-session.sh needs on a lent GPU machine (no Rust, no
# internet, 64 MiB per call including the working tree) into calls of at most PART_MB each:
#  - `grade` and the `bench` example built with tract's CUDA backend (cargo feature tract-cuda),
#    stripped and zstd-compressed;
#  - the digit data the DANN graders read (USPS and SVHN val) and FACES val faces for `grade gan`;
#  - CPU reference runs of the same grading commands, made here with ONNX Runtime on the CPU, that the
#    device runs are compared with: grade ddpm with DDIM 10 steps (1000 digits), grade dann on both
#    pairs, grade gan (the seed DCGAN at width 64 with seeded weights, 1000 faces, FID/KID);
#  - the FID Inception (.mldeps/fid/inception-fid.onnx, 84 MB);
#  - ONNX Runtime 1.31.1's CUDA build from PyPI's onnxruntime-gpu wheel (libonnxruntime.so and the
#    284 MB CUDA provider; zstd -19 --long=27, ~185 MB).
# Every payload is split into chunks and the chunks are laid, in order, into folders .gpu-grade/c1,
# c2, ... (at most PART_MB each): call k of the device session carries .gpu-grade/ck. The device keeps
# ignored files between calls of one warm session, so the payloads assemble there; grade-session.sh
# runs each stage as soon as its payloads are complete (see its header for the call sequence).
#
# usage: bash scripts/gpu/pack-grading.sh            (the real session: ~10 min here for the references)
#        DRY_RUN=1 bash scripts/gpu/pack-grading.sh  (small sizes into .gpu-grade-dry, for the CPU dry run)
# env: PART_MB (default 34: the working tree, ~24 MiB, travels with every call), FACES (1000; dry 24),
# REFS=0 packs no references (device comparisons then report a missing report), REFS=force makes them
# again (else those of an earlier pack in .gpu-grade-refs are reused), WITH_ORT=0 leaves
# ONNX Runtime's CUDA build out (about 6 calls fewer: a session for tract-cuda alone), WITH_GAN=0 the
# Inception (about 2 calls fewer).
set -euo pipefail
cd "$(dirname "$0")/../.."
DRY=${DRY_RUN:-0}
if [ "$DRY" = 1 ]; then G=.gpu-grade-dry; FACES=${FACES:-24}; else G=.gpu-grade; FACES=${FACES:-1000}; fi
PART_MB=${PART_MB:-34}
DATA=${DATA:-data/hw2_data}
for d in "$DATA/digits/usps" "$DATA/digits/svhn" "$DATA/face/val"; do
  [ -d "$d" ] || { echo "error: $d missing: run scripts/setup.sh (unpacks ../shared/data)" >&2; exit 2; }
done
[ -f .mldeps/fid/inception-fid.onnx ] || { echo "error: no FID Inception: bash scripts/install-fid-weights.sh" >&2; exit 2; }
grep -qx "/$G/" .git/info/exclude 2>/dev/null || echo "/$G/" >> .git/info/exclude

echo "== build (target-cuda, --features tract-cuda)"
CARGO_TARGET_DIR=target-cuda cargo build --release --locked --features tract-cuda --bin grade --example bench
GRADE=target-cuda/release/grade
BENCH=target-cuda/release/examples/bench

rm -rf "$G"
S=$G/stage
mkdir -p "$S/payload" "$S/tmp"
P=$S/payload

echo "== binaries"
strip -o "$S/tmp/grade" "$GRADE" && zstd -q -19 -T2 "$S/tmp/grade" -o "$P/grade.zst"
strip -o "$S/tmp/bench" "$BENCH" && zstd -q -19 -T2 "$S/tmp/bench" -o "$P/bench.zst"

echo "== data: USPS/SVHN val, $FACES val faces"
D=$S/tmp/data
for pair in usps svhn; do
  mkdir -p "$D/digits/$pair/data"
  cp "$DATA/digits/$pair/val.csv" "$D/digits/$pair/"
  tail -n +2 "$DATA/digits/$pair/val.csv" | cut -d, -f1 | (cd "$DATA/digits/$pair/data" && xargs cp -t "$OLDPWD/$D/digits/$pair/data")
done
mkdir -p "$D/face/val"
# shellcheck disable=SC2012
ls "$DATA/face/val" | sort | sed -n "1,${FACES}p" | (cd "$DATA/face/val" && xargs cp -t "$OLDPWD/$D/face/val")
tar -cf "$P/data.tar" -C "$D" .

echo "== the generator graded by grade gan: the seed DCGAN, width 64, seeded weights (bench --write-dcgan)"
"$BENCH" --write-dcgan "$S/tmp/dcgan-w64.onnx" >/dev/null

# The same reduced grader specs the device uses in a dry run (grade-session.sh writes them the same way).
specs() {
  local out=$1
  mkdir -p "$out"
  if [ "$DRY" = 1 ]; then
    sed 's/^images_per_class = .*/images_per_class = 2/' graders/ddpm.toml > "$out/ddpm.toml"
    sed -e "s/^images = .*/images = $FACES/" -e 's/^fid_bootstrap = .*/fid_bootstrap = 0/' graders/gan.toml > "$out/gan.toml"
  else
    cp graders/ddpm.toml "$out/ddpm.toml"
    cp graders/gan.toml "$out/gan.toml"
  fi
}
# The references are kept in ${G}-refs and reused by later packs (REFS=force makes them again).
R=${G}-refs
grep -qx "/$R/" .git/info/exclude 2>/dev/null || echo "/$R/" >> .git/info/exclude
if [ "${REFS:-1}" = 1 ] && [ -f "$R/done" ]; then
  echo "== CPU references: reusing $R (made $(cat "$R/done"); REFS=force to make them again)"
elif [ "${REFS:-1}" != 0 ]; then
  rm -rf "$R"; mkdir -p "$R"
  echo "== CPU references (ONNX Runtime $(basename .mldeps/onnxruntime/onnxruntime/capi/libonnxruntime.so.*), here)"
  specs "$S/tmp/specs"
  t0=$(date +%s)
  "$GRADE" ddpm --spec "$S/tmp/specs/ddpm.toml" --sampler ddim --steps 10 --seed 0 --batch 100 --backend ort --device cpu \
    --out "$R/ddpm-ddim10" --budget 40m -q || echo "(grade ddpm exit $?)"
  "$GRADE" dann --pair mnistm-usps --model models/digit-judge-lenet.onnx --data "$D/digits/usps" --backend ort --device cpu --out "$R/dann-usps" -q || echo "(exit $?)"
  "$GRADE" dann --pair mnistm-svhn --model models/digit-judge-lenet.onnx --data "$D/digits/svhn" --backend ort --device cpu --out "$R/dann-svhn" -q || echo "(exit $?)"
  "$GRADE" gan --spec "$S/tmp/specs/gan.toml" --model "$S/tmp/dcgan-w64.onnx" --reference "$D/face/val" \
    --inception .mldeps/fid/inception-fid.onnx --backend ort --device cpu --out "$R/gan" -q || echo "(grade gan exit $?)"
  echo "references took $(( $(date +%s) - t0 )) s (load: $(cut -d' ' -f1-3 /proc/loadavg))"
  # Images travel as one tar per run; the device compares pixels.
  for run in "$R"/*/; do
    [ -d "$run/images" ] && tar -cf "$run/images.tar" -C "$run" images && rm -rf "$run/images"
  done
  uname -a > "$R/machine.txt"; grep -m1 "model name" /proc/cpuinfo >> "$R/machine.txt"
  date -u +%FT%TZ > "$R/done"
fi
mkdir -p "$R"
tar -czf "$P/refs.tar.gz" -C "$R" .

if [ "${WITH_GAN:-1}" = 1 ]; then
  echo "== FID Inception"
  zstd -q -19 -T2 .mldeps/fid/inception-fid.onnx -o "$P/inception.zst"
fi

if [ "${WITH_ORT:-1}" = 1 ]; then
echo "== ONNX Runtime 1.31.1 CUDA build (onnxruntime-gpu wheel from PyPI)"
WHEELS=.mldeps/wheels
WHL=$(ls $WHEELS/onnxruntime_gpu-1.31.1-cp312-*.whl 2>/dev/null | head -1 || true)
if [ -z "$WHL" ]; then
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 -d $WHEELS onnxruntime-gpu==1.31.1
  WHL=$(ls $WHEELS/onnxruntime_gpu-1.31.1-cp312-*.whl | head -1)
fi
mkdir -p "$S/tmp/ort"
python3 - "$WHL" "$S/tmp/ort" <<'EOF'
import sys, zipfile, os
z = zipfile.ZipFile(sys.argv[1])
for n in ["libonnxruntime.so.1.31.1", "libonnxruntime_providers_shared.so", "libonnxruntime_providers_cuda.so"]:
    with z.open("onnxruntime/capi/" + n) as src, open(os.path.join(sys.argv[2], n), "wb") as dst:
        dst.write(src.read())
EOF
if [ "$DRY" = 1 ]; then
  # The dry run uses only the CPU provider of this library: leave the 284 MB CUDA provider out.
  rm "$S/tmp/ort/libonnxruntime_providers_cuda.so"
fi
tar -cf - -C "$S/tmp/ort" . | zstd -q -19 --long=27 -T2 -o "$P/ort.tar.zst"
fi

echo "== chunks into calls of at most $PART_MB MiB"
python3 - "$P" "$G" "$PART_MB" <<'EOF'
import hashlib, os, sys
payload_dir, g, part_mb = sys.argv[1], sys.argv[2], int(sys.argv[3])
limit = part_mb * 1024 * 1024
order = ["grade.zst", "data.tar", "refs.tar.gz", "bench.zst", "inception.zst", "ort.tar.zst"]
calls, cur, cur_size = [], [], 0
manifest = []
for name in [n for n in order if os.path.exists(os.path.join(payload_dir, n))]:
    data = open(os.path.join(payload_dir, name), "rb").read()
    manifest.append(f"payload {name} {len(data)} {hashlib.sha256(data).hexdigest()}")
    off, k = 0, 0
    while off < len(data):
        room = limit - cur_size
        if room < 1024 * 1024:  # start a new call rather than leave a sliver
            calls.append(cur); cur, cur_size = [], 0; room = limit
        piece = data[off:off + room]
        cur.append((f"{name}.{k:02d}", piece)); cur_size += len(piece); off += len(piece); k += 1
    manifest.append(f"chunks {name} {k}")
if cur:
    calls.append(cur)
for i, chunks in enumerate(calls, 1):
    d = os.path.join(g, f"c{i}")
    os.makedirs(d)
    for n, piece in chunks:
        open(os.path.join(d, n), "wb").write(piece)
man = "\n".join(manifest + [f"calls {len(calls)}"]) + "\n"
for i in range(1, len(calls) + 1):
    open(os.path.join(g, f"c{i}", "manifest.txt"), "w").write(man)
open(os.path.join(g, "manifest.txt"), "w").write(man)
for i, chunks in enumerate(calls, 1):
    size = sum(len(p) for _, p in chunks)
    print(f"c{i}: {size / 2**20:5.1f} MiB  " + " ".join(n for n, _ in chunks))
EOF
rm -rf "$S"
tree_bytes=$(git ls-files -co --exclude-standard -z | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
biggest=$(du -sb "$G"/c* | sort -n | tail -1 | cut -f1)
echo "working tree that travels with every call: $((tree_bytes / 1048576)) MiB; largest call: $(( (tree_bytes + biggest) / 1048576 )) MiB of 64"
[ $((tree_bytes + biggest)) -lt $((64 * 1048576)) ] || echo "WARNING: a call would exceed 64 MiB: lower PART_MB"
n=$(ls -d "$G"/c* | wc -l)
echo
echo "Device session: $n calls back to back (the machine stays warm 30 s after each):"
for k in $(seq 1 "$n"); do
  echo "  run(command='bash scripts/gpu/grade-session.sh', carry=['$G/c$k'], timeout_s=540)"
done
