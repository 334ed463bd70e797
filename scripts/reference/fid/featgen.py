"""Deterministic float32 feature matrices that the Rust tests regenerate bit-for-bit.

u_k = splitmix64(seed + k * 0x9E3779B97F4A7C15), k = 1, 2, ...; uniform = (u >> 11) * 2^-53.
Row i uses the uniforms U[i, 0..d+3]; column j is a moving average of 4 neighbours (correlated
columns), scaled per column and shifted:
  x[i, j] = f32(((((U[i,j] + 0.5 U[i,j+1]) + 0.25 U[i,j+2]) + 0.125 U[i,j+3]) * s_j) + shift)
  s_j = scale * (1 + 0.25 * (j % 5))
Each step is one correctly rounded float64 operation, so numpy and Rust agree exactly.
"""
import numpy as np

GAMMA = np.uint64(0x9E3779B97F4A7C15)


def uniforms(seed, count):
    k = np.arange(1, count + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + k * GAMMA
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def features(n, d, seed, shift=0.0, scale=1.0):
    u = uniforms(seed, n * (d + 3)).reshape(n, d + 3)
    s = scale * (1.0 + 0.25 * (np.arange(d) % 5))
    t = u[:, 0:d] + 0.5 * u[:, 1:d + 1]
    t = t + 0.25 * u[:, 2:d + 2]
    t = t + 0.125 * u[:, 3:d + 3]
    t = t * s
    t = t + shift
    return t.astype(np.float32)


def spec(n, d, seed, shift=0.0, scale=1.0):
    return {"n": n, "dim": d, "seed": seed, "shift": shift, "scale": scale}


def from_spec(sp):
    return features(sp["n"], sp["dim"], sp["seed"], sp["shift"], sp["scale"])
