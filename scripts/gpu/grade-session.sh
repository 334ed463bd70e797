#!/usr/bin/env bash
# Runs ON a lent GPU machine (the device tool), from the repo root, after scripts/gpu/pack-grading.sh
# packed .gpu-grade/c1 ... cN here. One device session = N calls made back to back while the machine
# stays warm (30 s idle); every call runs this same script and carries the next folder:
#   call k: run(command='bash scripts/gpu/grade-session.sh', carry=['.gpu-grade/ck'], timeout_s=540)
# (pack-grading.sh prints the list with N). Ignored files stay on the machine between the calls of one
# session, so the chunks pile up in .gpu-grade/; each call assembles the payloads that are complete
# and runs every stage whose payloads are there and that has not run yet:
#   tract   (grade, data, refs; call 1):  --backend tract --device cuda: noise-model check; grade ddpm
#           DDIM 10 steps on 1000 digits (compared with the CPU reference), DDPM 1000 steps with
#           guidance (--batch 100, --budget DDPM_BUDGET, --keep-going: speed even when it does not
#           finish), the default sampler (--budget DEFAULT_BUDGET: steps auto); grade dann both pairs.
#   gan     (+ inception; call 3 or so):  grade gan --backend tract --device cuda (1000 faces, Inception
#           features, FID/KID) compared with the CPU reference.
#   ort     (+ the ONNX Runtime CUDA build; the last call): the same runs with --backend ort
#           --device cuda, then `bench` (every backend and device side by side, PyTorch eager on the
#           same weights), then the comparisons of every run with the CPU references and with each other.
# Each call brings back in $OUT: log.txt, summary.txt (one line per run: exit code, seconds, metrics,
# comparison), results-STAGE.tar.gz (reports, CSVs, grids and the images of each run, rewritten after
# every run so a call cut short still returns what finished) and, with the ort stage, bench.txt/json.
# Device time, estimated: machine start 1-2 min, the tract stage 3-5 min, gan 1-2 min, each call that
# only carries chunks seconds plus its transfer, the ort stage 5-8 min (the TF32 run only if the stage
# is under TF32_IF_UNDER_S=380 s by then). If a session cannot afford every call, pack with WITH_ORT=0
# (tract-cuda only) or WITH_GAN=0.
#
# Dry run on a CPU machine (what pack-grading.sh DRY_RUN=1 packed, same steps with --device cpu and small
# sizes): DRY_RUN=1 bash scripts/gpu/grade-session.sh   (ONLY_CALLS="1 2" pretends only those arrived).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 2
DRY=${DRY_RUN:-0}
if [ "$DRY" = 1 ]; then
  G=.gpu-grade-dry; DEVICE=${DEVICE:-cpu}; DDPM_BUDGET=${DDPM_BUDGET:-20s}; DEFAULT_BUDGET=${DEFAULT_BUDGET:-20s}; BENCH_ROWS=${BENCH_ROWS:-4,20}; BENCH_SECONDS=${BENCH_SECONDS:-1}; CPU_ROWS=${CPU_ROWS:-4}
  OUT=${OUT:-/tmp/gpu-grade-dry-out}
else
  G=.gpu-grade; DEVICE=${DEVICE:-cuda}; CPU_ROWS=${CPU_ROWS:-200}; DDPM_BUDGET=${DDPM_BUDGET:-75s}; DEFAULT_BUDGET=${DEFAULT_BUDGET:-20s}; BENCH_ROWS=${BENCH_ROWS:-200,2000}; BENCH_SECONDS=${BENCH_SECONDS:-1}
fi
OUT=${OUT:-/tmp/gpu-grade-out}
DDIM_BUDGET=${DDIM_BUDGET:-120s}
# DDPM 1000 steps: digits per batch (500: 1000 rows per UNet call with guidance; above 100 the batches
# span digits, with the same digits as one digit per batch).
if [ "$DRY" = 1 ]; then DDPM_BATCH=${DDPM_BATCH:-20}; else DDPM_BATCH=${DDPM_BATCH:-500}; fi
mkdir -p "$OUT"
W=$G/work
mkdir -p "$W/done" "$W/runs"
exec > >(tee -a "$OUT/log.txt") 2>&1
echo "== $(date -u +%FT%TZ) grade-session (device $DEVICE, dry run $DRY)"

