//! Kernel Inception Distance (Binkowski et al. 2018), defined as in torch-fidelity and clean-fid:
//! cubic polynomial kernel k(x, y) = (x.y / d + 1)^3, unbiased MMD^2 on random subset pairs,
//! reported as the mean and population standard deviation (np.std, ddof=0) over the subsets.
//!
//! Differences from those tools, on purpose: kernels are evaluated in f64 (they use the float32
//! features as they come), and subsets are drawn with ChaCha8 (seeded) instead of numpy's RNG, so
//! individual subset values differ while the estimator is the same. `kid_with_subsets` takes
//! explicit index subsets so results can be reproduced exactly elsewhere.

use anyhow::{ensure, Result};
use faer::Mat;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::fid::check_features;
use super::linalg;

/// Largest number of kernel values held at once (f64, 256 MiB). Subsets are grouped so that the
/// Gram matrices of a group's distinct samples fit; typical runs (a few thousand samples) form one
/// group, so each kernel value is computed once instead of once per subset.
const MAX_GRAM_ENTRIES: usize = 1 << 25;

#[derive(Clone, Debug, PartialEq)]
pub struct KidConfig {
    pub subsets: usize,
    /// Capped at the smaller set's size (as clean-fid does).
    pub subset_size: usize,
    pub seed: u64,
}

impl Default for KidConfig {
    /// torch-fidelity's defaults: 100 subsets of 1000, seed 2020.
    fn default() -> Self {
        Self { subsets: 100, subset_size: 1000, seed: 2020 }
    }
}

/// Row indices into the first (`x`) and second (`y`) feature set; both of the same length.
#[derive(Clone, Debug, PartialEq)]
pub struct SubsetPair {
    pub x: Vec<usize>,
    pub y: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct KidOutcome {
    pub mean: f64,
    pub std: f64,
    pub subset_size: usize,
    /// Unbiased MMD^2 of each subset pair, in order.
    pub mmd2: Vec<f64>,
    pub warnings: Vec<String>,
}

/// Draws `cfg.subsets` pairs of index subsets without replacement (x first, then y, per subset).
pub fn draw_subsets(nx: usize, ny: usize, cfg: &KidConfig) -> Result<Vec<SubsetPair>> {
    ensure!(cfg.subsets >= 1, "KID needs at least one subset");
    let m = cfg.subset_size.min(nx).min(ny);
    ensure!(m >= 2, "KID needs subsets of at least 2 samples (sets have {nx} and {ny}, subset size {})", cfg.subset_size);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    Ok((0..cfg.subsets)
        .map(|_| {
            let x = rand::seq::index::sample(&mut rng, nx, m).into_vec();
            let y = rand::seq::index::sample(&mut rng, ny, m).into_vec();
            SubsetPair { x, y }
        })
        .collect())
}

/// KID between `nx` rows of `x` and `ny` rows of `y` (row-major, `dim` columns each).
pub fn kid(x: &[f32], nx: usize, y: &[f32], ny: usize, dim: usize, cfg: &KidConfig) -> Result<KidOutcome> {
    check_features(x, nx, dim, "first feature set")?;
    check_features(y, ny, dim, "second feature set")?;
    let subsets = draw_subsets(nx, ny, cfg)?;
    let mut out = kid_with_subsets(x, nx, y, ny, dim, &subsets)?;
    if out.subset_size < cfg.subset_size {
        out.warnings.push(format!("subset size capped from {} to {} (sets have {nx} and {ny} samples)", cfg.subset_size, out.subset_size));
    }
    Ok(out)
}

/// KID over explicit subset pairs: each pair must hold m >= 2 distinct, in-range indices per side,
/// with the same m for every pair.
pub fn kid_with_subsets(x: &[f32], nx: usize, y: &[f32], ny: usize, dim: usize, subsets: &[SubsetPair]) -> Result<KidOutcome> {
    check_features(x, nx, dim, "first feature set")?;
    check_features(y, ny, dim, "second feature set")?;
    ensure!(!subsets.is_empty(), "KID needs at least one subset");
    let m = subsets[0].x.len();
    ensure!(m >= 2, "KID subsets need at least 2 samples, got {m}");
    for (k, s) in subsets.iter().enumerate() {
        ensure!(s.x.len() == m && s.y.len() == m, "subset {k} has sizes {}/{}, expected {m}/{m}", s.x.len(), s.y.len());
        check_indices(&s.x, nx, k, "x")?;
        check_indices(&s.y, ny, k, "y")?;
    }

    let mut mmd2 = Vec::with_capacity(subsets.len());
    for group in plan_groups(subsets, nx, ny, MAX_GRAM_ENTRIES) {
        mmd2.extend(group_mmd2(x, y, dim, &subsets[group]));
    }
    let count = mmd2.len() as f64;
    let mean = mmd2.iter().sum::<f64>() / count;
    let std = (mmd2.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / count).sqrt();
    Ok(KidOutcome { mean, std, subset_size: m, mmd2, warnings: Vec::new() })
}

fn check_indices(idx: &[usize], n: usize, k: usize, side: &str) -> Result<()> {
    let mut seen = vec![false; n];
    for &i in idx {
        ensure!(i < n, "subset {k}: {side} index {i} out of range (n = {n})");
        ensure!(!seen[i], "subset {k}: {side} index {i} repeats (subsets are drawn without replacement)");
        seen[i] = true;
    }
    Ok(())
}

/// Splits the subsets into consecutive groups whose distinct samples' Gram matrices fit the budget.
fn plan_groups(subsets: &[SubsetPair], nx: usize, ny: usize, budget: usize) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let (mut in_x, mut in_y) = (vec![false; nx], vec![false; ny]);
    let (mut ux, mut uy, mut start) = (0usize, 0usize, 0usize);
    for (k, s) in subsets.iter().enumerate() {
        let new_x = s.x.iter().filter(|&&i| !in_x[i]).count();
        let new_y = s.y.iter().filter(|&&i| !in_y[i]).count();
        let (tx, ty) = (ux + new_x, uy + new_y);
        if k > start && tx * tx + ty * ty + tx * ty > budget {
            groups.push(start..k);
            start = k;
            in_x.fill(false);
            in_y.fill(false);
            (ux, uy) = (0, 0);
        }
        for &i in &s.x {
            ux += usize::from(!in_x[i]);
            in_x[i] = true;
        }
        for &i in &s.y {
            uy += usize::from(!in_y[i]);
            in_y[i] = true;
        }
    }
    groups.push(start..subsets.len());
    groups
}

