#!/bin/bash
# The integrity checks' calibration runs of RESULTS.md ("Integrity"), as run on the 2-core VM:
# face memorisation (bundled DCGAN, a planted copier, a planted 10% copier), digit memorisation (a short
# run of the bundled UNet), copy detection (trained classifiers, bundled models, planted re-exports).
# Needs data/hw2_data, the FID Inception and `cargo build --release --features train`. Writes into $OUT.
set -x
OUT=${OUT:-/tmp/cal}
G=target/release/grade; T=target/release/train; D=$OUT/copy
mkdir -p $OUT $D/fp
export GRADEKIT_CACHE=$OUT/cache

# Faces: FID against cached val statistics, no bootstrap (not what is measured here).
sed -e 's/fid_bootstrap = 100/fid_bootstrap = 0/' graders/gan.toml > $OUT/gan-nobs.toml
[ -f $OUT/val.npz ] || $G fid-stats data/hw2_data/face/val -o $OUT/val.npz
$G plant memoriser data/hw2_data/face/train --rows 1000 -o $OUT/copier.onnx
$G plant memoriser data/hw2_data/face/train --rows 1000 --base models/dcgan-faces-w32.onnx --fraction 0.1 -o $OUT/tenth.onnx
for m in bundled:models/dcgan-faces-w32.onnx copier:$OUT/copier.onnx tenth:$OUT/tenth.onnx; do
  $G gan --model ${m#*:} --spec $OUT/gan-nobs.toml --reference $OUT/val.npz --out $OUT/${m%%:*} --force --quiet --json $OUT/${m%%:*}.json
done
# Real val faces and digits against the training sets (prints quantiles of the nearest distances).
cargo test --release --locked --features train --test integrity calibration -- --ignored --nocapture

# Digits: 100 digits of the bundled UNet at 10 steps.
sed -e 's/images_per_class = 100/images_per_class = 10/' graders/ddpm.toml > $OUT/ddpm10.toml
$G ddpm --spec $OUT/ddpm10.toml --steps 10 --out $OUT/ddpm-bundled --force --quiet --json $OUT/ddpm-bundled.json

# Copies.
V=data/hw2_data/digits/usps
for s in 1 2; do $T classifier --out $D/clf-s$s --steps 400 --seed $s --force; $T export classifier $D/clf-s$s/checkpoint.safetensors -o $D/clf-s$s.onnx; done
$T classifier --out $D/clf-b64 --steps 400 --seed 3 --batch 64 --lr 5e-4 --force; $T export classifier $D/clf-b64/checkpoint.safetensors -o $D/clf-b64.onnx
for n in 1e-4 1e-3 1e-2; do
  $G plant reexport $D/clf-s1.onnx --noise $n --opset 18 -o $D/clf-s1-copy-$n.onnx
  $G plant reexport models/dann-mnistm-usps.onnx --noise $n --opset 18 -o $D/dann-usps-copy-$n.onnx
  $G plant reexport models/dcgan-faces-w32.onnx --noise $n --opset 18 -o $D/dcgan-copy-$n.onnx
  $G plant reexport models/ddpm-unet-w64.onnx --noise $n --opset 18 -o $D/unet-copy-$n.onnx
done
$G plant memoriser data/hw2_data/face/train --rows 1000 --base models/dcgan-faces-w32.onnx --fraction 0.1 -o $D/dcgan-tenth.onnx
for m in $D/clf-*.onnx models/dann-mnistm-usps.onnx models/dann-mnistm-svhn.onnx models/digit-judge-lenet.onnx $D/dann-usps-copy-*.onnx; do
  $G fingerprint --kind classifier $m --val $V --output $D/fp/clf--$(basename $m .onnx).json; done
for m in models/dcgan-faces-w32.onnx fixtures/models/dcgan-w8.onnx $D/dcgan-copy-*.onnx $D/dcgan-tenth.onnx; do
  $G fingerprint --kind generator $m --output $D/fp/gen--$(basename $m .onnx).json; done
for m in models/ddpm-unet-w64.onnx fixtures/models/noise-conv.onnx fixtures/models/noise-oracle.onnx $D/unet-copy-*.onnx; do
  $G fingerprint --kind noise $m --output $D/fp/noise--$(basename $m .onnx).json; done
for k in clf gen noise; do python3 scripts/fingerprint_pairs.py $D/fp/$k--*.json; done