# --- the machine ------------------------------------------------------------------------------------
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader || echo "no nvidia-smi"
  # The machine's CUDA 13 / cuDNN 9 libraries come with its PyTorch's nvidia-* wheels.
  PY=${PYTHON:-python3}
  SITE=$($PY -c 'import torch, os; print(os.path.dirname(os.path.dirname(torch.__file__)))' 2>/dev/null || true)
  if [ -n "$SITE" ]; then
    libs=$(ls -d "$SITE"/nvidia/*/lib 2>/dev/null | tr '\n' ':')
    export LD_LIBRARY_PATH="${libs}$SITE/torch/lib:${LD_LIBRARY_PATH:-}"
    export GRADEKIT_CUDA_LIBS="${libs%:}"
    export GRADEKIT_TORCH_PYTHON=$PY
    echo "CUDA libraries from $SITE/nvidia (torch $($PY -c 'import torch; print(torch.__version__)'))"
  else
    echo "no PyTorch found: CUDA libraries must already be on the loader path"
  fi
fi
nproc; grep -m1 "model name" /proc/cpuinfo

# --- chunks -> payloads -----------------------------------------------------------------------------
mkdir -p "$G/chunks"
for c in "$G"/c*/; do
  k=${c%/}; k=${k##*/c}
  if [ -n "${ONLY_CALLS:-}" ] && ! [[ " $ONLY_CALLS " == *" $k "* ]]; then continue; fi
  for f in "$c"*; do
    [ "${f##*/}" = manifest.txt ] && { cp "$f" "$G/manifest.txt"; continue; }
    [ -f "$G/chunks/${f##*/}" ] || cp "$f" "$G/chunks/"
  done
done
[ -f "$G/manifest.txt" ] || { echo "no manifest: nothing carried yet (.gpu-grade/cK)"; exit 2; }
ready() { [ -f "$W/payload/$1" ]; }
mkdir -p "$W/payload"
while read -r kind name size sha; do
  [ "$kind" = payload ] || continue
  ready "$name" && continue
  n=$(grep "^chunks $name " "$G/manifest.txt" | cut -d' ' -f3)
  have=$(ls "$G/chunks/$name".* 2>/dev/null | wc -l)
  if [ "$have" -lt "$n" ]; then echo "payload $name: $have of $n chunks here"; continue; fi
  cat "$G/chunks/$name".* > "$W/payload/$name.part"
  got=$(sha256sum "$W/payload/$name.part" | cut -d' ' -f1)
  if [ "$got" = "$sha" ]; then mv "$W/payload/$name.part" "$W/payload/$name"; echo "payload $name: complete ($size bytes)"
  else echo "payload $name: SHA-256 MISMATCH, dropped"; rm -f "$W/payload/$name.part"; fi
done < "$G/manifest.txt"

unpack() {  # unpacks a payload once
  local name=$1
  [ -f "$W/done/unpacked-$name" ] && return 0
  ready "$name" || return 1
  case $name in
    grade.zst) zstd -q -d -f "$W/payload/$name" -o "$W/grade" && chmod +x "$W/grade" ;;
    bench.zst) zstd -q -d -f "$W/payload/$name" -o "$W/bench" && chmod +x "$W/bench" ;;
    data.tar) mkdir -p "$W/data" && tar -xf "$W/payload/$name" -C "$W/data" ;;
    refs.tar.gz) mkdir -p "$W/refs" && tar -xzf "$W/payload/$name" -C "$W/refs" ;;
    inception.zst) zstd -q -d -f "$W/payload/$name" -o "$W/inception-fid.onnx" ;;
    ort.tar.zst) mkdir -p "$W/ort" && zstd -q -d --long=27 -c "$W/payload/$name" | tar -xf - -C "$W/ort" ;;
  esac || return 1
  touch "$W/done/unpacked-$name"
}
for p in grade.zst bench.zst data.tar refs.tar.gz inception.zst ort.tar.zst; do unpack "$p" || true; done
GRADE=$W/grade
ulimit -c 0
[ -x "$GRADE" ] && { "$GRADE" --version || ldd "$GRADE"; }

