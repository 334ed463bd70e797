#!/usr/bin/env python3
"""PyTorch versions of the seed's Diffusion_UNet_Small and DANN, written from SEED.md and the report's
printout (module names as printed), to check gradekit's definitions against PyTorch's own modules
(MultiheadAttention, GroupNorm, LayerNorm, GELU, Upsample(align_corners=True), Embedding, Dropout2d).

usage: python seed_models.py OUT_DIR unet|dann [WIDTH] [BATCHES, default 1,7]
writes OUT_DIR/model.pth (a state_dict after one training-mode pass, affine parameters perturbed so a
swapped parameter shows) and OUT_DIR/reference.json: inputs and PyTorch's eval-mode outputs at batch 1
and 7 (UNet: mixed timesteps, labels 0-9 and the null label 10 = no label embedding).
"""
import json
import math
import pathlib
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


class ResidualBlock(nn.Module):
    def __init__(self, cin, cout, mid=None, residual=False):
        super().__init__()
        mid = mid or cout
        self.residual = residual
        self.conv = nn.Sequential(
            nn.Conv2d(cin, mid, 3, padding=1, bias=False), nn.GroupNorm(1, mid), nn.GELU(),
            nn.Conv2d(mid, cout, 3, padding=1, bias=False), nn.GroupNorm(1, cout))

    def forward(self, x):
        return F.gelu(x + self.conv(x)) if self.residual else self.conv(x)


class DownBlock(nn.Module):
    def __init__(self, cin, cout, emb=256):
        super().__init__()
        self.conv = nn.Sequential(nn.MaxPool2d(2), ResidualBlock(cin, cin, residual=True), ResidualBlock(cin, cout))
        self.time_emb_mlp = nn.Sequential(nn.SiLU(), nn.Linear(emb, cout))

    def forward(self, x, t):
        x = self.conv(x)
        return x + self.time_emb_mlp(t)[:, :, None, None]


