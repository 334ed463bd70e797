#!/usr/bin/env bash
# Accuracy against sampling steps for each sampler, on a real noise model, judged by a digit classifier:
# the README's steps-vs-accuracy table. Runs `grade ddpm` with fixed step counts on PER_CLASS images per
# digit (default 20, i.e. 200 images: a 15-minute CPU budget holds ~20 steps for 1000 images).
#
#   bash scripts/bench/ddpm-steps.sh MODEL.onnx JUDGE.onnx [OUT_DIR] 
#   env: GRADE (default target/release/grade), PER_CLASS (20), STEPS ("5 10 15 20 30"),
#        SAMPLERS ("dpm-solver ddim"; a ":noclip" suffix, e.g. "ddim:noclip", turns x0 clipping off),
#        BACKEND (ort)
# Each row also gives the noise-corrupted share of the images and the judge FID (graders/ddpm.toml [quality]).
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${1:?usage: ddpm-steps.sh MODEL.onnx JUDGE.onnx [OUT_DIR]}
JUDGE=${2:?usage: ddpm-steps.sh MODEL.onnx JUDGE.onnx [OUT_DIR]}
OUT=${3:-out/ddpm-steps}
GRADE=${GRADE:-target/release/grade}
PER_CLASS=${PER_CLASS:-20}
STEPS=${STEPS:-5 10 15 20 30}
SAMPLERS=${SAMPLERS:-dpm-solver ddim}
BACKEND=${BACKEND:-ort}
mkdir -p "$OUT"
SPEC="$OUT/ddpm-$PER_CLASS.toml"
sed "s/^images_per_class = .*/images_per_class = $PER_CLASS/" graders/ddpm.toml > "$SPEC"
echo "| sampler | clip | steps | accuracy ($((PER_CLASS * 10)) images) | noise-corrupted | judge FID | noise-model evaluations/s | generate s |" > "$OUT/table.md"
echo "|---|---|---|---|---|---|---|---|" >> "$OUT/table.md"
for entry in $SAMPLERS; do
  s=${entry%%:*}
  clip=()
  [ "$entry" != "${entry%:noclip}" ] && clip=(--no-clip)
  for n in $STEPS; do
    dir="$OUT/${entry/:/-}-$n"
    "$GRADE" ddpm --model "$MODEL" --classifier "$JUDGE" --spec "$SPEC" --sampler "$s" --steps "$n" "${clip[@]}" \
      --backend "$BACKEND" --budget 3h --out "$dir" --force --quiet >/dev/null || true
    python3 - "$dir/report.json" "$s" "$n" >> "$OUT/table.md" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
m = {x["name"]: x["value"] for x in r["metrics"]}
t = r["timings"]
fid = m.get("judge_fid")
print(f"| {r['details']['sampler']} | {'on' if r['details']['clip_x0'] else 'off'} | {sys.argv[3]} | {m['accuracy']:.3f} | "
      f"{m.get('noise_fraction', float('nan')):.3f} | {'-' if fid is None else f'{fid:.2f}'} | {t['evaluations_per_second']:.1f} | {t['generate']:.0f} |")
PY
    tail -1 "$OUT/table.md"
  done
done
echo "wrote $OUT/table.md"
