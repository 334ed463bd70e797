"""Golden FID values: pytorch-fid's calculate_frechet_distance code path (numpy + scipy), written
from its documented behaviour, plus an independent high-accuracy reference.

Usage: python gen_golden_fid.py [--skip-2048]  ->  ../tests/data/fid_golden.json
"""
import json, os, sys, time, warnings
import numpy as np, scipy, scipy.linalg
import mpmath
from featgen import features, from_spec, spec

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "fid_golden.json")


def pytorch_fid_stats(feats32):
    # get_activations fills np.empty((n, dims)) -- float64 -- with the float32 network outputs.
    act = np.empty(feats32.shape)
    act[:] = feats32
    return np.mean(act, axis=0), np.cov(act, rowvar=False)


def pytorch_fid_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """mirrors pytorch-fid: sqrtm of the product, eps*I retry if not finite, imaginary check."""
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    retry = False
    if not np.isfinite(covmean).all():
        retry = True
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    imag = 0.0
    if np.iscomplexobj(covmean):
        imag = float(np.max(np.abs(covmean.imag)))
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError("Imaginary component {}".format(imag))
        covmean = covmean.real
    value = diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)
    return float(value), retry, imag


def reference_from_features(x1, x2):
    """Exact-covariance FID: eig(s1 s2) are the squared singular values of Xc1 Xc2^T / sqrt((n1-1)(n2-1)),
    so tr sqrtm(s1 s2) is a nuclear norm -- no square root of near-zero eigenvalues involved."""
    a, b = x1.astype(np.float64), x2.astype(np.float64)
    m1, m2 = a.mean(0), b.mean(0)
    a, b = a - m1, b - m2
    n1, n2 = len(a), len(b)
    tr_sqrt = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    diff = m1 - m2
    return float(diff.dot(diff) + (a * a).sum() / (n1 - 1) + (b * b).sum() / (n2 - 1) - 2 * tr_sqrt)


def reference_mp(mu1, s1, mu2, s2, dps=40):
    """tr sqrtm(s1 s2) in 40-digit arithmetic for the given float64 matrices (s1 must be PSD)."""
    mpmath.mp.dps = dps
    S1, S2 = mpmath.matrix(s1.tolist()), mpmath.matrix(s2.tolist())
    lam, U = mpmath.eigsy(S1)
    d = s1.shape[0]
    R = U * mpmath.diag([mpmath.sqrt(max(l, 0)) for l in lam]) * U.T
    ev, _ = mpmath.eigsy(R * S2 * R)
    tr_sqrt = mpmath.fsum(mpmath.sqrt(max(e, 0)) for e in ev)
    diff = mpmath.matrix((mu1 - mu2).tolist())
    val = mpmath.fsum(x * x for x in diff) + mpmath.fsum(S1[i, i] + S2[i, i] for i in range(d)) - 2 * tr_sqrt
    return float(val)


def flat(a):
    return [float(v) for v in np.asarray(a, dtype=np.float64).ravel()]


def feature_case(name, sa, sb, store_stats=True):
    x1, x2 = from_spec(sa), from_spec(sb)
    mu1, s1 = pytorch_fid_stats(x1)
    mu2, s2 = pytorch_fid_stats(x2)
    t = time.time()
    fid, retry, imag = pytorch_fid_distance(mu1, s1, mu2, s2)
    took = time.time() - t
    seq = np.zeros(sa["dim"])
    for row in x1.astype(np.float64):
        seq += row
    case = {
        "name": name, "dim": sa["dim"], "features": {"a": sa, "b": sb},
        "fid_scipy": fid, "scipy_offset_retry": retry, "scipy_max_imag": imag, "scipy_seconds": round(took, 2),
        "fid_reference": reference_from_features(x1, x2), "reference": "nuclear norm of centred cross product",
        # np.mean(axis=0) of a C-ordered array is a row-by-row sum: checked here, relied on in Rust.
        "mean_is_sequential_sum": bool(np.array_equal(seq / len(x1), mu1)),
    }
    if store_stats:
        case["stats"] = {"n1": sa["n"], "n2": sb["n"], "mu1": flat(mu1), "sigma1": flat(s1),
                         "mu2": flat(mu2), "sigma2": flat(s2)}
    print(f"{name}: scipy {fid!r} ({took:.1f}s, retry={retry}, imag={imag:.2e}) reference {case['fid_reference']!r}")
    return case


def explicit_case(name, mu1, s1, mu2, s2, reference):
    fid, retry, imag = pytorch_fid_distance(mu1, s1, mu2, s2)
    case = {"name": name, "dim": len(mu1), "features": None,
            "stats": {"n1": 0, "n2": 0, "mu1": flat(mu1), "sigma1": flat(s1), "mu2": flat(mu2), "sigma2": flat(s2)},
            "fid_scipy": fid, "scipy_offset_retry": retry, "scipy_max_imag": imag,
            "fid_reference": reference, "reference": "40-digit mpmath" if reference else "exact zero"}
    print(f"{name}: scipy {fid!r} (retry={retry}, imag={imag:.2e}) reference {reference!r}")
    return case


def near_singular(d, seed):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    lam = np.logspace(-12, 1, d)
    s = (q * lam) @ q.T
    s = 0.5 * (s + s.T)  # exactly symmetric, like np.cov's output
    return rng.normal(size=d), s


def main():
    warnings.simplefilter("ignore")
    cases = [
        feature_case("full_rank_d8", spec(50, 8, 1), spec(60, 8, 2, 0.1, 1.2)),
        feature_case("full_rank_d64", spec(100, 64, 3), spec(200, 64, 4, 0.05, 0.9)),
        feature_case("rank_deficient_d64_n20_n40", spec(20, 64, 5), spec(40, 64, 6, 0.1, 1.2)),
        feature_case("rank_deficient_d64_n10_n10", spec(10, 64, 7), spec(10, 64, 8, 0.0, 1.5)),
        feature_case("rank_deficient_d256_n100_n300", spec(100, 256, 9), spec(300, 256, 10, 0.1, 1.2), store_stats=False),
    ]
    mu1, s1 = near_singular(32, 11)
    mu2, s2 = near_singular(32, 12)
    cases.append(explicit_case("near_singular_d32", mu1, s1, mu2, s2, reference_mp(mu1, s1, mu2, s2)))
    x = features(100, 16, 13)
    mu, s = pytorch_fid_stats(x)
    cases.append(explicit_case("identical_d16", mu, s, mu, s, 0.0))
    if "--skip-2048" not in sys.argv:
        cases.append(feature_case("d2048_n1000_n2025", spec(1000, 2048, 14), spec(2025, 2048, 15, 0.05, 1.1),
                                  store_stats=False))
    out = {"numpy": np.__version__, "scipy": scipy.__version__, "cases": cases}
    with open(OUT, "w") as f:
        json.dump(out, f)
    print("wrote", os.path.normpath(OUT), os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
