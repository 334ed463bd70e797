"""Reference images of the seed's DCGAN generator, built and saved by PyTorch itself.

usage: python dcgan_generator.py OUT_DIR WIDTH
writes OUT_DIR/generator.pth (a state_dict, seeded, BatchNorm statistics set by one training pass)
and OUT_DIR/reference.json with a fixed latent batch and PyTorch's eval-mode output for it.
"""
import json
import pathlib
import sys

import torch
import torch.nn as nn

out, width = pathlib.Path(sys.argv[1]), int(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
w = width
net = nn.Sequential(
    nn.ConvTranspose2d(100, 8 * w, 4, 1, 0, bias=False), nn.BatchNorm2d(8 * w), nn.ReLU(True),
    nn.ConvTranspose2d(8 * w, 4 * w, 4, 2, 1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(True),
    nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(True),
    nn.ConvTranspose2d(2 * w, w, 4, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(True),
    nn.ConvTranspose2d(w, 3, 4, 2, 1, bias=False), nn.Tanh(),
)


class G(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = net

    def forward(self, z):
        return self.net(z)


g = G()
g.train()
with torch.no_grad():
    g(torch.randn(32, 100, 1, 1))  # running statistics
g.eval()
torch.save(g.state_dict(), out / "generator.pth")
z = torch.randn(3, 100, 1, 1)
with torch.no_grad():
    y = g(z)
json.dump({"z": z.flatten().tolist(), "image": y.flatten().tolist()}, open(out / "reference.json", "w"))
