//! FID and stats against fixtures/fid/fid_golden.json (scripts/reference/fid/gen_golden_fid.py).
#[path = "fid_support/mod.rs"]
mod common;

use common::*;
use gradekit::metrics::fid::{frechet_distance, stats_from_features, Stats};

fn stored_stats(case: &serde_json::Value) -> Option<(Stats, Stats)> {
    let s = case.get("stats")?;
    let d = case["dim"].as_u64().unwrap() as usize;
    let make = |k: &str, n: &str| Stats {
        mu: floats(&s[format!("mu{k}")]),
        sigma: floats(&s[format!("sigma{k}")]),
        dim: d,
        n: s[n].as_u64().unwrap() as usize,
    };
    Some((make("1", "n1"), make("2", "n2")))
}

/// Checks one FID value against scipy (pytorch-fid's path) and the high-accuracy reference.
fn check_value(name: &str, case: &serde_json::Value, value: f64) {
    let scipy = case["fid_scipy"].as_f64().unwrap();
    let reference = case["fid_reference"].as_f64().unwrap();
    if reference == 0.0 {
        // Identical statistics: both sides are rounding noise around zero.
        assert!(value.abs() < 1e-9 && scipy.abs() < 1e-9, "{name}: {value} / scipy {scipy}");
        return;
    }
    assert!(rel(value, scipy) <= 1e-6, "{name}: {value} vs scipy {scipy} (rel {:.2e})", rel(value, scipy));
    assert!(rel(value, reference) <= 1e-9, "{name}: {value} vs reference {reference} (rel {:.2e})", rel(value, reference));
    println!("{name}: {value} rel-to-scipy {:.1e} rel-to-reference {:.1e}", rel(value, scipy), rel(value, reference));
}

#[test]
fn fid_of_stored_stats_matches_scipy_and_reference() {
    let g = golden("fid_golden.json");
    let mut checked = 0;
    for case in g["cases"].as_array().unwrap() {
        let Some((a, b)) = stored_stats(case) else { continue };
        let name = case["name"].as_str().unwrap();
        let out = frechet_distance(&a, &b).unwrap();
        check_value(name, case, out.value);
        assert_eq!(out.offset_retry, case["scipy_offset_retry"].as_bool().unwrap(), "{name}");
        assert!(out.max_imaginary <= 1e-6, "{name}: {}", out.max_imaginary);
        // tr sqrtm(s1 s2) = tr sqrtm(s2 s1).
        let swapped = frechet_distance(&b, &a).unwrap().value;
        assert!((swapped - out.value).abs() <= 1e-12 * out.value.abs().max(1.0), "{name}: {swapped} vs {}", out.value);
        if a.n > 0 {
            // Generic samples: the covariance of n samples has rank exactly min(n - 1, d).
            assert_eq!(out.ranks, [(a.n - 1).min(a.dim), (b.n - 1).min(b.dim)], "{name}");
            let warned = out.warnings.iter().any(|w| w.contains("singular"));
            assert_eq!(warned, a.n.min(b.n) <= a.dim, "{name}: {:?}", out.warnings);
        }
        checked += 1;
    }
    assert_eq!(checked, 6);
}

#[test]
fn stats_match_numpy_mean_and_cov() {
    let g = golden("fid_golden.json");
    let mut checked = 0;
    for case in g["cases"].as_array().unwrap() {
        let (Some((a, b)), Some(specs)) = (stored_stats(case), case["features"].as_object()) else { continue };
        let name = case["name"].as_str().unwrap();
        assert!(case["mean_is_sequential_sum"].as_bool().unwrap(), "{name}: numpy's mean order changed");
        for (want, key) in [(&a, "a"), (&b, "b")] {
            let (f, n, d) = from_spec(&specs[key]);
            let got = stats_from_features(&f, n, d).unwrap();
            assert_eq!((got.n, got.dim), (want.n, want.dim));
            // Same summation order as numpy: bit-identical means.
            assert_eq!(got.mu, want.mu, "{name}/{key}: mean");
            let scale = want.sigma.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            let worst = got.sigma.iter().zip(&want.sigma).fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
            assert!(worst <= 1e-14 * scale, "{name}/{key}: cov differs by {worst:e} (scale {scale})");
            checked += 1;
        }
    }
    assert_eq!(checked, 8);
}

fn fid_from_feature_case(name: &str) {
    let g = golden("fid_golden.json");
    let Some(case) = g["cases"].as_array().unwrap().iter().find(|c| c["name"] == name) else {
        panic!("{name} missing from fid_golden.json");
    };
    let (fa, na, d) = from_spec(&case["features"]["a"]);
    let (fb, nb, _) = from_spec(&case["features"]["b"]);
    let a = stats_from_features(&fa, na, d).unwrap();
    let b = stats_from_features(&fb, nb, d).unwrap();
    let out = frechet_distance(&a, &b).unwrap();
    check_value(name, case, out.value);
    assert!(!out.offset_retry);
    assert_eq!(out.ranks, [(na - 1).min(d), (nb - 1).min(d)]);
}

#[test]
fn fid_d256_rank_deficient_from_features() {
    fid_from_feature_case("rank_deficient_d256_n100_n300");
}

#[test]
fn fid_d2048_1000_vs_2025_from_features() {
    fid_from_feature_case("d2048_n1000_n2025");
}
