"""Reference logits of the course's LeNet classifier loaded from a .pth by PyTorch itself.

usage: python lenet_logits.py CLASSIFIER.pth  -> prints JSON {"input": [...], "logits": [...]}
The input is a fixed, seeded batch of 4 images in [-1, 1] (already normalised).
"""
import json
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


ckpt = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
model = Classifier()
model.load_state_dict(ckpt["state_dict"])
model.eval()
g = torch.Generator().manual_seed(0)
x = torch.rand(4, 3, 28, 28, generator=g) * 2 - 1
with torch.no_grad():
    y = model(x)
print(json.dumps({"input": x.flatten().tolist(), "logits": y.flatten().tolist()}))
