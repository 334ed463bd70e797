#!/usr/bin/env bash
# Runs ON a lent GPU machine (device tool), from the repo root, after scripts/gpu/prepare.sh packed
# .gpu/ here: trains the seed-width diffusion UNet on an MNIST-M subset with `train ddpm --device cuda`
# for TRAIN_TIME, samples the course's 1000-image folder with libtorch, exports the ONNX model.
# Brings back (in $OUT): log.txt, losses.csv/.svg, preview.png, samples.tar, unet.onnx.part-* (cat them).
# Device call: command `bash scripts/gpu/ddpm-session.sh`, carry the three .gpu/ files, timeout 600 s.
# Uses the machine's own libtorch (PyTorch 2.11.0, which is why tch is pinned to 0.24).
set -uo pipefail
DEVICE=${DEVICE:-cuda}
TRAIN_TIME=${TRAIN_TIME:-400s}
WIDTH=${WIDTH:-64}
PER_CLASS=${PER_CLASS:-100}
W=/tmp/gk; rm -rf $W; mkdir -p $W/data
exec > >(tee $OUT/log.txt) 2>&1
date
if [ "$DEVICE" = cuda ]; then
  TL=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
  export LD_LIBRARY_PATH=$TL
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
fi
gunzip -c .gpu/train.gz > $W/train && chmod +x $W/train && $W/train --version || { echo "train does not start"; ldd $W/train; exit 1; }
ldd $W/train | grep -E "torch|c10|not found"
mkdir -p $W/data/mnistm/data && tar -xzf .gpu/mnistm-data.tar.gz -C $W/data/mnistm/data
tar -xf .gpu/mnistm-csv.tar -C $W/data
ls $W/data/mnistm/data | wc -l
T0=$(date +%s)
$W/train ddpm --device $DEVICE --data $W/data/mnistm --out $W/ddpm --width $WIDTH --batch 256 --steps 100000 \
  --max-time $TRAIN_TIME --save-every 2000 --sample-steps 25 --threads 8 --seed 1
echo "train exit $? after $(( $(date +%s) - T0 )) s"
T1=$(date +%s)
$W/train sample $W/ddpm/checkpoint.safetensors --device $DEVICE --out $W/samples --grid $W/samples.png --per-class $PER_CLASS --steps 100 --guidance 3 --batch 1000 --seed 0
echo "sample exit $? after $(( $(date +%s) - T1 )) s"
$W/train export ddpm $W/ddpm/checkpoint.safetensors -o $W/unet.onnx
ls -la $W/unet.onnx $W/ddpm
tar -cf $OUT/samples.tar -C $W samples samples.png
split -b 15M $W/unet.onnx $OUT/unet.onnx.part-
cp $W/ddpm/losses.csv $W/ddpm/losses.svg $OUT/
cp $W/ddpm/samples.png $OUT/preview.png
date
