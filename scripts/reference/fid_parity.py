"""Reference side of the FID parity test: pytorch-fid's own InceptionV3 and Frechet distance.

The official weights (pt_inception-2015-12-05) cannot be downloaded here, so the network is built
with random weights (pytorch-fid's loader is handed a random state_dict with the same names and
shapes, batch-norm statistics set from real activations so features stay finite), saved as a .pth
the way the official file is laid out, and run by pytorch-fid's own code.

usage: python fid_parity.py DIR_A DIR_B OUT_DIR
writes OUT_DIR/inception.pth, OUT_DIR/features_a.json, OUT_DIR/features_b.json, OUT_DIR/result.json
"""
import json
import pathlib
import sys

import numpy as np
import torch
import pytorch_fid.inception as inc
from pytorch_fid import fid_score

dir_a, dir_b, out = map(pathlib.Path, sys.argv[1:4])
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(1234)


def random_fid_state_dict():
    net = inc._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    # Same names and shapes as the FID variant (its blocks subclass torchvision's).
    sd = net.state_dict()
    for k, v in sd.items():
        if k.endswith("weight") and v.dim() == 1:
            sd[k] = 1.0 + 0.1 * torch.randn_like(v)
        elif k.endswith("bias"):
            sd[k] = 0.1 * torch.randn_like(v)
    return sd


holder = {}


def fake_load(url, progress=True):
    holder["sd"] = random_fid_state_dict()
    return holder["sd"]


inc.load_state_dict_from_url = fake_load
model = inc.InceptionV3([inc.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])

# Batch-norm statistics from real activations: one training-mode pass with momentum 1 makes the
# running statistics those of this batch, so every layer's output is normalised in eval mode.
files_a = sorted(p for p in dir_a.iterdir() if p.suffix == ".png")
batch = torch.stack([fid_score.TF.ToTensor()(fid_score.Image.open(p).convert("RGB")) for p in files_a])
for m in model.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
        m.momentum = 1.0
model.train()
with torch.no_grad():
    model(batch)
model.eval()

# Save in the official file's layout: the Inception3 state_dict (names like Conv2d_1a_3x3.conv.weight).
inception3 = {}
prefixes = {}
for i, block in enumerate(model.blocks):
    for name, mod in block.named_children():
        prefixes[f"blocks.{i}.{name}."] = mod
sd_full = model.state_dict()
names = {
    "blocks.0.0.": "Conv2d_1a_3x3.", "blocks.0.1.": "Conv2d_2a_3x3.", "blocks.0.2.": "Conv2d_2b_3x3.",
    "blocks.1.0.": "Conv2d_3b_1x1.", "blocks.1.1.": "Conv2d_4a_3x3.",
    "blocks.2.0.": "Mixed_5b.", "blocks.2.1.": "Mixed_5c.", "blocks.2.2.": "Mixed_5d.", "blocks.2.3.": "Mixed_6a.",
    "blocks.2.4.": "Mixed_6b.", "blocks.2.5.": "Mixed_6c.", "blocks.2.6.": "Mixed_6d.", "blocks.2.7.": "Mixed_6e.",
    "blocks.3.0.": "Mixed_7a.", "blocks.3.1.": "Mixed_7b.", "blocks.3.2.": "Mixed_7c.",
}
for k, v in sd_full.items():
    for src, dst in names.items():
        if k.startswith(src):
            inception3[dst + k[len(src):]] = v.clone()
for k in ("fc.weight", "fc.bias"):
    inception3[k] = holder["sd"][k]
torch.save(inception3, out / "inception.pth")

feats = {}
for tag, d in (("a", dir_a), ("b", dir_b)):
    files = sorted(str(p) for p in d.iterdir() if p.suffix == ".png")
    act = fid_score.get_activations(files, model, batch_size=10, dims=2048, device="cpu", num_workers=0)
    json.dump(act.astype(np.float32).tolist(), open(out / f"features_{tag}.json", "w"))
    feats[tag] = act
mu1, s1 = feats["a"].mean(axis=0), np.cov(feats["a"], rowvar=False)
mu2, s2 = feats["b"].mean(axis=0), np.cov(feats["b"], rowvar=False)
fid = fid_score.calculate_frechet_distance(mu1, s1, mu2, s2)
json.dump({"fid": float(fid), "torch": torch.__version__, "n_a": len(feats["a"]), "n_b": len(feats["b"])}, open(out / "result.json", "w"))
print(json.dumps({"fid": float(fid)}))
