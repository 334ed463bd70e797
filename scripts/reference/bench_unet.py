"""PyTorch eager speed of the seed Diffusion_UNet_Small (scripts/reference/seed_models.py) for
examples/bench_noise.rs: prints evaluations per second. Weights are random: they do not change the
work done. usage: python bench_unet.py WIDTH IMAGES_PER_CALL CALLS"""
import pathlib
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from seed_models import DiffusionUNetSmall  # noqa: E402

width, rows, calls = (int(a) for a in sys.argv[1:4])
torch.manual_seed(0)
net = DiffusionUNetSmall(w=width).eval()
x = torch.randn(rows, 3, 28, 28)
t = torch.full((rows,), 500)
y = torch.arange(rows) % 11
with torch.inference_mode():
    net(x, t, y)
    t0 = time.time()
    for _ in range(calls):
        net(x, t, y)
    print(rows * calls / (time.time() - t0))
