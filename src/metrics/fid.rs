//! FID statistics (mean, covariance) and the Fréchet distance, following pytorch-fid.
//!
//! pytorch-fid computes `mu = np.mean(act, axis=0)` and `sigma = np.cov(act, rowvar=False)` on the
//! activations returned by `get_activations`. That array is created with `np.empty((n, dims))`, i.e.
//! float64, and filled with the network's float32 outputs, so every value is an exactly representable
//! f32 and all arithmetic is float64 (np.cov would upcast float32 input to float64 anyway, but
//! np.mean on a float32 array would not). We therefore take f32 features and do everything in f64.
//!
//! The distance is `|mu1-mu2|^2 + tr(s1) + tr(s2) - 2 tr(sqrtm(s1 s2))`. pytorch-fid takes the
//! trace of scipy's general matrix square root of the (non-symmetric) product. We compute the same
//! trace from two symmetric eigendecompositions s_k = U_k L_k U_k^T: the eigenvalues of s1 s2 are
//! the squared singular values of B = L1^1/2 (U1^T U2) L2^1/2, so tr(sqrtm(s1 s2)) = sum sigma(B).
//! Covariance eigenvalues within solver noise of zero are set to exactly zero. Unlike the square
//! root of near-zero product eigenvalues (which turns 1e-16 noise into 1e-8 errors), this stays
//! accurate for rank-deficient covariances (fewer samples than dimensions) and near-singular ones.

use anyhow::{bail, ensure, Context, Result};
use faer::Mat;

use super::linalg;

/// pytorch-fid's `eps`: added to both covariance diagonals when the first attempt fails.
pub const FID_OFFSET_EPS: f64 = 1e-6;
/// pytorch-fid's `atol` for the imaginary part of sqrtm's diagonal; above it the FID is an error.
pub const IMAGINARY_ATOL: f64 = 1e-3;

/// Gaussian statistics of a feature set, as pytorch-fid stores them (`mu`, `sigma`).
#[derive(Clone, Debug, PartialEq)]
pub struct Stats {
    pub mu: Vec<f64>,
    /// dim*dim, row-major (symmetric, so the order only matters for malformed input).
    pub sigma: Vec<f64>,
    pub dim: usize,
    /// Number of samples behind the statistics; 0 when unknown (e.g. loaded from an .npz file).
    pub n: usize,
}

impl Stats {
    /// Checks shapes and that every value is finite.
    pub fn check(&self) -> Result<()> {
        ensure!(self.dim > 0, "stats have dimension 0");
        ensure!(self.mu.len() == self.dim, "mu has {} values for dimension {}", self.mu.len(), self.dim);
        let dd = self.dim.checked_mul(self.dim).context("dimension too large")?;
        ensure!(self.sigma.len() == dd, "sigma has {} values, expected {}x{}", self.sigma.len(), self.dim, self.dim);
        if let Some(i) = self.mu.iter().position(|v| !v.is_finite()) {
            bail!("mu[{i}] is {} (NaN/Inf)", self.mu[i]);
        }
        if let Some(k) = self.sigma.iter().position(|v| !v.is_finite()) {
            bail!("sigma[{}][{}] is {} (NaN/Inf)", k / self.dim, k % self.dim, self.sigma[k]);
        }
        Ok(())
    }
}