/// Distinct indices (sorted) and, for each original index, its position among them.
fn distinct(lists: impl Iterator<Item = usize>, n: usize) -> (Vec<usize>, Vec<usize>) {
    let mut pos = vec![usize::MAX; n];
    for i in lists {
        pos[i] = 0;
    }
    let rows: Vec<usize> = (0..n).filter(|&i| pos[i] == 0).collect();
    for (p, &i) in rows.iter().enumerate() {
        pos[i] = p;
    }
    (rows, pos)
}

/// Cubic kernel matrix k(a_i, b_j) for the listed rows.
fn kernel(a: &Mat<f64>, b: &Mat<f64>, dim: usize) -> Mat<f64> {
    let mut k = linalg::mul_nt(a.as_ref(), b.as_ref());
    let d = dim as f64;
    for j in 0..k.ncols() {
        for v in k.col_as_slice_mut(j) {
            let t = *v / d + 1.0;
            *v = t * t * t;
        }
    }
    k
}

fn group_mmd2(x: &[f32], y: &[f32], dim: usize, subsets: &[SubsetPair]) -> Vec<f64> {
    let (rows_x, pos_x) = distinct(subsets.iter().flat_map(|s| s.x.iter().copied()), x.len() / dim);
    let (rows_y, pos_y) = distinct(subsets.iter().flat_map(|s| s.y.iter().copied()), y.len() / dim);
    let gather = |f: &[f32], rows: &[usize]| Mat::<f64>::from_fn(rows.len(), dim, |r, c| f64::from(f[rows[r] * dim + c]));
    let (fx, fy) = (gather(x, &rows_x), gather(y, &rows_y));
    let (kxx, kyy, kxy) = (kernel(&fx, &fx, dim), kernel(&fy, &fy, dim), kernel(&fx, &fy, dim));

    subsets
        .par_iter()
        .map(|s| {
            let px: Vec<usize> = s.x.iter().map(|&i| pos_x[i]).collect();
            let py: Vec<usize> = s.y.iter().map(|&i| pos_y[i]).collect();
            let m = px.len() as f64;
            // Sums over i != j (unbiased) for the within-set terms, over all pairs for the cross term.
            let within = |k: &Mat<f64>, p: &[usize]| {
                let mut sum = 0.0;
                for &j in p {
                    let col = k.col_as_slice(j);
                    sum += p.iter().map(|&i| col[i]).sum::<f64>() - col[j];
                }
                sum
            };
            let mut cross = 0.0;
            for &j in &py {
                let col = kxy.col_as_slice(j);
                cross += px.iter().map(|&i| col[i]).sum::<f64>();
            }
            (within(&kxx, &px) + within(&kyy, &py)) / (m * (m - 1.0)) - 2.0 * cross / (m * m)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(n: usize, dim: usize, shift: f32) -> Vec<f32> {
        (0..n * dim).map(|k| ((k * 7919 % 101) as f32) / 50.0 + shift).collect()
    }

    #[test]
    fn hand_computed_mmd() {
        // dim 1, m = 2: x = {0, 1}, y = {1, 2}; k(a, b) = (ab + 1)^3.
        let x = [0.0f32, 1.0];
        let y = [1.0f32, 2.0];
        let s = [SubsetPair { x: vec![0, 1], y: vec![0, 1] }];
        let out = kid_with_subsets(&x, 2, &y, 2, 1, &s).unwrap();
        let kxx = 2.0 * 1.0; // k(0,1) twice
        let kyy = 2.0 * 27.0; // k(1,2) twice
        let kxy = 1.0 + 1.0 + 8.0 + 27.0; // k(0,1) k(0,2) k(1,1) k(1,2)
        let expect = (kxx + kyy) / 2.0 - 2.0 * kxy / 4.0;
        assert!((out.mean - expect).abs() < 1e-12, "{} vs {expect}", out.mean);
        assert_eq!(out.std, 0.0);
    }

    #[test]
    fn seeded_draws_are_reproducible_and_valid() {
        let cfg = KidConfig { subsets: 5, subset_size: 10, seed: 7 };
        let a = draw_subsets(30, 12, &cfg).unwrap();
        assert_eq!(a, draw_subsets(30, 12, &cfg).unwrap());
        assert_ne!(a, draw_subsets(30, 12, &KidConfig { seed: 8, ..cfg.clone() }).unwrap());
        for s in &a {
            assert_eq!((s.x.len(), s.y.len()), (10, 10));
            assert!(s.x.iter().all(|&i| i < 30) && s.y.iter().all(|&i| i < 12));
        }
    }

    #[test]
    fn subset_size_is_capped_with_warning() {
        let (x, y) = (features(20, 3, 0.0), features(8, 3, 0.5));
        let out = kid(&x, 20, &y, 8, 3, &KidConfig { subsets: 4, subset_size: 1000, seed: 1 }).unwrap();
        assert_eq!(out.subset_size, 8);
        assert_eq!(out.mmd2.len(), 4);
        assert!(out.warnings[0].contains("capped from 1000 to 8"), "{:?}", out.warnings);
    }

    #[test]
    fn grouping_does_not_change_results() {
        let (x, y) = (features(40, 4, 0.0), features(50, 4, 0.3));
        let subsets = draw_subsets(40, 50, &KidConfig { subsets: 6, subset_size: 15, seed: 3 }).unwrap();
        let whole = kid_with_subsets(&x, 40, &y, 50, 4, &subsets).unwrap();
        assert_eq!(plan_groups(&subsets, 40, 50, MAX_GRAM_ENTRIES), vec![0..6]);
        // One subset needs 3 * 15^2 = 675 entries: that budget gives one group per subset.
        let groups = plan_groups(&subsets, 40, 50, 675);
        assert_eq!(groups.len(), 6, "{groups:?}");
        let split: Vec<f64> = groups.into_iter().flat_map(|g| group_mmd2(&x, &y, 4, &subsets[g])).collect();
        assert_eq!(split.len(), 6);
        for (a, b) in whole.mmd2.iter().zip(&split) {
            assert!((a - b).abs() <= 1e-12 * a.abs().max(1.0), "{a} vs {b}");
        }
    }

    #[test]
    fn bad_subsets_and_features_are_errors() {
        let (x, y) = (features(5, 2, 0.0), features(5, 2, 0.0));
        let dup = [SubsetPair { x: vec![0, 0], y: vec![1, 2] }];
        assert!(kid_with_subsets(&x, 5, &y, 5, 2, &dup).unwrap_err().to_string().contains("repeats"));
        let oob = [SubsetPair { x: vec![0, 5], y: vec![1, 2] }];
        assert!(kid_with_subsets(&x, 5, &y, 5, 2, &oob).unwrap_err().to_string().contains("out of range"));
        let uneven = [SubsetPair { x: vec![0, 1, 2], y: vec![1, 2] }];
        assert!(kid_with_subsets(&x, 5, &y, 5, 2, &uneven).is_err());
        assert!(kid_with_subsets(&x, 5, &y, 5, 2, &[]).is_err());
        let mut bad = x.clone();
        bad[3] = f32::INFINITY;
        assert!(kid(&bad, 5, &y, 5, 2, &KidConfig::default()).unwrap_err().to_string().contains("NaN/Inf"));
        assert!(kid(&x, 5, &y[..2], 1, 2, &KidConfig::default()).unwrap_err().to_string().contains("at least 2"));
    }
}
