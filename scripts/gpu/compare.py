#!/usr/bin/env python3
"""Compares grading runs for scripts/gpu/grade-session.sh (Python standard library only: the device
machine's Python may lack Pillow).

  compare.py brief RUN_DIR        one line: status, metrics, generation time and speed, backend
  compare.py pair RUN_A RUN_B     one line: the metrics of both, and for
      images/ (grade ddpm, grade gan): how many images are identical, the largest and mean per-pixel
              difference in 8-bit levels, the share of pixels more than 2 levels apart;
      pred.csv (grade dann): how many predictions differ.
  A run may be a folder whose images/ were packed into images.tar (the CPU references).

Parity tolerances the session checks against (README, GPU section): noise prediction of one call within
1e-4 (bench); identical DANN predictions; generated faces within 1 level and FID/KID within 1e-3
relative; DDIM-10 digits within a few levels (float differences of the UNet compound over 10 steps)
and the same judge accuracy within 0.005.
"""
import io
import json
import os
import struct
import sys
import tarfile
import zlib


def png_pixels(data):
    """8-bit RGB/RGBA/grey PNG (non-interlaced) -> (width, height, channels, bytes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, w = 8, [], None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0, "only 8-bit non-interlaced PNGs"
            ch = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + n
    raw = zlib.decompress(b"".join(idat))
    stride = w * ch
    out = bytearray(h * stride)
    prev = bytearray(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - ch] if i >= ch else 0
            b = prev[i]
            c = prev[i - ch] if i >= ch else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out[y * stride:(y + 1) * stride] = line
        prev = line
    return w, h, ch, bytes(out)


def images(run):
    d = os.path.join(run, "images")
    if os.path.isdir(d):
        return {n: open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d)) if n.endswith(".png")}
    t = os.path.join(run, "images.tar")
    if os.path.isfile(t):
        with tarfile.open(t) as tf:
            return {os.path.basename(m.name): tf.extractfile(m).read() for m in tf.getmembers() if m.name.endswith(".png")}
    return {}


def report(run):
    p = os.path.join(run, "report.json")
    return json.load(open(p)) if os.path.isfile(p) else None


def metrics(r):
    return {m["name"]: m.get("value") for m in r.get("metrics", [])} if r else {}


def fmt(v):
    return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def brief(run):
    r = report(run)
    if not r:
        return "no report.json"
    t = r.get("timings", {})
    e = r.get("engine") or {}
    d = r.get("details") or {}
    parts = [f"status={r.get('status')}", " ".join(f"{k}={fmt(v)}" for k, v in metrics(r).items())]
    if "generate" in t:
        parts.append(f"generate={t['generate']:.1f}s")
    if "evaluations_per_second" in t:
        parts.append(f"evals/s={t['evaluations_per_second']:.0f}")
    if "images_per_second" in t:
        parts.append(f"images/s={t['images_per_second']:.1f}")
    if "total" in t:
        parts.append(f"total={t['total']:.1f}s")
    if isinstance(d, dict) and "steps" in d:
        parts.append(f"sampler={d.get('sampler')} steps={d.get('steps')}")
    c = r.get("counts", {})
    if "images" in c:
        parts.append(f"images={c['images']}/{c.get('images_expected', '?')}")
    parts.append(f"engine={e.get('backend')} {e.get('version')} ({e.get('device')})")
    return " ".join(p for p in parts if p)


def pair(a, b):
    ra, rb = report(a), report(b)
    if not ra or not rb:
        return f"missing report ({'a' if not ra else 'b'}: {a if not ra else b})"
    ma, mb = metrics(ra), metrics(rb)
    out = []
    for k in sorted(set(ma) | set(mb)):
        va, vb = ma.get(k), mb.get(k)
        rel = ""
        if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and vb:
            rel = f" (rel {abs(va - vb) / abs(vb):.1e})"
        out.append(f"{k} {fmt(va)} vs {fmt(vb)}{rel}")
    da, db = ra.get("details") or {}, rb.get("details") or {}
    if isinstance(da, dict) and isinstance(db, dict) and (da.get("sampler"), da.get("steps")) != (db.get("sampler"), db.get("steps")):
        out.append(f"different sampling ({da.get('sampler')} {da.get('steps')} steps vs {db.get('sampler')} {db.get('steps')}): images not compared")
        return "; ".join(out)
    ia, ib = images(a), images(b)
    common = sorted(set(ia) & set(ib))
    if common:
        same = sum(ia[n] == ib[n] for n in common)
        worst, total, far, count = 0, 0, 0, 0
        for n in common:
            if ia[n] == ib[n]:
                w, h, ch, _ = png_pixels(ia[n])
                count += w * h * ch
                continue
            pa, pb = png_pixels(ia[n])[3], png_pixels(ib[n])[3]
            for x, y in zip(pa, pb):
                dd = abs(x - y)
                total += dd
                far += dd > 2
                worst = max(worst, dd)
            count += len(pa)
        out.append(f"images {len(common)} compared ({len(ia)} vs {len(ib)}): {same} identical, max diff {worst} levels, "
                   f"mean {total / max(count, 1):.4f}, {100 * far / max(count, 1):.3f}% of values > 2 levels apart")
    pa_, pb_ = os.path.join(a, "pred.csv"), os.path.join(b, "pred.csv")
    if os.path.isfile(pa_) and os.path.isfile(pb_):
        la = dict(l.strip().split(",", 1) for l in open(pa_).readlines()[1:] if "," in l)
        lb = dict(l.strip().split(",", 1) for l in open(pb_).readlines()[1:] if "," in l)
        diff = sum(la.get(k) != v for k, v in lb.items())
        out.append(f"pred.csv: {diff} of {len(lb)} predictions differ")
    return "; ".join(out)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "brief":
        print(brief(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "pair":
        print(pair(sys.argv[2], sys.argv[3]))
    else:
        sys.exit(__doc__)
