#!/usr/bin/env bash
# Reproduces the measurements in README.md. Needs: the real faces, a release build with
# `--features dlib`, and the Python reference venv (see README.md, "Python reference").
# Usage: tools/measure.sh [WORK_DIR]   (default /tmp/fm)
set -euo pipefail
cd "$(dirname "$0")/../../.."
DATA=${DATA:-data/hw2_data/face}
PY=${PY:-/tmp/faceref/bin/python}
W=${1:-/tmp/fm}
B=target/release/examples/face_eval
mkdir -p "$W"

# Generated-like images: train-derived ones for tuning, val-derived ones for reporting.
$B synth "$DATA/train" "$W/synth/train" 500 1
$B synth "$DATA/val" "$W/synth/val" 500 2

# Reference counts from face_recognition itself.
$PY scripts/reference/faces/face_ref.py "$W/ref_real.csv" "$DATA/train" "$DATA/val"
$PY scripts/reference/faces/face_ref.py "$W/ref_synth.csv" "$W/synth"
{ cat "$W/ref_real.csv"; tail -n +2 "$W/ref_synth.csv"; } > "$W/ref_all.csv"

# Tuning set (train only): every other real train face + 250 of each train-derived kind.
ls "$DATA"/train/*.png | awk 'NR%2==1' > "$W/tune_list.txt"
for k in "$W"/synth/train/*; do ls "$k"/*.png | head -250; done >> "$W/tune_list.txt"
$B sweep "$W/ref_all.csv" "$W/sweep_train.csv" "@$W/tune_list.txt" | tee "$W/sweep_train.md"

# Final numbers with the chosen defaults, on everything (val is the held-out part).
$B count rustface "$W/rustface_all.csv" "$DATA/train" "$DATA/val" "$W/synth"
$B count dlib "$W/dlib_all.csv" "$DATA/train" "$DATA/val" "$W/synth"
$B compare "$W/ref_all.csv" "$W/rustface_all.csv" | tee "$W/cmp_ref_rustface.md"
$B compare "$W/ref_all.csv" "$W/dlib_all.csv" | tee "$W/cmp_ref_dlib.md"
$B compare "$W/dlib_all.csv" "$W/rustface_all.csv" | tee "$W/cmp_dlib_rustface.md"
