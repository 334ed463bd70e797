//! KID against fixtures/fid/kid_golden.json (scripts/reference/fid/gen_golden_kid.py), using its explicit subsets.
#[path = "fid_support/mod.rs"]
mod common;

use common::*;
use gradekit::metrics::kid::{kid_with_subsets, SubsetPair};

fn indices(v: &serde_json::Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as usize).collect()
}

#[test]
fn kid_matches_numpy_on_explicit_subsets() {
    let g = golden("kid_golden.json");
    let cases = g["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let (x, nx, d) = from_spec(&case["features"]["a"]);
        let (y, ny, _) = from_spec(&case["features"]["b"]);
        let subsets: Vec<SubsetPair> =
            case["subsets"].as_array().unwrap().iter().map(|s| SubsetPair { x: indices(&s["x"]), y: indices(&s["y"]) }).collect();
        let out = kid_with_subsets(&x, nx, &y, ny, d, &subsets).unwrap();
        let want = floats(&case["mmd2"]);
        assert_eq!(out.mmd2.len(), want.len());
        // Kernel sums of ~m^2 terms of size ~100 cancel down to O(1), and BLAS orders differ: 1e-9 relative.
        for (k, (got, exp)) in out.mmd2.iter().zip(&want).enumerate() {
            assert!((got - exp).abs() <= 1e-9 * exp.abs().max(1e-3), "{name}[{k}]: {got} vs {exp}");
        }
        let (mean, std) = (case["mean"].as_f64().unwrap(), case["std"].as_f64().unwrap());
        assert!(rel(out.mean, mean) <= 1e-9, "{name}: mean {} vs {mean}", out.mean);
        assert!(rel(out.std, std) <= 1e-8, "{name}: std {} vs {std}", out.std);
    }
}