/// Mean and covariance (ddof=1) of `n` feature rows of length `dim`, stored row-major.
///
/// Mean: per-column sums taken row after row, then divided by n, which is how numpy reduces
/// axis 0 of a C-ordered array (so `mu` is normally bit-identical to `np.mean`). Covariance:
/// numpy centres the data, forms X^T X with BLAS and multiplies by 1/(n-1); we do the same with a
/// lower-triangle faer product (mirrored), so results agree with np.cov to rounding (~1e-16),
/// as the BLAS summation order is not reproducible.
pub fn stats_from_features(features: &[f32], n: usize, dim: usize) -> Result<Stats> {
    check_features(features, n, dim, "features")?;
    ensure!(n >= 2, "need at least 2 samples for a covariance (ddof=1), got {n}");

    let mut mu = vec![0.0f64; dim];
    for row in features.chunks_exact(dim) {
        for (m, &v) in mu.iter_mut().zip(row) {
            *m += f64::from(v);
        }
    }
    for m in &mut mu {
        *m /= n as f64;
    }

    let xc = Mat::<f64>::from_fn(n, dim, |i, j| f64::from(features[i * dim + j]) - mu[j]);
    let c = linalg::gram_lower(xc.as_ref());
    // numpy: `c *= np.true_divide(1, fact)`, a multiplication by the reciprocal.
    let scale = 1.0 / (n - 1) as f64;
    let mut sigma = vec![0.0f64; dim * dim];
    for j in 0..dim {
        let col = c.col_as_slice(j);
        for i in j..dim {
            let v = col[i] * scale;
            sigma[i * dim + j] = v;
            sigma[j * dim + i] = v;
        }
    }
    Ok(Stats { mu, sigma, dim, n })
}

/// Shared input check for feature matrices (also used by KID).
pub(crate) fn check_features(features: &[f32], n: usize, dim: usize, what: &str) -> Result<()> {
    ensure!(dim > 0, "{what}: dimension must be positive");
    let len = n.checked_mul(dim).with_context(|| format!("{what}: {n}x{dim} overflows"))?;
    ensure!(features.len() == len, "{what}: expected {n}x{dim}={len} values, got {}", features.len());
    if let Some(k) = features.iter().position(|v| !v.is_finite()) {
        bail!("{what}: row {} column {} is {} (NaN/Inf)", k / dim, k % dim, features[k]);
    }
    Ok(())
}

/// The Fréchet distance and what happened while computing it.
#[derive(Clone, Debug, PartialEq)]
pub struct FidOutcome {
    pub value: f64,
    /// pytorch-fid's fallback was taken: `FID_OFFSET_EPS * I` was added to both covariances inside
    /// the square root because the first attempt failed (here: eigensolver failure or non-finite result).
    pub offset_retry: bool,
    /// Largest imaginary part a square-root eigenvalue would have: sqrt(-l) for the most negative
    /// eigenvalue l of s1 s2 (0.0 if none). Above `IMAGINARY_ATOL` it is an error, as in pytorch-fid.
    pub max_imaginary: f64,
    /// Most negative eigenvalue of s1 s2 (0.0 if none), estimated from covariance eigenvalues below
    /// -d * f64::EPSILON * largest; such directions are left out of the trace.
    pub min_product_eigenvalue: f64,
    /// Numerical ranks of the two covariances (eigenvalues above d * f64::EPSILON * largest);
    /// at most n - 1 for n samples.
    pub ranks: [usize; 2],
    pub warnings: Vec<String>,
}

/// pytorch-fid's `calculate_frechet_distance(mu1, sigma1, mu2, sigma2)`, computed via symmetric
/// eigendecompositions (see the module docs). Errors on mismatched or non-finite input, and with
/// "Imaginary component" where pytorch-fid would raise.
pub fn frechet_distance(a: &Stats, b: &Stats) -> Result<FidOutcome> {
    frechet_distance_with(a, b, trace_sqrt_product)
}

/// Signature of the tr(sqrtm((s1 + eps I)(s2 + eps I))) routine; a parameter so tests can make it fail.
type TraceSqrtFn = fn(&[f64], &[f64], usize, f64) -> Result<TraceSqrt>;

