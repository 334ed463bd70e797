#!/usr/bin/env bash
# PyTorch + pytorch-fid in a venv (.mldeps/torch), for the parity tests that compare gradekit with the
# official tools (pytorch-fid's InceptionV3 and Frechet distance, torch.save checkpoints, the seed
# models' PyTorch modules), and the libtorch the trainer links (scripts/install-libtorch.sh).
# PyTorch 2.11.0 because tch 0.24 needs exactly that (the lent GPU machines hold it too).
# Large (~2.6 GB download from PyPI); grading never needs it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.mldeps/torch
# diffusers: its DDIM / DPM-Solver++ schedulers are the golden reference for the grader's samplers.
DIFFUSERS=0.42.1
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import torch, pytorch_fid, diffusers; assert torch.__version__.startswith('2.11.0') and diffusers.__version__ == '$DIFFUSERS'" 2>/dev/null; then
  echo "torch venv ready: $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"; exit 0
fi
if ! { [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import torch, pytorch_fid; assert torch.__version__.startswith('2.11.0')" 2>/dev/null; }; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check torch==2.11.0 torchvision==0.26.0 pytorch-fid==0.3.0 scipy
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "diffusers==$DIFFUSERS"
"$VENV/bin/python" -c "import torch, pytorch_fid; print('torch venv ready:', torch.__version__)"
