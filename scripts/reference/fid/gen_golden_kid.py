"""Golden KID values with explicit subsets: numpy float64 version of the estimator used by
torch-fidelity / clean-fid (cubic kernel (x.y/d + 1)^3, unbiased MMD^2, mean and np.std).

Usage: python gen_golden_kid.py  ->  ../tests/data/kid_golden.json
"""
import json, os
import numpy as np
from featgen import from_spec, spec

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "kid_golden.json")


def mmd2_unbiased(x, y):
    d, m = x.shape[1], x.shape[0]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    return ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.sum() / (m * m)


def case(name, sa, sb, subsets, m, seed):
    x = from_spec(sa).astype(np.float64)
    y = from_spec(sb).astype(np.float64)
    rng = np.random.default_rng(seed)
    pairs = [(rng.choice(len(x), m, replace=False), rng.choice(len(y), m, replace=False)) for _ in range(subsets)]
    mmds = np.array([mmd2_unbiased(x[ix], y[iy]) for ix, iy in pairs])
    print(f"{name}: mean {mmds.mean()!r} std {mmds.std()!r}")
    return {"name": name, "features": {"a": sa, "b": sb},
            "subsets": [{"x": [int(i) for i in ix], "y": [int(i) for i in iy]} for ix, iy in pairs],
            "mmd2": [float(v) for v in mmds], "mean": float(mmds.mean()), "std": float(mmds.std())}


def main():
    cases = [
        case("d16_m20", spec(60, 16, 21), spec(50, 16, 22, 0.1, 1.2), 10, 20, 0),
        case("d256_m30_all", spec(30, 256, 23), spec(40, 256, 24, 0.0, 1.05), 3, 30, 1),
        case("same_distribution", spec(80, 32, 25), spec(80, 32, 26), 5, 40, 2),
    ]
    with open(OUT, "w") as f:
        json.dump({"numpy": np.__version__, "cases": cases}, f)
    print("wrote", os.path.normpath(OUT), os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
