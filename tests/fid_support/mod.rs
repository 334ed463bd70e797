//! Shared test helpers: the feature generator of scripts/reference/fid/featgen.py and golden-file access.
#![allow(dead_code)]

use std::path::PathBuf;

pub fn data_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/fid").join(name)
}

pub fn golden(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(data_path(name)).expect("golden file (run scripts/reference/fid/gen_golden_*.py)");
    serde_json::from_str(&text).expect("valid JSON")
}

pub fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number")).collect()
}

fn uniform(seed: u64, k: u64) -> f64 {
    let mut z = seed.wrapping_add(k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 * 2f64.powi(-53)
}

/// Same values, bit for bit, as featgen.features (same float64 operations in the same order).
pub fn features(n: usize, d: usize, seed: u64, shift: f64, scale: f64) -> Vec<f32> {
    let s: Vec<f64> = (0..d).map(|j| scale * (1.0 + 0.25 * (j % 5) as f64)).collect();
    let w = d + 3;
    let mut out = Vec::with_capacity(n * d);
    for i in 0..n {
        let u = |c: usize| uniform(seed, (i * w + c + 1) as u64);
        for (j, sj) in s.iter().enumerate() {
            let t = u(j) + 0.5 * u(j + 1);
            let t = t + 0.25 * u(j + 2);
            let t = t + 0.125 * u(j + 3);
            out.push((t * sj + shift) as f32);
        }
    }
    out
}

/// Features from a golden-file spec {"n", "dim", "seed", "shift", "scale"}; returns (features, n, dim).
pub fn from_spec(spec: &serde_json::Value) -> (Vec<f32>, usize, usize) {
    let n = spec["n"].as_u64().unwrap() as usize;
    let d = spec["dim"].as_u64().unwrap() as usize;
    let f = features(n, d, spec["seed"].as_u64().unwrap(), spec["shift"].as_f64().unwrap(), spec["scale"].as_f64().unwrap());
    (f, n, d)
}

pub fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}
