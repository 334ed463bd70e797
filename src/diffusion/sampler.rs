//! DDPM (ancestral, in the exact form of dome272/Diffusion-Models-pytorch), DDIM and
//! DPM-Solver++(2M) samplers for a class-conditional noise predictor, with classifier-free guidance.
//! DDIM and DPM-Solver++ step exactly like diffusers' `DDIMScheduler` and
//! `DPMSolverMultistepScheduler` on the same timesteps (tests/sampler_golden.rs checks it).
//!
//! Conventions (see README.md for the reasoning):
//! - timesteps are 0-based; the model is only ever called with t in 1..=T-1, as in training;
//! - images are batch-major NCHW `f32`, in [-1, 1] after sampling;
//! - guidance `w`: `eps = uncond + w * (cond - uncond)`; `w == 1` is conditional only,
//!   `w == 0` unconditional only, anything else runs both in ONE batched model call;
//! - noise for image `i` comes from its own ChaCha8 stream `(seed, first_image + i)`, so the
//!   result does not depend on how a set of images is split into batches.

use anyhow::{bail, ensure, Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use super::schedule::Schedule;

/// A noise predictor `eps_theta(x_t, t, label)`.
pub trait NoiseModel {
    /// `x` is `shape = [N, C, H, W]` batch-major; `t` and `labels` have length N.
    /// Must return N*C*H*W predicted noise values in the same layout.
    fn predict(&mut self, x: &[f32], shape: [usize; 4], t: &[i64], labels: &[i64]) -> Result<Vec<f32>>;
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerKind {
    /// Ancestral sampling over every timestep T-1..=1 with variance beta_t (dome272).
    Ddpm,
    /// DDIM over a subset of timesteps; `eta` in [0, 1] (0 = deterministic).
    Ddim { eta: f64 },
    /// DPM-Solver++ (2M): second-order multistep on the data (x0) prediction, first order on the
    /// first and the last step (as diffusers' default `lower_order_final`); deterministic.
    DpmSolver2M,
}

impl SamplerKind {
    /// The name the reports use: `ddpm`, `ddim(eta=0)`, `dpm-solver++(2m)`.
    pub fn label(&self) -> String {
        match self {
            SamplerKind::Ddpm => "ddpm".into(),
            SamplerKind::Ddim { eta } => format!("ddim(eta={eta})"),
            SamplerKind::DpmSolver2M => "dpm-solver++(2m)".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SampleConfig {
    pub kind: SamplerKind,
    /// DDPM: must be T-1. DDIM: number of timesteps visited, 1..=T-1.
    pub steps: usize,
    /// Classifier-free guidance scale `w` (see module docs).
    pub guidance: f64,
    /// Label value the model was trained to read as "no class".
    pub null_label: i64,
    /// Clamp the predicted x0 to [-1, 1] at every step. The model's eps is kept and the state the update
    /// starts from is projected onto the clipped x0 (`alpha_t x0 + sigma_t eps`), so nothing clipping
    /// removed is carried into the next state. For DDIM this is exactly diffusers' default
    /// (`clip_sample=True`, `use_clipped_model_output=False`); DPM-Solver++(2M) then reduces to that DDIM
    /// at first order. The earlier form (eps re-derived from the clipped x0, as diffusers'
    /// `use_clipped_model_output=True` and DPM-Solver's `thresholding`) fed the clipped excess back into
    /// x_t as if it were noise and left a third of a real model's digits in saturated colour noise.
    pub clip_x0: bool,
    pub seed: u64,
    /// Global index of the first image of this batch: image `i` of the batch uses noise
    /// stream `first_image + i`. Set it to the running count when splitting a job into batches.
    pub first_image: u64,
}

/// What the observer is shown after each step. States are raw (not clamped).
#[derive(Debug, Clone, Copy)]
pub struct StepEvent<'a> {
    /// 0-based index of the step just done.
    pub step: usize,
    pub total_steps: usize,
    /// Timestep the model was called with; `x_t` is the state at this timestep.
    pub t: usize,
    /// Timestep of `x_next`: the next visited timestep, or 0 after the last step (clean image).
    pub t_next: usize,
    pub x_t: &'a [f32],
    pub x_next: &'a [f32],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    Stop,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SampleOutcome {
    /// All steps ran; images clamped to [-1, 1].
    Finished(Vec<f32>),
    /// The observer asked to stop before the last step. `x` is the raw state at the
    /// timestep the last event called `t_next`.
    Stopped { steps_done: usize, x: Vec<f32> },
}

impl SampleOutcome {
    /// The finished images, or an error if sampling was stopped early.
    pub fn finished(self) -> Result<Vec<f32>> {
        match self {
            SampleOutcome::Finished(x) => Ok(x),
            SampleOutcome::Stopped { steps_done, .. } => {
                bail!("sampling was stopped after {steps_done} steps")
            }
        }
    }
}

/// The timesteps a sampler visits, in the order it visits them (descending).
///
/// - DDPM: every timestep `T-1, T-2, ..., 1`; `steps` must equal `T-1` (an error rather than
///   silently ignoring a config value that would not mean what it says).
/// - DDIM: `steps` values of `linspace(1, T-1, steps)` rounded half-up, descending; both
///   endpoints are always included (one step uses just `T-1`). `steps <= T-1` keeps the
///   spacing >= 1, so the rounded values are distinct.
/// - DPM-Solver++: diffusers' `DPMSolverMultistepScheduler` default timesteps (see below).
pub fn timesteps(kind: SamplerKind, steps: usize, t_total: usize) -> Result<Vec<usize>> {
    ensure!(t_total >= 2, "schedule needs T >= 2 timesteps, got {t_total}");
    let last = t_total - 1;
    match kind {
        SamplerKind::Ddpm => {
            ensure!(steps == last, "DDPM visits every timestep: steps must be T-1 = {last}, got {steps}");
            Ok((1..=last).rev().collect())
        }
        SamplerKind::DpmSolver2M => {
            ensure!((1..=last).contains(&steps), "{} steps must be in 1..={last} (T-1), got {steps}", kind.label());
            // diffusers' default "linspace" spacing: round(linspace(0, T-1, steps+1)) descending, without
            // the 0; the final step then jumps to sigma = 0. Ending the model calls at t=1 instead would
            // make the step before it a second-order step over a huge log-SNR interval (r = h_prev/h
            // tiny), which amplifies the x0 difference into visible noise at 10 steps.
            let delta = last as f64 / steps as f64;
            Ok((1..=steps).rev().map(|k| if k == steps { last } else { (k as f64 * delta).round_ties_even() as usize }).collect())
        }
        SamplerKind::Ddim { .. } => {
            ensure!((1..=last).contains(&steps), "{} steps must be in 1..={last} (T-1), got {steps}", kind.label());
            if steps == 1 {
                return Ok(vec![last]);
            }
            // Integer round-half-up of k * (T-2) / (steps-1), so no float drift at the ends.
            let span = (last - 1) as u128;
            let den = (steps - 1) as u128;
            Ok((0..steps as u128).rev().map(|k| 1 + ((2 * k * span + den) / (2 * den)) as usize).collect())
        }
    }
}

/// Sample one batch: `labels.len()` images of shape `shape_chw`.
///
/// `observer` runs after every step; returning `Control::Stop` ends sampling early with
/// `SampleOutcome::Stopped` (a stop requested on the last step is just `Finished`).
pub fn sample(
    model: &mut dyn NoiseModel,
    schedule: &Schedule,
    cfg: &SampleConfig,
    labels: &[i64],
    shape_chw: [usize; 3],
    observer: &mut dyn FnMut(StepEvent<'_>) -> Result<Control>,
) -> Result<SampleOutcome> {
    let ts = timesteps(cfg.kind, cfg.steps, schedule.len())?;
    run(model, schedule, cfg, &ts, None, labels, shape_chw, observer)
}

/// Like [`sample`], but on explicit timesteps (descending, each in 1..T) from a given starting
/// state `x_init` (N*C*H*W values): what the golden tests use to step alongside diffusers.
/// `cfg.steps` is ignored. Noise added by DDPM / DDIM(eta > 0) still comes from the seeded streams.
#[allow(clippy::too_many_arguments)]
pub fn sample_from(
    model: &mut dyn NoiseModel,
    schedule: &Schedule,
    cfg: &SampleConfig,
    ts: &[usize],
    x_init: &[f32],
    labels: &[i64],
    shape_chw: [usize; 3],
    observer: &mut dyn FnMut(StepEvent<'_>) -> Result<Control>,
) -> Result<SampleOutcome> {
    ensure!(!ts.is_empty(), "no timesteps given");
    ensure!(
        ts.windows(2).all(|w| w[0] > w[1]) && ts[0] < schedule.len() && *ts.last().unwrap() >= 1,
        "timesteps must be strictly descending and within 1..{}, got {ts:?}",
        schedule.len()
    );
    run(model, schedule, cfg, ts, Some(x_init), labels, shape_chw, observer)
}

/// The sampler state carried between steps: DPM-Solver++(2M) needs the previous data prediction.
struct History {
    x0: Vec<f64>,
    lambda: f64,
}

#[allow(clippy::too_many_arguments)]
fn run(
    model: &mut dyn NoiseModel,
    schedule: &Schedule,
    cfg: &SampleConfig,
    ts: &[usize],
    x_init: Option<&[f32]>,
    labels: &[i64],
    shape_chw: [usize; 3],
    observer: &mut dyn FnMut(StepEvent<'_>) -> Result<Control>,
) -> Result<SampleOutcome> {
    ensure!(cfg.guidance.is_finite(), "guidance scale must be finite, got {}", cfg.guidance);
    if let SamplerKind::Ddim { eta } = cfg.kind {
        // eta > 1 can make 1 - ab_prev - sigma^2 negative (no real DDIM update).
        ensure!((0.0..=1.0).contains(&eta), "DDIM eta must be in [0, 1], got {eta}");
    }
    let batch = labels.len();
    ensure!(batch > 0, "no labels given: nothing to sample");
    let [c, h, w] = shape_chw;
    let chw =
        c.checked_mul(h).and_then(|v| v.checked_mul(w)).filter(|&v| v > 0).with_context(|| format!("invalid image shape {shape_chw:?}"))?;
    // 2x for the batched cond+uncond call.
    let n = batch.checked_mul(chw).filter(|v| v.checked_mul(2).is_some()).context("batch too large")?;
    ensure!(cfg.first_image.checked_add(batch as u64).is_some(), "first_image {} + batch {batch} overflows u64", cfg.first_image);

    let mut rngs: Vec<ChaCha8Rng> = (0..batch as u64).map(|i| image_rng(cfg.seed, cfg.first_image + i)).collect();
    let mut x = vec![0f32; n];
    // The starting noise is always drawn, so the streams are in the same place either way.
    fill_normal(&mut rngs, &mut x, chw);
    if let Some(init) = x_init {
        ensure!(init.len() == n, "starting state has {} values, expected {n}", init.len());
        x.copy_from_slice(init);
    }
    let mut next = vec![0f32; n];
    let mut z = vec![0f32; n];
    let mut history: Option<History> = None;

    let (betas, alphas, abs) = (schedule.betas(), schedule.alphas(), schedule.alpha_bars());
    let total = ts.len();
    for (k, &t) in ts.iter().enumerate() {
        let at = || format!("sampling failed at step {} of {total} (t={t})", k + 1);
        let last = k + 1 == total;
        let t_next = if last { 0 } else { ts[k + 1] };
        let ab_t = abs[t];

        let eps = guided_eps(model, &x, [batch, c, h, w], t, labels, cfg).with_context(at)?;
        let (alpha_t, sigma_t) = (ab_t.sqrt(), (1.0 - ab_t).sqrt());
        // The data prediction, clamped when clipping is on.
        let x0: Vec<f64> = x
            .iter()
            .zip(&eps)
            .map(|(&xv, &e)| {
                let v = (f64::from(xv) - sigma_t * e) / alpha_t;
                if cfg.clip_x0 {
                    v.clamp(-1.0, 1.0)
                } else {
                    v
                }
            })
            .collect();
        // The state the update starts from. With clipping it is projected onto the clipped x0 and the
        // model's own eps (x_t' = alpha_t x0_clipped + sigma_t eps): the part of x_t that clipping took
        // out of x0 is dropped instead of being carried into the next state, where the model would read
        // it as noise it never put there (see `clip_x0`).
        let projected: Option<Vec<f64>> = cfg.clip_x0.then(|| x0.iter().zip(&eps).map(|(&v, &e)| alpha_t * v + sigma_t * e).collect());
        let state = |k: usize| projected.as_ref().map_or(f64::from(x[k]), |p| p[k]);

        match cfg.kind {
            SamplerKind::Ddpm => {
                // dome272: x_{t-1} = (x_t - beta_t / sqrt(1 - ab_t) eps) / sqrt(alpha_t) + sigma z, with no
                // noise on the step that produces x_0 (t == 1).
                let coef = 1.0 / alphas[t].sqrt();
                let b = -coef * betas[t] / sigma_t;
                let sigma = if t > 1 { betas[t].sqrt() } else { 0.0 };
                // Draw only when noise is added; the decision depends on t alone, so every image's
                // stream advances identically whatever the batch split.
                if sigma > 0.0 {
                    fill_normal(&mut rngs, &mut z, chw);
                }
                for (k, o) in next.iter_mut().enumerate() {
                    let noise = if sigma > 0.0 { sigma * f64::from(z[k]) } else { 0.0 };
                    *o = (coef * state(k) + b * eps[k] + noise) as f32;
                }
            }
            SamplerKind::Ddim { eta } => {
                // diffusers' DDIMScheduler.step: sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z,
                // with the model's eps in the direction term (its default use_clipped_model_output=False).
                // The last step jumps to alpha_bar = 1, i.e. returns the x0 prediction.
                let ab_prev = if last { 1.0 } else { abs[t_next] };
                let sigma = eta * ((1.0 - ab_prev) / (1.0 - ab_t)).sqrt() * (1.0 - ab_t / ab_prev).sqrt();
                let dir = (1.0 - ab_prev - sigma * sigma).max(0.0).sqrt();
                let sa_prev = ab_prev.sqrt();
                if sigma > 0.0 {
                    fill_normal(&mut rngs, &mut z, chw);
                }
                for (k, o) in next.iter_mut().enumerate() {
                    let noise = if sigma > 0.0 { sigma * f64::from(z[k]) } else { 0.0 };
                    *o = (sa_prev * x0[k] + dir * eps[k] + noise) as f32;
                }
            }
            SamplerKind::DpmSolver2M => {
                let lambda_t = (alpha_t / sigma_t).ln();
                if last {
                    // The final step goes to sigma = 0: its first-order update is the x0 prediction.
                    for (o, &v) in next.iter_mut().zip(&x0) {
                        *o = v as f32;
                    }
                } else {
                    let ab_n = abs[t_next];
                    let (alpha_n, sigma_n) = (ab_n.sqrt(), (1.0 - ab_n).sqrt());
                    let h = (alpha_n / sigma_n).ln() - lambda_t;
                    let (ratio, coef) = (sigma_n / sigma_t, -alpha_n * (-h).exp_m1());
                    // Second order after the first step (the midpoint form): x0 + (x0 - x0_prev) / (2 r),
                    // r = h_prev / h; first order (x0 alone) on the first.
                    let prev = history.as_ref().map(|p| (0.5 * h / (lambda_t - p.lambda), &p.x0));
                    for (k, o) in next.iter_mut().enumerate() {
                        let d = match prev {
                            Some((half_over_r, x0_prev)) => x0[k] + half_over_r * (x0[k] - x0_prev[k]),
                            None => x0[k],
                        };
                        *o = (ratio * state(k) + coef * d) as f32;
                    }
                }
                history = Some(History { x0, lambda: lambda_t });
            }
        }
        if let Some(i) = next.iter().position(|v| !v.is_finite()) {
            bail!("{}: update produced non-finite x at batch item {}", at(), i / chw);
        }

        let control = observer(StepEvent { step: k, total_steps: total, t, t_next, x_t: &x, x_next: &next })
            .with_context(|| format!("observer failed at step {} of {total} (t={t})", k + 1))?;
        std::mem::swap(&mut x, &mut next);
        if control == Control::Stop && !last {
            return Ok(SampleOutcome::Stopped { steps_done: k + 1, x });
        }
    }
    for v in &mut x {
        *v = v.clamp(-1.0, 1.0);
    }
    Ok(SampleOutcome::Finished(x))
}

/// Pixel value as the reference saves it: clamp to [-1, 1], `(x + 1) / 2 * 255` in f32, then
/// truncate like `.type(torch.uint8)`. NaN maps to 0 (Rust's saturating cast).
pub fn to_u8(x: f32) -> u8 {
    ((x.clamp(-1.0, 1.0) + 1.0) / 2.0 * 255.0) as u8
}

/// A frame kept by [`Snapshots`].
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// The timestep asked for.
    pub wanted: usize,
    /// The timestep of the state kept: the first visited one at or below `wanted`.
    pub t: usize,
    pub x: Vec<f32>,
}

/// Observer helper that keeps copies of the reverse process at chosen timesteps, e.g.
/// `[999, 800, 600, 400, 200, 0]` (0 = the final, unclamped image).
#[derive(Debug, Clone, Default)]
pub struct Snapshots {
    pending: Vec<usize>,
    frames: Vec<Frame>,
}

impl Snapshots {
    pub fn new(wanted: &[usize]) -> Self {
        Self { pending: wanted.to_vec(), frames: Vec::new() }
    }

    /// Feed every event; states are seen in descending t, so the first state at or below a
    /// wanted time is the closest one the sampler actually visited.
    pub fn observe(&mut self, ev: &StepEvent<'_>) {
        for (t, x) in [(ev.t, ev.x_t), (ev.t_next, ev.x_next)] {
            let frames = &mut self.frames;
            self.pending.retain(|&wanted| {
                if t <= wanted {
                    frames.push(Frame { wanted, t, x: x.to_vec() });
                    false
                } else {
                    true
                }
            });
        }
    }

    /// Frames in the order they were taken (descending t).
    pub fn frames(&self) -> &[Frame] {
        &self.frames
    }
}

fn image_rng(seed: u64, index: u64) -> ChaCha8Rng {
    // Same key for the whole job, one 64-bit ChaCha stream per image: independent sequences
    // that do not depend on which batch an image lands in.
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    rng
}

fn fill_normal(rngs: &mut [ChaCha8Rng], out: &mut [f32], chw: usize) {
    for (rng, img) in rngs.iter_mut().zip(out.chunks_exact_mut(chw)) {
        for v in img {
            *v = rng.sample(StandardNormal);
        }
    }
}

/// Noise prediction with guidance, widened to f64 for the update arithmetic.
fn guided_eps(model: &mut dyn NoiseModel, x: &[f32], shape: [usize; 4], t: usize, labels: &[i64], cfg: &SampleConfig) -> Result<Vec<f64>> {
    let batch = shape[0];
    let nulls = vec![cfg.null_label; batch];
    let w = cfg.guidance;
    let widen = |v: Vec<f32>| v.into_iter().map(f64::from).collect();
    if w == 1.0 {
        return call_model(model, x, shape, t, labels).map(widen);
    }
    if w == 0.0 {
        return call_model(model, x, shape, t, &nulls).map(widen);
    }
    // One call on [x; x] with [labels; nulls]: half the model invocations of two passes.
    let mut xx = Vec::with_capacity(2 * x.len());
    xx.extend_from_slice(x);
    xx.extend_from_slice(x);
    let mut ll = labels.to_vec();
    ll.extend_from_slice(&nulls);
    let out = call_model(model, &xx, [2 * batch, shape[1], shape[2], shape[3]], t, &ll)?;
    let (cond, uncond) = out.split_at(x.len());
    // Same f32 arithmetic as torch.lerp(uncond, cond, w).
    let w = w as f32;
    Ok(cond.iter().zip(uncond).map(|(&c, &u)| f64::from(u + w * (c - u))).collect())
}

fn call_model(model: &mut dyn NoiseModel, x: &[f32], shape: [usize; 4], t: usize, labels: &[i64]) -> Result<Vec<f32>> {
    let t = i64::try_from(t).context("timestep does not fit in i64")?;
    let ts = vec![t; shape[0]];
    let out = model.predict(x, shape, &ts, labels).context("noise model call failed")?;
    ensure!(out.len() == x.len(), "noise model returned {} values, expected {} for shape {shape:?}", out.len(), x.len());
    if let Some(i) = out.iter().position(|v| !v.is_finite()) {
        let per = x.len() / shape[0];
        bail!("noise model returned {} at batch item {} (label {}), element {}", out[i], i / per, labels[i / per], i % per);
    }
    Ok(out)
}