fn frechet_distance_with(a: &Stats, b: &Stats, trace_sqrt: TraceSqrtFn) -> Result<FidOutcome> {
    a.check().context("first stats")?;
    b.check().context("second stats")?;
    ensure!(a.dim == b.dim, "dimension mismatch: {} vs {}", a.dim, b.dim);
    let d = a.dim;

    let mut warnings = Vec::new();
    for (name, s) in [("first", a), ("second", b)] {
        if s.n > 0 && s.n <= d {
            warnings.push(format!(
                "{name} set has {} samples for {d} dimensions: its covariance is singular (rank <= {}), FID is unreliable",
                s.n,
                s.n - 1
            ));
        }
        let asym = asymmetry(&s.sigma, d);
        if asym > 1e-9 {
            warnings.push(format!("{name} sigma is not symmetric (relative asymmetry {asym:.2e}); its symmetric part is used"));
        }
    }

    let diff2: f64 = a.mu.iter().zip(&b.mu).map(|(x, y)| (x - y) * (x - y)).sum();
    let tr1: f64 = (0..d).map(|i| a.sigma[i * d + i]).sum();
    let tr2: f64 = (0..d).map(|i| b.sigma[i * d + i]).sum();

    let (root, offset_retry) = match trace_sqrt(&a.sigma, &b.sigma, d, 0.0) {
        Ok(r) if r.trace.is_finite() => (r, false),
        first => {
            let why = match first {
                Err(e) => format!("{e:#}"),
                Ok(_) => "non-finite trace".to_string(),
            };
            warnings.push(format!("square root failed ({why}); adding {FID_OFFSET_EPS:e} to diagonal of cov estimates"));
            let r =
                trace_sqrt(&a.sigma, &b.sigma, d, FID_OFFSET_EPS).context("square root failed even after adding the diagonal offset")?;
            ensure!(r.trace.is_finite(), "square root is not finite even after adding the diagonal offset");
            (r, true)
        }
    };
    if root.max_imaginary > IMAGINARY_ATOL {
        bail!("Imaginary component {} (s1 s2 has eigenvalue {}; pytorch-fid fails here too)", root.max_imaginary, root.min_eigenvalue);
    }

    // pytorch-fid uses the un-offset traces even after the retry.
    let value = diff2 + tr1 + tr2 - 2.0 * root.trace;
    ensure!(value.is_finite(), "FID is not finite ({value}); the statistics are too large");
    Ok(FidOutcome {
        value,
        offset_retry,
        max_imaginary: root.max_imaginary,
        min_product_eigenvalue: root.min_eigenvalue,
        ranks: root.ranks,
        warnings,
    })
}

/// Largest |s_ij - s_ji| relative to the largest |s_ij|.
fn asymmetry(s: &[f64], d: usize) -> f64 {
    let scale = s.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    if scale == 0.0 {
        return 0.0;
    }
    let mut worst = 0.0f64;
    for i in 0..d {
        for j in 0..i {
            worst = worst.max((s[i * d + j] - s[j * d + i]).abs());
        }
    }
    worst / scale
}

struct TraceSqrt {
    trace: f64,
    max_imaginary: f64,
    min_eigenvalue: f64,
    ranks: [usize; 2],
}

