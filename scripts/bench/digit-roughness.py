"""Roughness of real MNIST-M digits: the statistic `grade ddpm` flags noise-corrupted digits with
(src/metrics/digit_quality.rs: mean |difference| of horizontally neighbouring pixels, all channels,
0-255 levels), its percentiles and the share above a few thresholds, for graders/ddpm.toml's
[quality] noise_threshold. Usage: python scripts/bench/digit-roughness.py [data/hw2_data/digits/mnistm]
(numpy and Pillow: the torch venv of scripts/setup.sh has both)."""
import csv
import sys

import numpy as np
from PIL import Image

root = sys.argv[1] if len(sys.argv) > 1 else "data/hw2_data/digits/mnistm"
for split in ["train", "val"]:
    rows = list(csv.reader(open(f"{root}/{split}.csv")))[1:]
    r = []
    for name, _ in rows:
        a = np.asarray(Image.open(f"{root}/data/{name}").convert("RGB")).astype(np.int32)
        r.append(np.abs(a[:, 1:] - a[:, :-1]).mean())
    r = np.array(r)
    p = np.percentile(r, [50, 90, 99, 99.9])
    above = {t: int((r > t).sum()) for t in (30, 35, 40, 45)}
    print(f"{split}: {len(r)} digits; median {p[0]:.2f}, p90 {p[1]:.2f}, p99 {p[2]:.2f}, p99.9 {p[3]:.2f}, max {r.max():.2f}; "
          + ", ".join(f"above {t}: {n} ({100 * n / len(r):.3f}%)" for t, n in above.items()))