# The reduced grader specs of a dry run (pack-grading.sh made the references with the same ones).
mkdir -p "$W/specs"
if [ "$DRY" = 1 ]; then
  faces=$(ls "$W/data/face/val" 2>/dev/null | wc -l)
  sed 's/^images_per_class = .*/images_per_class = 2/' graders/ddpm.toml > "$W/specs/ddpm.toml"
  sed -e "s/^images = .*/images = $faces/" -e 's/^fid_bootstrap = .*/fid_bootstrap = 0/' graders/gan.toml > "$W/specs/gan.toml"
else
  cp graders/ddpm.toml "$W/specs/ddpm.toml"; cp graders/gan.toml "$W/specs/gan.toml"
fi
[ -f "$W/dcgan-w64.onnx" ] || { [ -x "$W/bench" ] && "$W/bench" --write-dcgan "$W/dcgan-w64.onnx" >/dev/null; }

SUMMARY=$OUT/summary.txt
# run NAME TIMEOUT_S -- grade args...: one grading run, its exit code and wall time into the summary.
run() {
  local name=$1 limit=$2; shift 3
  local dir=$W/runs/$name
  rm -rf "$dir"
  local t0; t0=$(date +%s%N)
  echo "-- $name: grade $*"
  if [ "$1" = check ]; then
    mkdir -p "$dir"; timeout "$limit" "$GRADE" "$@" | tee "$dir/check.txt"
  else
    timeout "$limit" "$GRADE" "$@" --out "$dir" --force -q
  fi
  local rc=${PIPESTATUS[0]}
  local secs; secs=$(awk "BEGIN {printf \"%.1f\", ($(date +%s%N) - $t0) / 1e9}")
  echo "$name exit=$rc wall=${secs}s $(python3 scripts/gpu/compare.py brief "$dir" 2>/dev/null)" | tee -a "$SUMMARY"
  # What has run so far comes back even if a later run outlasts the call.
  [ -n "${STAGE:-}" ] && pack_results
}
pack_results() {  # the runs of the current stage into $OUT/results-STAGE.tar.gz
  # shellcheck disable=SC2046,SC2086 # run names have no spaces; the glob is meant
  tar -czf "$OUT/results-$STAGE.tar.gz" -C "$W/runs" $(cd "$W/runs" && ls -d $STAGE_RUNS 2>/dev/null) 2>/dev/null
}
compare() {  # compare NAME RUN_A RUN_B
  echo "$1: $(python3 scripts/gpu/compare.py pair "$2" "$3" 2>&1)" | tee -a "$SUMMARY"
}

stage_done() { [ -f "$W/done/stage-$1" ]; }
begin_stage() {  # begin_stage STAGE RUN_GLOB
  STAGE=$1 STAGE_RUNS=$2 STAGE_T0=$SECONDS
  echo "== stage $STAGE ($DEVICE)"
}
finish_stage() {
  pack_results
  touch "$W/done/stage-$STAGE"
  echo "== stage $STAGE took $((SECONDS - STAGE_T0)) s"
  STAGE=
}

