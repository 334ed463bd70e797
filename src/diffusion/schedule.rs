//! Noise schedule: betas, alphas = 1 - beta, alpha_bars = cumprod(alphas).
//!
//! Indices are 0-based timesteps as in dome272/Diffusion-Models-pytorch:
//! `alpha_bars[t]` is the product of `alphas[0..=t]`, and the forward process is
//! `x_t = sqrt(alpha_bars[t]) * x0 + sqrt(1 - alpha_bars[t]) * eps`.

use anyhow::{bail, ensure, Result};

/// A validated noise schedule of length `T` (all values f64).
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    betas: Vec<f64>,
    alphas: Vec<f64>,
    alpha_bars: Vec<f64>,
}

impl Schedule {
    /// Build a schedule by name. Only `"linear"` exists: `T` betas evenly spaced from
    /// `beta_start` to `beta_end` inclusive (like `torch.linspace`).
    pub fn new(kind: &str, beta_start: f64, beta_end: f64, t_total: usize) -> Result<Self> {
        ensure!(t_total >= 2, "schedule needs T >= 2 timesteps, got {t_total}");
        match kind {
            "linear" => {
                check_beta("beta_start", beta_start)?;
                check_beta("beta_end", beta_end)?;
                let step = (beta_end - beta_start) / (t_total - 1) as f64;
                let mut betas: Vec<f64> = (0..t_total).map(|i| beta_start + step * i as f64).collect();
                // Pin the endpoint so rounding in `step * (T-1)` cannot move it.
                betas[t_total - 1] = beta_end;
                Self::from_betas(betas)
            }
            other => bail!("unknown beta schedule kind {other:?} (supported: \"linear\")"),
        }
    }

    /// Build a schedule from explicit betas; each must be finite with 0 < beta < 1.
    pub fn from_betas(betas: Vec<f64>) -> Result<Self> {
        ensure!(betas.len() >= 2, "schedule needs T >= 2 betas, got {}", betas.len());
        for (i, &b) in betas.iter().enumerate() {
            check_beta(&format!("betas[{i}]"), b)?;
        }
        let alphas: Vec<f64> = betas.iter().map(|b| 1.0 - b).collect();
        let alpha_bars: Vec<f64> = alphas
            .iter()
            .scan(1.0, |acc, a| {
                *acc *= a;
                Some(*acc)
            })
            .collect();
        // 0 < beta < 1 keeps every alpha_bar in (0, 1), but a very long schedule could
        // underflow to 0, which would make x0 = (x - ..)/sqrt(alpha_bar) divide by zero.
        ensure!(alpha_bars.iter().all(|&ab| ab > 0.0), "alpha_bar underflows to 0 (schedule too long or betas too large)");
        Ok(Self { betas, alphas, alpha_bars })
    }

    /// Number of timesteps `T`.
    pub fn len(&self) -> usize {
        self.betas.len()
    }

    /// Always false: a schedule has at least 2 steps (kept for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    pub fn betas(&self) -> &[f64] {
        &self.betas
    }

    pub fn alphas(&self) -> &[f64] {
        &self.alphas
    }

    pub fn alpha_bars(&self) -> &[f64] {
        &self.alpha_bars
    }
}

fn check_beta(name: &str, b: f64) -> Result<()> {
    ensure!(b.is_finite() && b > 0.0 && b < 1.0, "{name} must be finite and in (0, 1), got {b}");
    Ok(())
}
