"""numpy-written .npz fixtures for the Rust reader (tests/data/npz/), in pytorch-fid's layout.

Values: mu[i] = i / 3 - 1, sigma[i][j] = 1 / (1 + i + j) (float64; the Rust test recomputes them).
"""
import os
import numpy as np

DIR = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "npz")


def expected(d):
    i = np.arange(d, dtype=np.float64)
    return i / 3 - 1, 1 / (1 + i[:, None] + i[None, :])


def main():
    os.makedirs(DIR, exist_ok=True)
    mu, sigma = expected(5)
    p = lambda name: os.path.join(DIR, name)
    np.savez_compressed(p("savez_compressed.npz"), mu=mu, sigma=sigma)  # pytorch-fid --save-stats
    np.savez(p("savez.npz"), mu=mu, sigma=sigma)
    np.savez(p("float32.npz"), mu=mu.astype(np.float32), sigma=sigma.astype(np.float32))
    np.savez(p("big_endian.npz"), mu=mu.astype(">f8"), sigma=sigma.astype(">f8"))
    ns = sigma + np.triu(np.ones((5, 5)), 1)  # not symmetric, so Fortran order is observable
    np.savez(p("fortran.npz"), mu=mu, sigma=np.asfortranarray(ns))
    np.savez(p("int64.npz"), mu=np.arange(5), sigma=sigma)
    np.savez(p("shape_mismatch.npz"), mu=mu, sigma=sigma[:4, :4])
    np.savez(p("missing_sigma.npz"), mu=mu)
    np.savez(p("nan.npz"), mu=np.where(np.arange(5) == 2, np.nan, mu), sigma=sigma)
    with open(p("not_a_zip.npz"), "wb") as f:
        f.write(b"\x93NUMPY not a zip")
    for name in sorted(os.listdir(DIR)):
        print(name, os.path.getsize(p(name)))


if __name__ == "__main__":
    main()