/// tr(sqrtm((s1 + eps I)(s2 + eps I))) as the nuclear norm of L1^1/2 (U1^T U2) L2^1/2.
fn trace_sqrt_product(s1: &[f64], s2: &[f64], d: usize, eps: f64) -> Result<TraceSqrt> {
    let (lam1, u1) = eigen(s1, d, eps).context("eigendecomposition of the first sigma failed")?;
    let (lam2, u2) = eigen(s2, d, eps).context("eigendecomposition of the second sigma failed")?;
    // Eigenvalues within solver noise of zero are exactly zero (the rank-deficient directions);
    // clearly negative ones (not a valid covariance) are kept aside for the imaginary check.
    let (keep1, neg1) = split_spectrum(&lam1, d);
    let (keep2, neg2) = split_spectrum(&lam2, d);
    let (r1, r2) = (keep1.len(), keep2.len());
    let sel1: Vec<usize> = keep1.iter().chain(&neg1).copied().collect();
    let sel2: Vec<usize> = keep2.iter().chain(&neg2).copied().collect();

    let mut out = TraceSqrt { trace: 0.0, max_imaginary: 0.0, min_eigenvalue: 0.0, ranks: [r1, r2] };
    if sel1.is_empty() || sel2.is_empty() {
        return Ok(out); // one covariance is zero, and so is the product
    }
    let a = Mat::<f64>::from_fn(d, sel1.len(), |i, c| u1[(i, sel1[c])]);
    let b = Mat::<f64>::from_fn(d, sel2.len(), |i, c| u2[(i, sel2[c])]);
    let c = linalg::mul_tn(a.as_ref(), b.as_ref());

    // A negative eigenvalue l of one covariance, along eigenvector u, gives s1 s2 an eigenvalue of
    // about l * u^T s_other u, whose square root is imaginary: report it as pytorch-fid would see it.
    let lam1s: Vec<f64> = sel1.iter().map(|&k| lam1[k]).collect();
    let lam2s: Vec<f64> = sel2.iter().map(|&k| lam2[k]).collect();
    let mut note = |prod: f64| {
        if prod < 0.0 {
            out.min_eigenvalue = out.min_eigenvalue.min(prod);
            out.max_imaginary = out.max_imaginary.max((-prod).sqrt());
        }
    };
    for i in r1..sel1.len() {
        note(lam1s[i] * (0..sel2.len()).map(|j| lam2s[j] * c[(i, j)] * c[(i, j)]).sum::<f64>());
    }
    for j in r2..sel2.len() {
        note(lam2s[j] * (0..sel1.len()).map(|i| lam1s[i] * c[(i, j)] * c[(i, j)]).sum::<f64>());
    }
    if r1 == 0 || r2 == 0 {
        return Ok(out);
    }

    // eig(s1 s2) = sigma(L1^1/2 C L2^1/2)^2. Singular values are accurate to eps * |B| in absolute
    // terms, so near-zero ones cost nothing; eigenvalues of a product would leave sqrt(eps) noise.
    let (root1, root2): (Vec<f64>, Vec<f64>) =
        (lam1s[..r1].iter().map(|v| v.sqrt()).collect(), lam2s[..r2].iter().map(|v| v.sqrt()).collect());
    let bm = Mat::<f64>::from_fn(r1, r2, |i, j| root1[i] * c[(i, j)] * root2[j]);
    let sv = linalg::singular_values(bm.as_ref())?;
    // Nonincreasing order: sum the small ones first.
    out.trace = sv.iter().rev().sum();
    Ok(out)
}

/// Eigenvalues (ascending) and eigenvectors of the symmetric part of s + eps I.
fn eigen(s: &[f64], d: usize, eps: f64) -> Result<(Vec<f64>, Mat<f64>)> {
    let m = Mat::<f64>::from_fn(d, d, |i, j| {
        let (x, y) = (s[i * d + j], s[j * d + i]);
        // Symmetric input is used as is (no rounding, no overflow in x + y).
        let v = if x == y { x } else { 0.5 * x + 0.5 * y };
        if i == j {
            v + eps
        } else {
            v
        }
    });
    let (lam, u) = linalg::sym_eigen(m.as_ref())?;
    ensure!(lam.iter().all(|v| v.is_finite()), "non-finite eigenvalues");
    Ok((lam, u))
}

/// Indices of eigenvalues clearly above zero, and of those clearly below.
fn split_spectrum(lam: &[f64], d: usize) -> (Vec<usize>, Vec<usize>) {
    let tol = noise_level(lam, d);
    let pos = (0..lam.len()).filter(|&k| lam[k] > tol).collect();
    let neg = (0..lam.len()).filter(|&k| lam[k] < -tol).collect();
    (pos, neg)
}