ddpm_runs() {  # ddpm_runs BACKEND
  local b=$1 M=models/ddpm-unet-w64.onnx
  # The first tract-cuda context compiles its kernels with NVRTC (cached in ~/.cache/tract afterwards).
  run "$b-check" 320 -- check "$M" --kind noise --backend "$b" --device "$DEVICE" --timeout 300s
  # DDIM 10 steps: 1000 digits (the same seed and batch as the CPU reference) for pixel parity.
  run "$b-ddpm-ddim10" 300 -- ddpm --spec "$W/specs/ddpm.toml" --sampler ddim --steps 10 --seed 0 --batch 100 --backend "$b" --device "$DEVICE" --budget "$DDIM_BUDGET"
  # The issue's target: 1000 digits x 1000 DDPM steps with guidance (2,000,000 UNet evaluations) in <= 60 s.
  run "$b-ddpm-ddpm1000" 400 -- ddpm --spec "$W/specs/ddpm.toml" --sampler ddpm --seed 0 --batch "$DDPM_BATCH" --backend "$b" --device "$DEVICE" --budget "$DDPM_BUDGET" --keep-going
  # The grader's default sampler (DPM-Solver++(2M), steps auto) inside a short budget.
  run "$b-ddpm-default" 300 -- ddpm --spec "$W/specs/ddpm.toml" --backend "$b" --device "$DEVICE" --budget "$DEFAULT_BUDGET"
  run "$b-dann-usps" 300 -- dann --pair mnistm-usps --model models/digit-judge-lenet.onnx --data "$W/data/digits/usps" --backend "$b" --device "$DEVICE"
  run "$b-dann-svhn" 300 -- dann --pair mnistm-svhn --model models/digit-judge-lenet.onnx --data "$W/data/digits/svhn" --backend "$b" --device "$DEVICE"
  compare "$b ddim10 vs cpu" "$W/runs/$b-ddpm-ddim10" "$W/refs/ddpm-ddim10"
  compare "$b dann usps vs cpu" "$W/runs/$b-dann-usps" "$W/refs/dann-usps"
  compare "$b dann svhn vs cpu" "$W/runs/$b-dann-svhn" "$W/refs/dann-svhn"
}
gan_run() {  # gan_run BACKEND
  local b=$1
  run "$b-gan" 400 -- gan --spec "$W/specs/gan.toml" --model "$W/dcgan-w64.onnx" --reference "$W/data/face/val" --inception "$W/inception-fid.onnx" --backend "$b" --device "$DEVICE"
  compare "$b gan vs cpu" "$W/runs/$b-gan" "$W/refs/gan"
}

# --- stages -----------------------------------------------------------------------------------------
if ! stage_done tract && [ -x "$GRADE" ] && [ -d "$W/data" ] && [ -d "$W/refs" ]; then
  begin_stage tract 'tract-*'
  ddpm_runs tract
  finish_stage
fi
if ! stage_done gan && [ -x "$GRADE" ] && [ -f "$W/inception-fid.onnx" ] && [ -f "$W/dcgan-w64.onnx" ]; then
  begin_stage gan 'tract-gan'
  gan_run tract
  finish_stage
fi
if ! stage_done ort && [ -x "$GRADE" ] && [ -f "$W/ort/libonnxruntime.so.1.31.1" ] && [ -f "$W/inception-fid.onnx" ]; then
  begin_stage ort 'ort-*'
  export ORT_DYLIB_PATH=$PWD/$W/ort/libonnxruntime.so.1.31.1
  ddpm_runs ort
  gan_run ort
  compare "ddpm1000 ort vs tract" "$W/runs/ort-ddpm-ddpm1000" "$W/runs/tract-ddpm-ddpm1000"
  compare "default ort vs tract" "$W/runs/ort-ddpm-default" "$W/runs/tract-ddpm-default"
  compare "gan ort vs tract" "$W/runs/ort-gan" "$W/runs/tract-gan"
  if [ -x "$W/bench" ]; then
    echo "-- bench: every backend and device side by side"
    timeout 300 "$W/bench" --rows "$BENCH_ROWS" --cpu-rows "$CPU_ROWS" --seconds "$BENCH_SECONDS" --no-inception --json "$OUT/bench.json" | tee "$OUT/bench.txt"
  fi
  # Speed with TensorFloat-32 (off by default for parity), while the call has time left.
  if [ $((SECONDS - STAGE_T0)) -lt "${TF32_IF_UNDER_S:-380}" ]; then
    GRADEKIT_CUDA_TF32=1 run ort-ddpm-ddpm1000-tf32 200 -- ddpm --spec "$W/specs/ddpm.toml" --sampler ddpm --seed 0 --batch "$DDPM_BATCH" --backend ort --device "$DEVICE" --budget "$DDPM_BUDGET" --keep-going
    compare "ddpm1000 ort tf32 vs fp32" "$W/runs/ort-ddpm-ddpm1000-tf32" "$W/runs/ort-ddpm-ddpm1000"
  else
    echo "skipped the TF32 run: $((SECONDS - STAGE_T0)) s into the stage" | tee -a "$SUMMARY"
  fi
  finish_stage
fi
done_list=$(for f in "$W"/done/stage-*; do [ -e "$f" ] && printf '%s ' "${f##*/stage-}"; done)
echo "== $(date -u +%FT%TZ) stages done: $done_list"
