"""PyTorch eager speed of the seed Diffusion_UNet_Small (scripts/reference/seed_models.py) on the weights
of the ONNX file examples/bench.rs benchmarks, for that example.

usage: python bench_torch.py DIR ROWS[,ROWS...] SECONDS DEVICES WIDTH [CPU_ROWS[,...]]
(CPU_ROWS: the rows per call on the CPU, default ROWS.)
DIR holds what bench.rs wrote: weights.json + weights.bin (the ONNX float initializers: name -> shape,
offset, little-endian f32) and x.bin + tl.json (one call's inputs). The initializers map onto PyTorch's
state_dict as gradekit's exporter wrote them: GroupNorm affine [C,1,1] -> [C]; `NAME.T` is the
transposed Linear weight; attention in_proj weight/bias split into `.q/.k/.v` (weights transposed);
`label_emb.weight_with_null` carries an extra zero row for the null label. The load is strict: every
parameter must come from the file.
Prints one JSON line per (device, rows) with evaluations per second, and writes eps_DEVICE.bin (the
output on x.bin) for bench.rs's parity line; a device that is not available prints {"skipped": ...}.
"""
import json
import pathlib
import sys
import time

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from seed_models import DiffusionUNetSmall  # noqa: E402


def load_state(d, net):
    index = json.loads((d / "weights.json").read_text())
    blob = np.fromfile(d / "weights.bin", dtype="<f4")

    def get(name):
        e = index[name]
        return torch.from_numpy(blob[e["offset"]: e["offset"] + e["len"]].copy()).reshape(e["shape"])

    state = {}
    for k, v in net.state_dict().items():
        if k in index and tuple(index[k]["shape"]) == tuple(v.shape):
            t = get(k)
        elif k in index:
            t = get(k).reshape(v.shape)  # GroupNorm affine stored as [C, 1, 1]
        elif k + ".T" in index:
            t = get(k + ".T").t()
        elif k.endswith("in_proj_weight"):
            t = torch.cat([get(f"{k}.{p}.T").t() for p in "qkv"])
        elif k.endswith("in_proj_bias"):
            t = torch.cat([get(f"{k}.{p}") for p in "qkv"])
        elif k == "label_emb.weight":
            t = get("label_emb.weight_with_null")[: v.shape[0]]
        else:
            raise SystemExit(f"no initializer for {k} in the ONNX file")
        if tuple(t.shape) != tuple(v.shape):
            raise SystemExit(f"{k}: shape {tuple(t.shape)} in the file, {tuple(v.shape)} in PyTorch")
        state[k] = t.contiguous()
    net.load_state_dict(state, strict=True)


def main():
    d = pathlib.Path(sys.argv[1])
    rows_list = [int(r) for r in sys.argv[2].split(",")]
    seconds = float(sys.argv[3])
    devices = sys.argv[4].split(",")
    width = int(sys.argv[5])
    cpu_rows = [int(r) for r in sys.argv[6].split(",")] if len(sys.argv) > 6 else rows_list
    net = DiffusionUNetSmall(w=width).eval()
    load_state(d, net)
    tl = json.loads((d / "tl.json").read_text())
    px = torch.from_numpy(np.fromfile(d / "x.bin", dtype="<f4").copy()).reshape(tl["rows"], 3, 28, 28)
    pt, pl = torch.tensor(tl["t"]), torch.tensor(tl["label"])
    for dev in devices:
        if dev == "cuda" and not torch.cuda.is_available():
            print(json.dumps({"device": dev, "skipped": f"torch {torch.__version__} sees no CUDA device"}), flush=True)
            continue
        m = net.to(dev)
        with torch.inference_mode():
            eps = m(px.to(dev), pt.to(dev), pl.to(dev)).float().cpu().numpy()
            eps.astype("<f4").tofile(d / f"eps_{dev}.bin")
            dev_rows = cpu_rows if dev == "cpu" else rows_list
            for rows in dev_rows:
                x = torch.from_numpy(np.sin(np.arange(rows * 3 * 28 * 28, dtype=np.float32) * np.float32(0.618))).reshape(rows, 3, 28, 28).to(dev)
                t = torch.full((rows,), 500, device=dev)
                y = (torch.arange(rows) % 11).to(dev)
                m(x, t, y)
                if dev == "cuda":
                    torch.cuda.synchronize()
                n, t0 = 0, time.time()
                while n < 2 or time.time() - t0 < seconds:
                    m(x, t, y)
                    n += 1
                if dev == "cuda":
                    torch.cuda.synchronize()
                eps_s = rows * n / (time.time() - t0)
                print(json.dumps({"device": dev, "rows": rows, "evaluations_per_second": eps_s, "torch": torch.__version__,
                                  "parity_file": f"eps_{dev}.bin" if rows == dev_rows[0] else None}), flush=True)


if __name__ == "__main__":
    main()
