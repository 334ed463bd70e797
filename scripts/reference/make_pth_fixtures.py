#!/usr/bin/env python3
"""Make the PyTorch checkpoint fixtures for the Rust reader's tests, once, with real PyTorch.

Run with the torch venv:  torchenv/bin/python make_pth_fixtures.py [OUT_DIR]
Writes OUT_DIR (default fixtures/pth/) with the .pth files and expected.json, which lists for every
tensor what PyTorch itself reads back: shape, dtype, values (all of them for small tensors, else the
first 8 and the last), the float64 sum and a position-weighted sum (catches transposed/permuted data).
Values are given as PyTorch's own float32 conversion, which is what the Rust reader returns.
"""
import collections
import io
import json
import os
import pickle
import sys
import zipfile

import numpy as np
import torch
import torch.nn as nn

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "tests", "fixtures")
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(20240611)


def path(name):
    return os.path.join(OUT, name)


class Classifier(nn.Module):
    """The course's LeNet digit classifier (28x28 RGB in, 10 classes): names as in Classifier.pth."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = x.flatten(1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.mean((2, 3)))


# ---- well-formed checkpoints -------------------------------------------------------------------
lenet = Classifier()
torch.save({"state_dict": lenet.state_dict()}, path("lenet_classifier.pth"))

tiny = Tiny()
tiny.train()
for _ in range(2):  # two batches: running stats move away from 0/1 and num_batches_tracked == 2
    tiny(torch.randn(5, 2, 6, 6))
tiny_sd = {k: v.clone() for k, v in tiny.state_dict().items()}  # a snapshot: training below moves tiny
torch.save(tiny_sd, path("tiny_bn.pth"))
torch.save(tiny_sd, path("tiny_bn_proto4.pth"), pickle_protocol=4)

base = torch.arange(24, dtype=torch.float32).reshape(4, 6) * 0.25 - 1.0
views = {
    "f16": torch.randn(3, 5).half(),
    "bf16": torch.randn(2, 3).bfloat16(),
    "f64": torch.tensor([1 / 3, -2.5, 1e-8, 12345.678901], dtype=torch.float64),
    "i64_scalar": torch.tensor(7),
    "i32": torch.tensor([-3, 0, 5], dtype=torch.int32),
    "u8": torch.tensor([0, 200, 255], dtype=torch.uint8),
    "bool": torch.tensor([True, False, True]),
    "base": base,
    "transposed": base.t(),  # (6, 4), stride (1, 6): not contiguous
    "sliced": base[1:, ::2],  # offset 6, stride (6, 2)
    "shared_a": base[0],  # same storage as base, offset 0
    "shared_b": base[2:4],  # same storage, offset 12
    "expanded": torch.randn(3, 1).expand(3, 4),  # stride 0 on the last dim
    "empty": torch.zeros(0, 3),
    "param": nn.Parameter(torch.randn(2, 2)),  # pickled through _rebuild_parameter
}
torch.save(views, path("tiny_views.pth"))
torch.save(views, path("tiny_views_legacy.pth"), _use_new_zipfile_serialization=False)

opt = torch.optim.SGD(tiny.parameters(), lr=1e-2, momentum=0.9)
tiny(torch.randn(3, 2, 6, 6)).sum().backward()
opt.step()
torch.save(
    {
        "epoch": 3,
        "best_acc": 0.875,
        "model": collections.OrderedDict(("module." + k, v) for k, v in tiny_sd.items()),
        "optimizer": opt.state_dict(),
    },
    path("dataparallel_checkpoint.pth"),
)

netG, netD = nn.Linear(3, 2), nn.Linear(2, 1)
torch.save({"netG": netG.state_dict(), "netD": netD.state_dict(), "epoch": 5}, path("gan_two_nets.pth"))


# ---- hand-made containers (same layout torch.save writes) ---------------------------------------
def zput(z, name, data):
    # A fixed timestamp keeps regenerated fixtures byte-identical.
    z.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data)


def write_torch_zip(name, archive, pkl, records, byteorder=b"little"):
    with zipfile.ZipFile(path(name), "w", zipfile.ZIP_STORED) as z:
        zput(z, f"{archive}/data.pkl", pkl)
        zput(z, f"{archive}/byteorder", byteorder)
        for key, data in records.items():
            zput(z, f"{archive}/data/{key}", data)
        zput(z, f"{archive}/version", b"3\n")


ITEM = {"FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "DoubleStorage": 8, "LongStorage": 8,
        "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1, "BoolStorage": 1}


def storage_sizes(pkl):
    """Storage key -> element size, by reading the persistent ids (trusted file: our own)."""
    sizes = {}

    class Rec(pickle.Unpickler):
        def find_class(self, mod, name):
            if mod == "torch._utils":
                return lambda *a: None
            return super().find_class(mod, name)

        def persistent_load(self, pid):
            sizes[pid[2]] = ITEM[pid[1].__name__]
            return None

    Rec(io.BytesIO(pkl)).load()
    return sizes


def rewrite_zip(src, dst, change):
    """Copy a torch zip record by record, letting change(name, data) edit each record."""
    with zipfile.ZipFile(path(src)) as zi, zipfile.ZipFile(path(dst), "w", zipfile.ZIP_STORED) as zo:
        for info in zi.infolist():
            data = change(info.filename, zi.read(info.filename))
            if data is not None:
                zput(zo, info.filename, data)


# Big-endian: what torch.save writes on a big-endian host (byteorder "big", every element swapped).
with zipfile.ZipFile(path("tiny_views.pth")) as z:
    _sizes = storage_sizes(z.read("tiny_views/data.pkl"))


def _to_big(name, data):
    if name.endswith("/byteorder"):
        return b"big"
    key = name.rsplit("/data/", 1)[-1] if "/data/" in name else None
    if key in _sizes and _sizes[key] > 1:
        return np.frombuffer(data, dtype=f"<u{_sizes[key]}").byteswap().tobytes()
    return data


rewrite_zip("tiny_views.pth", "tiny_views_bigendian.pth", _to_big)


class FakeStorage:
    def __init__(self, key, stype, numel):
        self.key, self.stype, self.numel = key, stype, numel


class FakeTensor:
    """Pickles exactly like a tensor, with whatever offset/size/stride we ask for."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2, self.args)


class TorchLikePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            return ("storage", obj.stype, obj.key, "cpu", obj.numel)
        return None


def crafted_pickle(obj):
    buf = io.BytesIO()
    TorchLikePickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


# ---- malformed checkpoints ----------------------------------------------------------------------
open(path("empty.pth"), "wb").close()

with open(path("tiny_bn.pth"), "rb") as f:
    whole = f.read()
with open(path("truncated.pth"), "wb") as f:
    f.write(whole[: len(whole) // 2])


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


write_torch_zip("evil_os_system.pth", "evil_os_system", pickle.dumps({"w": RunsCode()}, protocol=2), {})

class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 1)


torch.save(Small(), path("whole_model.pth"))  # a Module object: refers to __main__.Small

# A storage record shorter than its persistent id claims: 4 floats declared, 2 stored.
st = FakeStorage("0", torch.FloatStorage, 4)
write_torch_zip("short_storage.pth", "short_storage",
                crafted_pickle({"w": FakeTensor(st, 0, (4,), (1,))}), {"0": np.arange(2, dtype="<f4").tobytes()})

# A view reaching past its storage: 10 elements wanted, 4 stored.
st = FakeStorage("0", torch.FloatStorage, 4)
write_torch_zip("view_out_of_range.pth", "view_out_of_range",
                crafted_pickle({"w": FakeTensor(st, 0, (10,), (1,))}), {"0": np.arange(4, dtype="<f4").tobytes()})

# A 2^40-element (4 TiB) tensor claim backed by 16 bytes: must be refused before allocating.
st = FakeStorage("0", torch.FloatStorage, 1 << 40)
write_torch_zip("huge_claim.pth", "huge_claim",
                crafted_pickle({"w": FakeTensor(st, 0, (1 << 40,), (1,))}), {"0": np.arange(4, dtype="<f4").tobytes()})

# A dtype the reader recognises but cannot convert to f32.
torch.save({"c": torch.randn(2, dtype=torch.complex64)}, path("complex.pth"))

with zipfile.ZipFile(path("not_torch.pth"), "w") as z:
    zput(z, "hello.txt", "not a checkpoint")

with open(path("plain_pickle.pth"), "wb") as f:
    pickle.dump({"a": 1}, f, protocol=2)


# ---- expected values, as PyTorch reads the files back -------------------------------------------
def describe(t):
    t = t.detach()
    v = t.to(torch.float32).flatten().to(torch.float64)
    n = v.numel()
    w = (torch.arange(n, dtype=torch.float64) % 7) + 1
    d = {
        "shape": list(t.shape),
        "dtype": str(t.dtype).replace("torch.", ""),
        "numel": n,
        "sum": float(v.sum()),
        "wsum": float((v * w).sum()),
    }
    if n <= 64:
        d["values"] = v.tolist()
    else:
        d["first"] = v[:8].tolist()
        d["last"] = float(v[-1])
    return d


def expect(name, key=None, source_key=None, wrapper_prefix=None):
    # weights_only=False is fine here: these are our own files (and torch's safe loader rejects
    # the FRAME opcode of its own pickle_protocol=4 files).
    obj = torch.load(path(name), weights_only=False)
    sd = obj[source_key] if source_key is not None else obj
    return {
        "file": name,
        "key": key,
        "source_key": source_key,
        "wrapper_prefix": wrapper_prefix,
        "tensors": {k: describe(v) for k, v in sd.items()},
    }


good = [
    expect("lenet_classifier.pth", source_key="state_dict"),
    expect("tiny_bn.pth"),
    expect("tiny_bn_proto4.pth"),
    expect("tiny_views.pth"),
    expect("tiny_views_legacy.pth"),
    expect("tiny_views_bigendian.pth"),
    expect("dataparallel_checkpoint.pth", source_key="model", wrapper_prefix="module."),
    expect("gan_two_nets.pth", key="netG", source_key="netG"),
    expect("gan_two_nets.pth", key="netD", source_key="netD"),
]

# The malformed files: what each must fail with (a phrase of the Rust error, checked by the tests)
# and confirmation that torch.load(weights_only=True) refuses them too.
bad = {
    "empty.pth": "empty file",
    "truncated.pth": "zip archive",
    "evil_os_system.pth": "`posix.system` is not allowed",
    "whole_model.pth": "`__main__.Small` is not allowed",
    "short_storage.pth": "holds",
    "view_out_of_range.pth": "reaches element 9",
    "huge_claim.pth": "limit",
    "not_torch.pth": "no data.pkl",
    "plain_pickle.pth": "magic number",
    "gan_two_nets.pth": "ambiguous",
    "complex.pth": "unsupported storage type torch.ComplexFloatStorage",
}
torch_loads = {"gan_two_nets.pth", "complex.pth"}  # valid for torch; refused or ambiguous for us
for name in bad:
    try:
        torch.load(path(name), weights_only=True)
        ok = True
    except Exception:
        ok = False
    assert ok == (name in torch_loads), name

meta = {
    "torch_version": torch.__version__,
    "lenet_names": list(lenet.state_dict().keys()),
    "good": good,
    "bad": bad,
}
with open(path("expected.json"), "w") as f:
    # Compact (one tensor per line) to keep the committed fixtures small but still diffable.
    text = json.dumps(meta, separators=(",", ":"))
    f.write(text.replace('},"', '},\n"').replace('{"file"', '\n{"file"') + "\n")
total = sum(os.path.getsize(path(n)) for n in os.listdir(OUT))
print(f"wrote {len(os.listdir(OUT))} files, {total} bytes, torch {torch.__version__}")
