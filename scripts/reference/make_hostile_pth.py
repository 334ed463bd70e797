"""Two hostile .pth files for issue 25 (class 3): checkpoints that expand to gigabytes from a few
kilobytes on disk. Written with torch.save and then edited, so their pickles are what torch writes.

    .mldeps/torch/bin/python scripts/reference/make_hostile_pth.py

- stride0_expand.pth: {"net.0.weight": zeros(1).expand(200_000_000)}: one stored float, a view of
  200 million (800 MB as f32) with stride 0.
- deflate_bomb.pth: {"net.0.weight": zeros(200_000_000)} with its storage record deflated: 800 MB
  that a zip header says it inflates to, stored in under 1 MB.
"""
import io
import os
import zipfile

import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "pth")
N = 200_000_000


def fixed(name):
    return zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))


torch.save({"net.0.weight": torch.zeros(1).expand(N)}, os.path.join(OUT, "stride0_expand.pth"))

buf = io.BytesIO()
torch.save({"net.0.weight": torch.zeros(N)}, buf)
buf.seek(0)
with zipfile.ZipFile(buf) as zi, zipfile.ZipFile(os.path.join(OUT, "deflate_bomb.pth"), "w") as zo:
    for info in zi.infolist():
        data = zi.read(info.filename)
        method = zipfile.ZIP_DEFLATED if "/data/" in info.filename else zipfile.ZIP_STORED
        zi_fixed = fixed(info.filename)
        zi_fixed.compress_type = method
        zo.writestr(zi_fixed, data)
for f in ["stride0_expand.pth", "deflate_bomb.pth"]:
    print(f, os.path.getsize(os.path.join(OUT, f)), "bytes")