class UpBlock(nn.Module):
    def __init__(self, cin, cout, emb=256):
        super().__init__()
        self.up_conv = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True))
        self.conv = nn.Sequential(ResidualBlock(cin, cin, residual=True), ResidualBlock(cin, cout, cin // 2))
        self.time_emb_mlp = nn.Sequential(nn.SiLU(), nn.Linear(emb, cout))

    def forward(self, x, skip, t):
        x = torch.cat([skip, self.up_conv(x)], dim=1)
        x = self.conv(x)
        return x + self.time_emb_mlp(t)[:, :, None, None]


class SelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.attention_module = nn.MultiheadAttention(c, 4, batch_first=True)
        self.layer_norm = nn.LayerNorm([c])
        self.ff = nn.Sequential(nn.LayerNorm([c]), nn.Linear(c, c), nn.GELU(), nn.Linear(c, c))

    def forward(self, x):
        n, c, h, w = x.shape
        x = x.view(-1, c, h * w).swapaxes(1, 2)
        ln = self.layer_norm(x)
        a, _ = self.attention_module(ln, ln, ln)
        a = a + x
        a = self.ff(a) + a
        return a.swapaxes(2, 1).view(-1, c, h, w)


class DiffusionUNetSmall(nn.Module):
    def __init__(self, w=64, num_classes=10, time_dim=256):
        super().__init__()
        self.time_dim = time_dim
        self.init_conv = ResidualBlock(3, w)
        self.down1 = DownBlock(w, 2 * w)
        self.sa_d1 = SelfAttention(2 * w)
        self.down2 = DownBlock(2 * w, 2 * w)
        self.sa_d2 = SelfAttention(2 * w)
        self.mid1 = ResidualBlock(2 * w, 4 * w)
        self.mid2 = ResidualBlock(4 * w, 2 * w)
        self.up1 = UpBlock(4 * w, w)
        self.sa_u1 = SelfAttention(w)
        self.up2 = UpBlock(2 * w, w)
        self.sa_u2 = SelfAttention(w)
        self.out_conv = nn.Conv2d(w, 3, 1)
        self.label_emb = nn.Embedding(num_classes, time_dim)
        self.num_classes = num_classes

    def pos_encoding(self, t):
        c = self.time_dim
        inv_freq = 1.0 / (10000 ** (torch.arange(0, c, 2).float() / c))
        a = torch.sin(t.repeat(1, c // 2) * inv_freq)
        b = torch.cos(t.repeat(1, c // 2) * inv_freq)
        return torch.cat([a, b], dim=-1)

    def forward(self, x, t, y):
        t = self.pos_encoding(t.unsqueeze(-1).float())
        # label == num_classes is "no label" (dome272 passes y=None for the unconditional pass).
        has = (y < self.num_classes).float().unsqueeze(-1)
        t = t + self.label_emb(y.clamp(max=self.num_classes - 1)) * has
        x1 = self.init_conv(x)
        x2 = self.sa_d1(self.down1(x1, t))
        x3 = self.sa_d2(self.down2(x2, t))
        x3 = self.mid2(self.mid1(x3))
        x = self.sa_u1(self.up1(x3, x2, t))
        x = self.sa_u2(self.up2(x, x1, t))
        return self.out_conv(x)


class DANN(nn.Module):
    def __init__(self):
        super().__init__()
        self.feature = nn.Sequential()
        self.feature.add_module("f_conv1", nn.Conv2d(3, 64, 5))
        self.feature.add_module("f_bn1", nn.BatchNorm2d(64))
        self.feature.add_module("f_pool1", nn.MaxPool2d(2))
        self.feature.add_module("f_relu1", nn.ReLU(True))
        self.feature.add_module("f_conv2", nn.Conv2d(64, 50, 5))
        self.feature.add_module("f_bn2", nn.BatchNorm2d(50))
        self.feature.add_module("f_drop1", nn.Dropout2d())
        self.feature.add_module("f_pool2", nn.MaxPool2d(2))
        self.feature.add_module("f_relu2", nn.ReLU(True))
        self.class_classifier = nn.Sequential()
        self.class_classifier.add_module("c_fc1", nn.Linear(800, 100))
        self.class_classifier.add_module("c_bn1", nn.BatchNorm1d(100))
        self.class_classifier.add_module("c_relu1", nn.ReLU(True))
        self.class_classifier.add_module("c_drop1", nn.Dropout())
        self.class_classifier.add_module("c_fc2", nn.Linear(100, 100))
        self.class_classifier.add_module("c_bn2", nn.BatchNorm1d(100))
        self.class_classifier.add_module("c_relu2", nn.ReLU(True))
        self.class_classifier.add_module("c_fc3", nn.Linear(100, 10))
        self.class_classifier.add_module("c_softmax", nn.LogSoftmax(dim=1))
        self.domain_classifier = nn.Sequential()
        self.domain_classifier.add_module("d_fc1", nn.Linear(800, 100))
        self.domain_classifier.add_module("d_bn1", nn.BatchNorm1d(100))
        self.domain_classifier.add_module("d_relu1", nn.ReLU(True))
        self.domain_classifier.add_module("d_fc2", nn.Linear(100, 2))
        self.domain_classifier.add_module("d_softmax", nn.LogSoftmax(dim=1))

    def forward(self, x):
        f = self.feature(x).view(-1, 800)
        self.domain_classifier(f)
        return self.class_classifier(f)


def main():
    out, kind = pathlib.Path(sys.argv[1]), sys.argv[2]
    width = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    batches = [int(b) for b in sys.argv[4].split(",")] if len(sys.argv) > 4 else [1, 7]
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(7)
    net = DiffusionUNetSmall(width) if kind == "unet" else DANN()

    def inputs(n):
        x = torch.rand(n, 3, 28, 28) * 2 - 1
        t = torch.randint(1, 1000, (n,))
        y = torch.randint(0, 11, (n,))
        if n >= 3:
            t[0], t[1], y[2] = 1, 999, 10
        return x, t, y

    net.train()
    with torch.no_grad():
        x, t, y = inputs(16)
        net(x, t, y) if kind == "unet" else net(x)
        for name, p in net.named_parameters():
            if p.dim() == 1:  # norm affines and biases away from their 1/0 defaults
                p.add_(0.1 * torch.randn_like(p))
    net.eval()
    torch.save(net.state_dict(), out / "model.pth")
    ref = {"torch_version": torch.__version__, "kind": kind, "width": width, "batches": {}}
    with torch.no_grad():
        for n in batches:
            x, t, y = inputs(n)
            o = net(x, t, y) if kind == "unet" else net(x)
            ref["batches"][str(n)] = {"x": x.flatten().tolist(), "t": t.tolist(), "label": y.tolist(), "out": o.flatten().tolist(), "out_shape": list(o.shape)}
    json.dump(ref, open(out / "reference.json", "w"))


if __name__ == "__main__":
    main()
