"""Loads a Rust-written stats .npz the way pytorch-fid does and checks it.

Usage:
  python check_rust_npz.py PATH DIM
      expects the fixture values mu[i] = i / 3 - 1, sigma[i][j] = 1 / (1 + i + j), exactly
  python check_rust_npz.py PATH --features N DIM SEED SHIFT SCALE
      compares with pytorch-fid's np.mean / np.cov of featgen.features(N, DIM, SEED, SHIFT, SCALE)
"""
import sys
import numpy as np

path = sys.argv[1]
with np.load(path) as f:
    assert sorted(f.files) == ["mu", "sigma"], f.files
    m, s = f["mu"][:], f["sigma"][:]
assert m.dtype == np.float64 and s.dtype == np.float64, (m.dtype, s.dtype)
assert s.flags.c_contiguous

if sys.argv[2] == "--features":
    from featgen import features
    n, d, seed = (int(v) for v in sys.argv[3:6])
    shift, scale = (float(v) for v in sys.argv[6:8])
    act = np.empty((n, d))
    act[:] = features(n, d, seed, shift, scale)
    mu, sigma = np.mean(act, axis=0), np.cov(act, rowvar=False)
    assert m.shape == mu.shape and s.shape == sigma.shape, (m.shape, s.shape)
    assert np.array_equal(m, mu), "mean differs from np.mean"
    rel = np.abs(s - sigma).max() / np.abs(sigma).max()
    assert rel < 1e-14, rel
    print(f"ok: {path} mu identical to np.mean, sigma within {rel:.1e} of np.cov (max-relative)")
else:
    from gen_npz_fixtures import expected
    d = int(sys.argv[2])
    mu, sigma = expected(d)
    assert m.shape == (d,) and s.shape == (d, d), (m.shape, s.shape)
    assert np.array_equal(m, mu) and np.array_equal(s, sigma), "values differ"
    print(f"ok: {path} mu {m.shape} sigma {s.shape} float64, values exact")
