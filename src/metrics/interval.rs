//! Confidence intervals for grades: Wilson score intervals for accuracies (a proportion of n judged
//! images) and percentile-bootstrap intervals for FID (`fid_bootstrap`). A grade near a baseline is
//! only meaningful with its noise: a 0.79 on 1000 digits is not clearly below a 0.80 baseline.

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, Normal};

/// A two-sided confidence interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub lo: f64,
    pub hi: f64,
    /// Confidence level, e.g. 0.95.
    pub level: f64,
    /// "wilson" or "bootstrap".
    pub method: String,
}

impl Interval {
    pub fn contains(&self, v: f64) -> bool {
        self.lo <= v && v <= self.hi
    }
}

/// The two-sided standard-normal quantile for `level` (1.959964 for 0.95).
pub fn z_value(level: f64) -> Result<f64> {
    ensure!(level > 0.0 && level < 1.0, "confidence level {level} must be between 0 and 1");
    let n = Normal::new(0.0, 1.0).expect("the standard normal is valid");
    Ok(n.inverse_cdf(0.5 + level / 2.0))
}

/// Wilson score interval for `successes` out of `n` (Wilson 1927): unlike the normal approximation it
/// stays inside [0, 1] and is sensible at 0 or n successes.
pub fn wilson(successes: u64, n: u64, level: f64) -> Result<Interval> {
    ensure!(n > 0, "an interval needs at least one trial");
    ensure!(successes <= n, "{successes} successes out of {n} trials");
    let z = z_value(level)?;
    let (nf, p) = (n as f64, successes as f64 / n as f64);
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * nf)) / (1.0 + z2 / nf);
    let half = z / (1.0 + z2 / nf) * (p * (1.0 - p) / nf + z2 / (4.0 * nf * nf)).sqrt();
    // At p = 0 (p = 1) the bound is exactly 0 (1); rounding would leave 1e-17.
    let lo = if successes == 0 { 0.0 } else { (centre - half).max(0.0) };
    let hi = if successes == n { 1.0 } else { (centre + half).min(1.0) };
    Ok(Interval { lo, hi, level, method: "wilson".into() })
}

/// The (1-level)/2 and (1+level)/2 empirical quantiles of `samples` (linear interpolation, numpy's
/// default), i.e. a percentile bootstrap interval.
pub fn percentile_interval(samples: &[f64], level: f64) -> Result<Interval> {
    ensure!(!samples.is_empty(), "no bootstrap samples");
    ensure!(level > 0.0 && level < 1.0, "confidence level {level} must be between 0 and 1");
    ensure!(samples.iter().all(|v| v.is_finite()), "a bootstrap sample is not finite");
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        let pos = p * (s.len() - 1) as f64;
        let (i, f) = (pos.floor() as usize, pos - pos.floor());
        if i + 1 < s.len() {
            s[i] + f * (s[i + 1] - s[i])
        } else {
            s[i]
        }
    };
    Ok(Interval { lo: q((1.0 - level) / 2.0), hi: q((1.0 + level) / 2.0), level, method: "bootstrap".into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn z_matches_the_normal_table() {
        assert!((z_value(0.95).unwrap() - 1.959963984540054).abs() < 1e-9);
        assert!((z_value(0.99).unwrap() - 2.5758293035489).abs() < 1e-9);
        assert!(z_value(1.0).is_err());
    }

    #[test]
    fn wilson_matches_published_values() {
        // statsmodels.stats.proportion.proportion_confint(81, 263, method="wilson"):
        // (0.25528852, 0.36620958); (790, 1000): (0.76366940, 0.81411108).
        let i = wilson(81, 263, 0.95).unwrap();
        assert!((i.lo - 0.25528852).abs() < 1e-7 && (i.hi - 0.36620958).abs() < 1e-7, "{i:?}");
        let i = wilson(790, 1000, 0.95).unwrap();
        assert!((i.lo - 0.76366940).abs() < 1e-7 && (i.hi - 0.81411108).abs() < 1e-7, "{i:?}");
        // 0 of 10: lower bound 0, upper 0.2775 (statsmodels: 0.27753279).
        let i = wilson(0, 10, 0.95).unwrap();
        assert_eq!(i.lo, 0.0);
        assert!((i.hi - 0.27753279).abs() < 1e-6, "{i:?}");
        let i = wilson(10, 10, 0.95).unwrap();
        assert_eq!(i.hi, 1.0);
        assert!(wilson(3, 2, 0.95).is_err() && wilson(0, 0, 0.95).is_err());
    }

    #[test]
    fn wilson_narrows_with_more_images() {
        let small = wilson(79, 100, 0.95).unwrap();
        let big = wilson(790, 1000, 0.95).unwrap();
        assert!(big.hi - big.lo < small.hi - small.lo);
        // 0.79 on 1000 images is within noise of 0.80; on 10000 it is not.
        assert!(big.contains(0.80));
        assert!(!wilson(7900, 10000, 0.95).unwrap().contains(0.80));
    }

    #[test]
    fn percentiles_interpolate_like_numpy() {
        let s: Vec<f64> = (0..=100).map(|i| i as f64).collect();
        let i = percentile_interval(&s, 0.95).unwrap();
        assert!((i.lo - 2.5).abs() < 1e-12 && (i.hi - 97.5).abs() < 1e-12, "{i:?}");
        assert!(percentile_interval(&[1.0, f64::NAN], 0.9).is_err());
    }
}