/// Backward-stable symmetric eigensolvers are accurate to about d * eps * |largest eigenvalue|.
fn noise_level(eigenvalues: &[f64], d: usize) -> f64 {
    let largest = eigenvalues.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    d as f64 * f64::EPSILON * largest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(mu: Vec<f64>, sigma: Vec<f64>, n: usize) -> Stats {
        let dim = mu.len();
        Stats { mu, sigma, dim, n }
    }

    #[test]
    fn diagonal_case_has_closed_form() {
        // Commuting diagonals: FID = |dmu|^2 + sum (sqrt(a) - sqrt(b))^2.
        let a = stats(vec![0.0, 1.0, 2.0], vec![4.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 9.0], 10);
        let b = stats(vec![1.0, 1.0, 0.0], vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 16.0], 10);
        let out = frechet_distance(&a, &b).unwrap();
        let expect = 1.0 + 4.0 + (2.0f64 - 1.0).powi(2) + 0.0 + (3.0f64 - 4.0).powi(2);
        assert!((out.value - expect).abs() < 1e-12, "{} vs {expect}", out.value);
        assert!(!out.offset_retry);
        assert_eq!(out.ranks, [3, 3]);
        assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    }

    #[test]
    fn retry_adds_offset_inside_the_root_only() {
        fn fail_without_offset(s1: &[f64], s2: &[f64], d: usize, eps: f64) -> Result<TraceSqrt> {
            ensure!(eps > 0.0, "simulated failure");
            trace_sqrt_product(s1, s2, d, eps)
        }
        let a = stats(vec![0.0, 0.0], vec![4.0, 0.0, 0.0, 0.0], 0);
        let b = stats(vec![0.0, 0.0], vec![1.0, 0.0, 0.0, 9.0], 0);
        let out = frechet_distance_with(&a, &b, fail_without_offset).unwrap();
        assert!(out.offset_retry);
        assert!(out.warnings[0].contains("simulated failure") && out.warnings[0].contains("1e-6"), "{:?}", out.warnings);
        // Traces stay un-offset: 4 + 10 - 2 (sqrt((4+e)(1+e)) + sqrt(e (9+e))).
        let e = FID_OFFSET_EPS;
        let expect = 14.0 - 2.0 * (((4.0 + e) * (1.0 + e)).sqrt() + (e * (9.0 + e)).sqrt());
        assert!((out.value - expect).abs() < 1e-12, "{} vs {expect}", out.value);
        // Versus no offset: the zero direction of s1 now contributes sqrt(1e-6 * 9) to the root.
        assert!((frechet_distance(&a, &b).unwrap().value - out.value - 2.0 * (9e-6f64).sqrt()).abs() < 1e-5);

        fn always_fail(_: &[f64], _: &[f64], _: usize, _: f64) -> Result<TraceSqrt> {
            bail!("simulated failure")
        }
        let e = format!("{:#}", frechet_distance_with(&a, &b, always_fail).unwrap_err());
        assert!(e.contains("even after adding the diagonal offset"), "{e}");
    }

    #[test]
    fn huge_values_are_an_error_not_a_panic() {
        let a = stats(vec![0.0, 0.0], vec![1e308, 1e308, 1e308, 1e308], 0);
        let b = stats(vec![0.0, 0.0], vec![1e308, 0.0, 0.0, 1e308], 0);
        assert!(frechet_distance(&a, &b).is_err());
    }

    #[test]
    fn zero_covariance_is_fine() {
        let a = stats(vec![1.0, 2.0], vec![0.0; 4], 5);
        let b = stats(vec![0.0, 0.0], vec![2.0, 0.0, 0.0, 3.0], 5);
        let out = frechet_distance(&a, &b).unwrap();
        assert!((out.value - (5.0 + 5.0)).abs() < 1e-12, "{}", out.value);
        assert_eq!(out.ranks, [0, 2]);
    }

    #[test]
    fn mismatched_and_non_finite_inputs_are_errors() {
        let a = stats(vec![0.0, 0.0], vec![1.0, 0.0, 0.0, 1.0], 3);
        let b = stats(vec![0.0], vec![1.0], 3);
        let e = frechet_distance(&a, &b).unwrap_err().to_string();
        assert!(e.contains("dimension mismatch"), "{e}");

        let mut nan = a.clone();
        nan.sigma[1] = f64::NAN;
        let e = format!("{:#}", frechet_distance(&a, &nan).unwrap_err());
        assert!(e.contains("NaN/Inf") && e.contains("sigma[0][1]"), "{e}");

        let mut inf = a.clone();
        inf.mu[0] = f64::INFINITY;
        assert!(frechet_distance(&inf, &a).is_err());

        let short = Stats { mu: vec![0.0, 0.0], sigma: vec![1.0; 3], dim: 2, n: 3 };
        let e = format!("{:#}", frechet_distance(&short, &a).unwrap_err());
        assert!(e.contains("sigma has 3 values"), "{e}");
    }

    #[test]
    fn strongly_negative_eigenvalue_is_an_imaginary_component_error() {
        // sigma1 = diag(1, -1) is not a covariance; s1 s2 has eigenvalue -1 => imaginary part 1.
        let a = stats(vec![0.0, 0.0], vec![1.0, 0.0, 0.0, -1.0], 0);
        let b = stats(vec![0.0, 0.0], vec![1.0, 0.0, 0.0, 1.0], 0);
        let e = frechet_distance(&a, &b).unwrap_err().to_string();
        assert!(e.starts_with("Imaginary component 1"), "{e}");
        // Same when the negative eigenvalue is in the matrix that is not decomposed first.
        let e = frechet_distance(&b, &a).unwrap_err().to_string();
        assert!(e.starts_with("Imaginary component 1"), "{e}");
    }

    #[test]
    fn tiny_negative_eigenvalue_is_reported_not_fatal() {
        let a = stats(vec![0.0, 0.0], vec![1.0, 0.0, 0.0, -1e-8], 0);
        let b = stats(vec![0.0, 0.0], vec![1.0, 0.0, 0.0, 1.0], 0);
        let out = frechet_distance(&a, &b).unwrap();
        assert!((out.max_imaginary - 1e-4).abs() < 1e-10, "{}", out.max_imaginary);
        assert!((out.min_product_eigenvalue + 1e-8).abs() < 1e-14);
        // tr1 + tr2 - 2 tr sqrt = (1 - 1e-8) + 2 - 2 * 1
        assert!((out.value - (1.0 - 1e-8)).abs() < 1e-12, "{}", out.value);
    }

    #[test]
    fn few_samples_and_asymmetry_warn() {
        let a = stats(vec![0.0, 0.0], vec![1.0, 0.5, 0.4, 1.0], 2);
        let b = stats(vec![0.0, 0.0], vec![1.0, 0.0, 0.0, 1.0], 100);
        let out = frechet_distance(&a, &b).unwrap();
        assert_eq!(out.warnings.len(), 2, "{:?}", out.warnings);
        assert!(out.warnings[0].contains("2 samples for 2 dimensions"));
        assert!(out.warnings[1].contains("not symmetric"));
    }

    #[test]
    fn stats_match_hand_computation() {
        // rows (1,2), (3,6), (5,7): mean (3,5); cov [[4,5],[5,7]]
        let f = [1.0f32, 2.0, 3.0, 6.0, 5.0, 7.0];
        let s = stats_from_features(&f, 3, 2).unwrap();
        assert_eq!(s.mu, vec![3.0, 5.0]);
        assert_eq!(s.sigma, vec![4.0, 5.0, 5.0, 7.0]);
        assert_eq!((s.dim, s.n), (2, 3));
    }

    #[test]
    fn bad_features_are_errors() {
        assert!(stats_from_features(&[1.0, 2.0], 1, 2).unwrap_err().to_string().contains("at least 2"));
        assert!(stats_from_features(&[1.0, 2.0, 3.0], 2, 2).unwrap_err().to_string().contains("expected 2x2=4"));
        let e = stats_from_features(&[1.0, 2.0, f32::NAN, 3.0], 2, 2).unwrap_err().to_string();
        assert!(e.contains("row 1 column 0"), "{e}");
        assert!(stats_from_features(&[], 0, 0).is_err());
    }
}
