//! Closed-form tests for the schedule and samplers.

use super::sampler::*;
use super::schedule::Schedule;
use anyhow::Result;

const MNIST: [usize; 3] = [3, 28, 28];
const SMALL: [usize; 3] = [3, 8, 8];
const NULL: i64 = 10;

fn dome() -> Schedule {
    Schedule::new("linear", 1e-4, 0.02, 1000).unwrap()
}

fn cfg(kind: SamplerKind, steps: usize) -> SampleConfig {
    SampleConfig { kind, steps, guidance: 1.0, null_label: NULL, clip_x0: false, seed: 7, first_image: 0 }
}

fn ddim(eta: f64, steps: usize) -> SampleConfig {
    cfg(SamplerKind::Ddim { eta }, steps)
}

fn keep_going(_: StepEvent<'_>) -> Result<Control> {
    Ok(Control::Continue)
}

fn run(model: &mut dyn NoiseModel, s: &Schedule, c: &SampleConfig, labels: &[i64], chw: [usize; 3]) -> Vec<f32> {
    sample(model, s, c, labels, chw, &mut keep_going).unwrap().finished().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Fixed clean image per label, values in [-0.8, 0.8] (clamping never touches it).
fn target(label: i64, j: usize) -> f32 {
    (0.8 * (0.37 * label as f64 + 0.013 * j as f64 + 0.5).sin()) as f32
}

fn targets(labels: &[i64], chw: usize) -> Vec<f32> {
    labels.iter().flat_map(|&l| (0..chw).map(move |j| target(l, j))).collect()
}

/// Knows x0* for each label and returns exactly the noise that explains x_t:
/// eps = (x_t - sqrt(ab_t) x0*) / sqrt(1 - ab_t).
struct Oracle {
    alpha_bars: Vec<f64>,
    shift: f32, // added to x0*, to push the target outside [-1, 1] for the clip test
}

impl Oracle {
    fn new(s: &Schedule) -> Self {
        Self { alpha_bars: s.alpha_bars().to_vec(), shift: 0.0 }
    }
}

impl NoiseModel for Oracle {
    fn predict(&mut self, x: &[f32], shape: [usize; 4], t: &[i64], labels: &[i64]) -> Result<Vec<f32>> {
        let chw = shape[1] * shape[2] * shape[3];
        Ok(x.iter()
            .enumerate()
            .map(|(i, &xv)| {
                let (n, j) = (i / chw, i % chw);
                let ab = self.alpha_bars[t[n] as usize];
                let x0 = f64::from(target(labels[n], j) + self.shift);
                ((f64::from(xv) - ab.sqrt() * x0) / (1.0 - ab).sqrt()) as f32
            })
            .collect())
    }
}

/// A nonlinear per-element model: output depends on the noise, so seeds matter.
struct Toy;

impl NoiseModel for Toy {
    fn predict(&mut self, x: &[f32], shape: [usize; 4], t: &[i64], labels: &[i64]) -> Result<Vec<f32>> {
        let chw = shape[1] * shape[2] * shape[3];
        Ok(x.iter().enumerate().map(|(i, &v)| 0.9 * v.tanh() + 0.01 * labels[i / chw] as f32 + 1e-5 * t[i / chw] as f32).collect())
    }
}

/// One recorded model call.
struct Call {
    batch: usize,
    t: Vec<i64>,
    labels: Vec<i64>,
    x: Vec<f32>,
}

/// Returns `cond` for real labels and `uncond` for the null label; records every call.
struct Recorder {
    cond: f32,
    uncond: f32,
    calls: Vec<Call>,
}

impl NoiseModel for Recorder {
    fn predict(&mut self, x: &[f32], shape: [usize; 4], t: &[i64], labels: &[i64]) -> Result<Vec<f32>> {
        self.calls.push(Call { batch: shape[0], t: t.to_vec(), labels: labels.to_vec(), x: x.to_vec() });
        let chw = shape[1] * shape[2] * shape[3];
        Ok(labels.iter().flat_map(|&l| std::iter::repeat_n(if l == NULL { self.uncond } else { self.cond }, chw)).collect())
    }
}

// ---------------------------------------------------------------- schedule

#[test]
fn linear_schedule_matches_numpy_reference() {
    let s = dome();
    assert_eq!(s.len(), 1000);
    assert_eq!(s.betas()[0], 1e-4);
    assert_eq!(s.betas()[999], 0.02);
    // Reference values from numpy: np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)).
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 + 1e-9 * b.abs();
    assert!(close(s.betas()[1], 1.1991991991991993e-4));
    assert!(close(s.alpha_bars()[0], 0.9999));
    assert!(close(s.alpha_bars()[1], 0.9997800920720721));
    assert!(close(s.alpha_bars()[499], 0.07858724288177824));
    assert!(close(s.alpha_bars()[999], 4.035829765375676e-05), "{}", s.alpha_bars()[999]);
    assert!(close(s.alphas()[999], 0.98));
}

#[test]
fn from_betas_builds_cumulative_products() {
    let s = Schedule::from_betas(vec![0.1, 0.2, 0.3]).unwrap();
    let want = [0.9, 0.72, 0.504];
    for (got, want) in s.alpha_bars().iter().zip(want) {
        assert!((got - want).abs() < 1e-15, "{got} vs {want}");
    }
}

#[test]
fn invalid_schedules_are_errors() {
    let bad = [
        Schedule::new("linear", 1e-4, 0.02, 1),
        Schedule::new("linear", 0.0, 0.02, 10),
        Schedule::new("linear", 1e-4, 1.0, 10),
        Schedule::new("linear", f64::NAN, 0.02, 10),
        Schedule::new("cosine", 1e-4, 0.02, 10),
        Schedule::from_betas(vec![0.1]),
        Schedule::from_betas(vec![0.1, -0.2]),
        Schedule::from_betas(vec![0.1, f64::INFINITY]),
        Schedule::from_betas(vec![0.999_999; 100_000]), // alpha_bar underflows to 0
    ];
    for (i, r) in bad.into_iter().enumerate() {
        assert!(r.is_err(), "case {i} should be rejected");
    }
    let msg = Schedule::from_betas(vec![0.1, 1.5]).unwrap_err().to_string();
    assert!(msg.contains("betas[1]"), "{msg}");
}

// ---------------------------------------------------------------- timesteps

#[test]
fn ddpm_timesteps_visit_every_step() {
    let ts = timesteps(SamplerKind::Ddpm, 999, 1000).unwrap();
    assert_eq!(ts.len(), 999);
    assert_eq!((ts[0], ts[998]), (999, 1));
    assert!(ts.windows(2).all(|w| w[0] == w[1] + 1));
    assert!(timesteps(SamplerKind::Ddpm, 998, 1000).is_err());
    assert!(timesteps(SamplerKind::Ddpm, 1000, 1000).is_err());
    assert_eq!(timesteps(SamplerKind::Ddpm, 1, 2).unwrap(), vec![1]);
}

#[test]
fn ddim_timesteps_are_evenly_spaced_and_distinct() {
    let kind = SamplerKind::Ddim { eta: 0.0 };
    for steps in [2, 3, 10, 50, 333, 998, 999] {
        let ts = timesteps(kind, steps, 1000).unwrap();
        assert_eq!(ts.len(), steps);
        assert_eq!((ts[0], *ts.last().unwrap()), (999, 1), "steps={steps}");
        assert!(ts.windows(2).all(|w| w[0] > w[1]), "steps={steps} not strictly descending");
        // Evenly spaced up to rounding: gaps differ by at most 1.
        let gaps: Vec<usize> = ts.windows(2).map(|w| w[0] - w[1]).collect();
        let (lo, hi) = (gaps.iter().min().unwrap(), gaps.iter().max().unwrap());
        assert!(hi - lo <= 1, "steps={steps} gaps {lo}..{hi}");
    }
    // Same as numpy's floor(linspace(1, T-1, steps) + 0.5), reversed, for every valid count.
    for steps in 2..=999usize {
        let want: Vec<usize> = (0..steps).rev().map(|k| (1.0 + k as f64 * 998.0 / (steps - 1) as f64 + 0.5).floor() as usize).collect();
        assert_eq!(timesteps(kind, steps, 1000).unwrap(), want, "steps={steps}");
    }
    assert_eq!(timesteps(kind, 1, 1000).unwrap(), vec![999]);
    assert_eq!(timesteps(kind, 10, 1000).unwrap(), vec![999, 888, 777, 666, 555, 445, 334, 223, 112, 1]);
    assert_eq!(timesteps(kind, 999, 1000).unwrap(), (1..=999).rev().collect::<Vec<_>>());
    assert!(timesteps(kind, 0, 1000).is_err());
    assert!(timesteps(kind, 1000, 1000).is_err());
    assert!(timesteps(kind, 1, 1).is_err());
}

// ---------------------------------------------------------------- oracle recovery

#[test]
fn ddim_eta0_recovers_target_for_any_step_count() {
    let s = dome();
    let labels = [0, 3, 9];
    let want = targets(&labels, 3 * 28 * 28);
    for steps in [1, 10, 50, 999] {
        let out = run(&mut Oracle::new(&s), &s, &ddim(0.0, steps), &labels, MNIST);
        let err = max_abs_diff(&out, &want);
        assert!(err < 1e-4, "steps={steps}: max err {err}");
        println!("DDIM eta=0 oracle, {steps} steps: max err {err:.2e}");
    }
}

#[test]
fn ddim_with_noise_still_recovers_target_from_exact_oracle() {
    // The last DDIM step returns the x0 prediction, which the oracle makes exact whatever
    // noise was injected on the way.
    let s = dome();
    let labels = [1, 2];
    let out = run(&mut Oracle::new(&s), &s, &ddim(1.0, 50), &labels, MNIST);
    let err = max_abs_diff(&out, &targets(&labels, 3 * 28 * 28));
    assert!(err < 1e-4, "max err {err}");
}

#[test]
fn ddpm_with_oracle_lands_within_derived_bound() {
    // With r_t = x_t - sqrt(ab_t) x0*, one dome272 step with the oracle's eps gives exactly
    //   r_{t-1} = k_t r_t + s_t z,  k_t = sqrt(a_t) (1 - ab_{t-1}) / (1 - ab_t),
    //   s_t = sqrt(beta_t) (0 at t = 1), starting from r_{T-1} = x_T - sqrt(ab_{T-1}) x0*.
    // So the raw output is  sqrt(ab_0) x0* - m sqrt(ab_{T-1}) x0* + N(0, v0), m = prod k_t,
    // v0 from v <- k_t^2 v + s_t^2 with v = 1 at the start.
    let s = dome();
    let (a, b, ab) = (s.alphas(), s.betas(), s.alpha_bars());
    let (mut m, mut v) = (1.0f64, 1.0f64);
    for t in (1..1000).rev() {
        let k = a[t].sqrt() * (1.0 - ab[t - 1]) / (1.0 - ab[t]);
        let s2 = if t > 1 { b[t] } else { 0.0 };
        m *= k;
        v = k * k * v + s2;
    }
    let sd = v.sqrt();
    let scale = ab[0].sqrt() - m * ab[999].sqrt();
    assert!(sd < 0.01, "derived noise sd {sd} is not small");

    let labels = [0, 5, 8];
    let out = run(&mut Oracle::new(&s), &s, &cfg(SamplerKind::Ddpm, 999), &labels, MNIST);
    let x0 = targets(&labels, 3 * 28 * 28);
    let d: Vec<f64> = out.iter().zip(&x0).map(|(&o, &t)| f64::from(o) - scale * f64::from(t)).collect();
    let n = d.len() as f64;
    let mean = d.iter().sum::<f64>() / n;
    let rms = (d.iter().map(|e| e * e).sum::<f64>() / n).sqrt();
    let max = d.iter().fold(0.0f64, |acc, e| acc.max(e.abs()));
    assert!(mean.abs() < 5.0 * sd / n.sqrt(), "mean {mean} sd {sd}");
    assert!((rms / sd - 1.0).abs() < 0.05, "rms {rms} vs derived sd {sd}");
    assert!(max < 5.5 * sd, "max {max} vs sd {sd}");
    // Hence the distance to x0* itself: |1 - scale| * 0.8 + 5.5 sd.
    let bound = (1.0 - scale).abs() * 0.8 + 5.5 * sd;
    let err = f64::from(max_abs_diff(&out, &x0));
    assert!(err < bound, "err {err} bound {bound}");
    println!("DDPM oracle: sd={sd:.3e} scale={scale:.8} max err={err:.3e} bound={bound:.3e}");
}

#[test]
fn clip_x0_clamps_the_prediction() {
    // Target pushed to [0.7, 2.3]: without clipping the raw final state is the target,
    // with clipping it is the target clamped to 1.
    let s = dome();
    let labels = [4];
    let shift = 1.5;
    let want_raw: Vec<f32> = targets(&labels, 192).iter().map(|v| v + shift).collect();
    for clip in [false, true] {
        let mut oracle = Oracle { shift, ..Oracle::new(&s) };
        let c = SampleConfig { clip_x0: clip, ..ddim(0.0, 20) };
        let mut last = Vec::new();
        let out = sample(&mut oracle, &s, &c, &labels, SMALL, &mut |ev: StepEvent<'_>| {
            last = ev.x_next.to_vec();
            Ok(Control::Continue)
        })
        .unwrap()
        .finished()
        .unwrap();
        let want: Vec<f32> = want_raw.iter().map(|&v| if clip { v.min(1.0) } else { v }).collect();
        assert!(max_abs_diff(&last, &want) < 1e-4, "clip={clip}");
        assert!(out.iter().all(|v| (-1.0..=1.0).contains(v)));
    }
}

/// Returns the same eps for every call: the noise a fixed clean image `x0*` was mixed with. From the
/// state `sqrt(ab) x0* + sqrt(1 - ab) E` its x0 prediction is `x0*` at every timestep.
struct FixedEps(Vec<f32>);

impl NoiseModel for FixedEps {
    fn predict(&mut self, x: &[f32], _: [usize; 4], _: &[i64], _: &[i64]) -> Result<Vec<f32>> {
        Ok(self.0.iter().cycle().take(x.len()).copied().collect())
    }
}

/// The x0 a state implies under the fixed eps `e` at `ab`: what the model would predict next.
fn implied_x0(x: &[f32], e: &[f32], ab: f64) -> Vec<f64> {
    x.iter().zip(e).map(|(&v, &e)| (f64::from(v) - (1.0 - ab).sqrt() * f64::from(e)) / ab.sqrt()).collect()
}

#[test]
fn clipping_carries_nothing_of_the_clipped_excess_into_the_next_state() {
    // A model whose x0 prediction leaves [-1, 1] (up to +-3) at the first step. Clipping must take the
    // excess out of the trajectory: every later state implies an x0 inside [-1, 1] under the model's own
    // eps. The earlier form (eps re-derived from the clipped x0) kept exp(-h) of the excess in x_t, where
    // the next call reads it as noise; on a real UNet that ended as saturated colour in a third of the digits.
    let s = dome();
    let chw = SMALL.iter().product::<usize>();
    let e: Vec<f32> = (0..chw).map(|j| (1.3 * (0.71 * j as f64).sin()) as f32).collect();
    let x0_star: Vec<f64> = (0..chw).map(|j| 3.0 * (0.29 * j as f64 + 0.4).cos()).collect();
    assert!(x0_star.iter().filter(|v| v.abs() > 1.5).count() > chw / 3, "the test needs a large excess");
    for kind in [SamplerKind::Ddim { eta: 0.0 }, SamplerKind::DpmSolver2M] {
        for steps in [5, 20] {
            let ts = timesteps(kind, steps, s.len()).unwrap();
            let ab0 = s.alpha_bars()[ts[0]];
            let x_init: Vec<f32> =
                x0_star.iter().zip(&e).map(|(&v, &e)| (ab0.sqrt() * v + (1.0 - ab0).sqrt() * f64::from(e)) as f32).collect();
            let c = SampleConfig { kind, clip_x0: true, ..cfg(kind, steps) };
            let mut worst = 0f64;
            let mut observe = |ev: StepEvent<'_>| -> Result<Control> {
                if ev.t_next > 0 {
                    let x0 = implied_x0(ev.x_next, &e, s.alpha_bars()[ev.t_next]);
                    worst = x0.iter().fold(worst, |m, v| m.max(v.abs() - 1.0));
                }
                Ok(Control::Continue)
            };
            let out = sample_from(&mut FixedEps(e.clone()), &s, &c, &ts, &x_init, &[2], SMALL, &mut observe).unwrap().finished().unwrap();
            assert!(worst < 1e-4, "{} {steps} steps: a state carries {worst} of clipped excess", kind.label());
            // And the image is the clipped x0*, nothing else.
            let want: Vec<f32> = x0_star.iter().map(|v| v.clamp(-1.0, 1.0) as f32).collect();
            assert!(max_abs_diff(&out, &want) < 1e-4, "{} {steps} steps", kind.label());
        }
    }
}

#[test]
fn clipped_dpm_solver_at_first_order_is_clipped_ddim() {
    // Two steps: DPM-Solver++(2M) takes a first-order step then returns x0, which is DDIM with the model's
    // eps kept (diffusers' default clipping) on the same timesteps, with a model that makes clipping engage.
    let s = dome();
    let ts = [999, 500];
    let labels = [1i64, 8];
    let mut shifted = Oracle { shift: 1.7, ..Oracle::new(&s) };
    let init: Vec<f32> = (0..2 * 192).map(|k| (2.0 * (k as f64 * 0.37).sin()) as f32).collect();
    let states = |kind: SamplerKind, model: &mut dyn NoiseModel| {
        let mut v = vec![];
        let c = SampleConfig { kind, clip_x0: true, ..cfg(kind, 2) };
        sample_from(model, &s, &c, &ts, &init, &labels, SMALL, &mut |ev: StepEvent<'_>| {
            v.push(ev.x_next.to_vec());
            Ok(Control::Continue)
        })
        .unwrap();
        v
    };
    let a = states(SamplerKind::DpmSolver2M, &mut shifted);
    let b = states(SamplerKind::Ddim { eta: 0.0 }, &mut Toy);
    let b2 = states(SamplerKind::Ddim { eta: 0.0 }, &mut shifted);
    assert!(max_abs_diff(&a[0], &b2[0]) < 1e-5 && max_abs_diff(&a[1], &b2[1]) < 1e-5);
    // Guard: a different model gives a different trajectory, so the equality above is not vacuous.
    assert!(max_abs_diff(&a[0], &b[0]) > 1e-2);
}

// ---------------------------------------------------------------- guidance

/// Tiny schedule where one DDIM step returns x0 = (x - sqrt(1-ab) eps) / sqrt(ab).
fn guidance_case(w: f64) -> (Recorder, Vec<f32>, Vec<f32>) {
    let s = Schedule::from_betas(vec![0.1, 0.2, 0.3]).unwrap();
    let mut rec = Recorder { cond: 0.5, uncond: -0.25, calls: Vec::new() };
    let c = SampleConfig { guidance: w, ..ddim(0.0, 1) };
    let (mut x_t, mut x_next) = (Vec::new(), Vec::new());
    sample(&mut rec, &s, &c, &[2, 7], SMALL, &mut |ev: StepEvent<'_>| {
        x_t = ev.x_t.to_vec();
        x_next = ev.x_next.to_vec();
        Ok(Control::Continue)
    })
    .unwrap();
    (rec, x_t, x_next)
}

fn expected_x0(x_t: &[f32], eps: f64) -> Vec<f32> {
    let ab: f64 = 0.504;
    x_t.iter().map(|&x| ((f64::from(x) - (1.0 - ab).sqrt() * eps) / ab.sqrt()) as f32).collect()
}

#[test]
fn guidance_batches_cond_and_uncond_in_one_call() {
    let (rec, x_t, x_next) = guidance_case(3.0);
    assert_eq!(rec.calls.len(), 1, "one model call per step");
    let Call { batch, t, labels, x } = &rec.calls[0];
    assert_eq!(*batch, 4);
    assert_eq!(labels, &vec![2, 7, NULL, NULL]);
    assert_eq!(t, &vec![2; 4]);
    let (first, second) = x.split_at(x.len() / 2);
    assert_eq!(first, second, "both halves must be the same x_t");
    assert_eq!(first, &x_t[..]);
    // eps = uncond + 3 * (cond - uncond) = -0.25 + 3 * 0.75 = 2.0
    assert!(max_abs_diff(&x_next, &expected_x0(&x_t, 2.0)) < 1e-5);
}

#[test]
fn guidance_one_is_conditional_only_and_zero_is_unconditional_only() {
    for (w, want_labels, eps) in [(1.0, vec![2, 7], 0.5), (0.0, vec![NULL, NULL], -0.25)] {
        let (rec, x_t, x_next) = guidance_case(w);
        assert_eq!(rec.calls.len(), 1, "w={w}");
        assert_eq!(rec.calls[0].batch, 2, "w={w}: single pass of batch size 2");
        assert_eq!(rec.calls[0].labels, want_labels, "w={w}");
        assert!(max_abs_diff(&x_next, &expected_x0(&x_t, eps)) < 1e-5, "w={w}");
    }
}

#[test]
fn ddpm_calls_model_once_per_step_with_the_right_timesteps() {
    let s = dome();
    let mut rec = Recorder { cond: 0.0, uncond: 0.0, calls: Vec::new() };
    let c = SampleConfig { guidance: 2.0, ..cfg(SamplerKind::Ddpm, 999) };
    run(&mut rec, &s, &c, &[3], [1, 1, 1]);
    assert_eq!(rec.calls.len(), 999);
    let seen: Vec<i64> = rec.calls.iter().map(|c| c.t[0]).collect();
    assert_eq!(seen, (1..=999).rev().collect::<Vec<i64>>());
    assert!(rec.calls.iter().all(|c| c.batch == 2 && c.t[0] == c.t[1]));
}

// ---------------------------------------------------------------- determinism and RNG

#[test]
fn same_seed_same_images_different_seed_different_images() {
    let s = dome();
    let labels = [1, 1, 2];
    for kind in [SamplerKind::Ddpm, SamplerKind::Ddim { eta: 0.0 }] {
        let steps = if kind == SamplerKind::Ddpm { 999 } else { 25 };
        let a = run(&mut Toy, &s, &cfg(kind, steps), &labels, SMALL);
        let b = run(&mut Toy, &s, &cfg(kind, steps), &labels, SMALL);
        let c = run(&mut Toy, &s, &SampleConfig { seed: 8, ..cfg(kind, steps) }, &labels, SMALL);
        assert_eq!(a, b, "{kind:?}: same seed must be bit-identical");
        assert!(max_abs_diff(&a, &c) > 0.1, "{kind:?}: different seed must differ");
        // Two images with the same label get different noise streams.
        assert!(max_abs_diff(&a[..192], &a[192..384]) > 0.1, "{kind:?}");
    }
}

#[test]
fn batch_split_gives_identical_images() {
    let s = dome();
    let labels: Vec<i64> = (0..6).map(|i| i % 10).collect();
    for (kind, steps, w) in
        [(SamplerKind::Ddpm, 999, 1.0), (SamplerKind::Ddim { eta: 0.5 }, 40, 3.0), (SamplerKind::Ddim { eta: 0.0 }, 10, 0.0)]
    {
        let base = SampleConfig { guidance: w, ..cfg(kind, steps) };
        let whole = run(&mut Toy, &s, &base, &labels, SMALL);
        let mut parts = Vec::new();
        for (start, end) in [(0, 4), (4, 5), (5, 6)] {
            let c = SampleConfig { first_image: start as u64, ..base.clone() };
            parts.extend(run(&mut Toy, &s, &c, &labels[start..end], SMALL));
        }
        assert_eq!(whole, parts, "{kind:?} w={w}");
        // Guard against a vacuous pass: offsets must matter.
        let shifted = run(&mut Toy, &s, &SampleConfig { first_image: 1, ..base.clone() }, &labels[1..2], SMALL);
        assert_eq!(shifted, whole[192..384]);
        let unshifted = run(&mut Toy, &s, &base, &labels[1..2], SMALL);
        assert!(max_abs_diff(&unshifted, &whole[192..384]) > 0.1);
    }
}

// ---------------------------------------------------------------- observer

#[test]
fn observer_stop_returns_stopped_with_steps_done() {
    let s = dome();
    let mut calls = 0;
    let mut last_next = Vec::new();
    let out = sample(&mut Toy, &s, &ddim(0.0, 50), &[3, 4], SMALL, &mut |ev: StepEvent<'_>| {
        calls += 1;
        assert_eq!(ev.step + 1, calls);
        assert_eq!(ev.total_steps, 50);
        last_next = ev.x_next.to_vec();
        Ok(if calls == 5 { Control::Stop } else { Control::Continue })
    })
    .unwrap();
    assert_eq!(calls, 5);
    match out {
        SampleOutcome::Stopped { steps_done, x } => {
            assert_eq!(steps_done, 5);
            assert_eq!(x, last_next);
        }
        other => panic!("expected Stopped, got {other:?}"),
    }
    let stopped = sample(&mut Toy, &s, &ddim(0.0, 50), &[3], SMALL, &mut |_| Ok(Control::Stop)).unwrap();
    assert!(stopped.finished().unwrap_err().to_string().contains("stopped after 1 steps"));
}

#[test]
fn stop_on_the_last_step_is_finished() {
    let s = dome();
    let out = sample(&mut Toy, &s, &ddim(0.0, 1), &[3], SMALL, &mut |_| Ok(Control::Stop)).unwrap();
    assert!(matches!(out, SampleOutcome::Finished(_)));
}

#[test]
fn observer_errors_propagate_with_the_step() {
    let s = dome();
    let mut n = 0;
    let err = sample(&mut Toy, &s, &ddim(0.0, 10), &[3], SMALL, &mut |_| {
        n += 1;
        if n == 2 {
            anyhow::bail!("disk full")
        } else {
            Ok(Control::Continue)
        }
    })
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("step 2 of 10 (t=888)") && msg.contains("disk full"), "{msg}");
}

#[test]
fn ddpm_snapshots_hit_the_requested_times() {
    let s = dome();
    let wanted = [999, 800, 600, 400, 200, 0];
    let mut snaps = Snapshots::new(&wanted);
    let mut first_x = Vec::new();
    let out = sample(&mut Toy, &s, &cfg(SamplerKind::Ddpm, 999), &[5], SMALL, &mut |ev: StepEvent<'_>| {
        if ev.step == 0 {
            first_x = ev.x_t.to_vec();
        }
        snaps.observe(&ev);
        Ok(Control::Continue)
    })
    .unwrap()
    .finished()
    .unwrap();
    let frames = snaps.frames();
    assert_eq!(frames.iter().map(|f| f.t).collect::<Vec<_>>(), wanted);
    assert_eq!(frames.iter().map(|f| f.wanted).collect::<Vec<_>>(), wanted);
    assert_eq!(frames[0].x, first_x, "t=999 is the initial noise");
    let clamped: Vec<f32> = frames[5].x.iter().map(|v| v.clamp(-1.0, 1.0)).collect();
    assert_eq!(clamped, out, "t=0 is the final image before clamping");
    assert!(max_abs_diff(&frames[1].x, &frames[2].x) > 0.0);
}

#[test]
fn ddim_snapshots_take_the_closest_visited_time_below() {
    let s = dome();
    let wanted = [999, 800, 600, 400, 200, 0];
    let mut snaps = Snapshots::new(&wanted);
    sample(&mut Toy, &s, &ddim(0.0, 10), &[5], SMALL, &mut |ev: StepEvent<'_>| {
        snaps.observe(&ev);
        Ok(Control::Continue)
    })
    .unwrap();
    // Visited: 999, 888, 777, 666, 555, 445, 334, 223, 112, 1, then 0 (final).
    let got: Vec<usize> = snaps.frames().iter().map(|f| f.t).collect();
    assert_eq!(got, vec![999, 777, 555, 334, 112, 0]);
}

// ---------------------------------------------------------------- bad models and inputs

struct Faulty {
    calls: usize,
    bad_call: usize,
    value: f32,
    short: bool,
}

impl NoiseModel for Faulty {
    fn predict(&mut self, x: &[f32], _: [usize; 4], _: &[i64], _: &[i64]) -> Result<Vec<f32>> {
        self.calls += 1;
        let mut out = vec![0.0; x.len()];
        if self.calls == self.bad_call {
            if self.short {
                out.pop();
            } else {
                out[200] = self.value;
            }
        }
        Ok(out)
    }
}

#[test]
fn nan_from_model_is_an_error_naming_the_step() {
    let s = dome();
    for value in [f32::NAN, f32::INFINITY] {
        let mut m = Faulty { calls: 0, bad_call: 3, value, short: false };
        let err = sample(&mut m, &s, &cfg(SamplerKind::Ddpm, 999), &[1, 6], SMALL, &mut keep_going).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("step 3 of 999 (t=997)"), "{msg}");
        assert!(msg.contains(&value.to_string()), "{msg}");
        assert!(msg.contains("batch item 1 (label 6), element 8"), "{msg}");
        assert_eq!(m.calls, 3, "sampling must stop at the bad step");
    }
}

#[test]
fn wrong_output_length_is_an_error() {
    let s = dome();
    let mut m = Faulty { calls: 0, bad_call: 1, value: 0.0, short: true };
    let msg = format!("{:#}", sample(&mut m, &s, &ddim(0.0, 5), &[1], SMALL, &mut keep_going).unwrap_err());
    assert!(msg.contains("returned 191 values, expected 192"), "{msg}");
}

#[test]
fn model_errors_carry_the_step() {
    struct Broken;
    impl NoiseModel for Broken {
        fn predict(&mut self, _: &[f32], _: [usize; 4], _: &[i64], _: &[i64]) -> Result<Vec<f32>> {
            anyhow::bail!("onnx session exploded")
        }
    }
    let s = dome();
    let msg = format!("{:#}", sample(&mut Broken, &s, &ddim(0.0, 5), &[1], SMALL, &mut keep_going).unwrap_err());
    assert!(msg.contains("step 1 of 5 (t=999)") && msg.contains("onnx session exploded"), "{msg}");
}

#[test]
fn huge_model_output_that_overflows_x_is_an_error() {
    let s = dome();
    let mut m = Faulty { calls: 0, bad_call: 1, value: f32::MAX, short: false };
    let msg = format!("{:#}", sample(&mut m, &s, &ddim(0.0, 5), &[1, 2], SMALL, &mut keep_going).unwrap_err());
    assert!(msg.contains("non-finite x"), "{msg}");
}

#[test]
fn bad_configs_are_errors_not_panics() {
    let s = dome();
    let bad =
        |c: SampleConfig, labels: &[i64], chw: [usize; 3]| sample(&mut Toy, &s, &c, labels, chw, &mut keep_going).unwrap_err().to_string();
    assert!(bad(ddim(0.0, 5), &[], SMALL).contains("no labels"));
    assert!(bad(ddim(0.0, 5), &[1], [3, 0, 28]).contains("shape"));
    assert!(bad(ddim(0.0, 5), &[1], [usize::MAX, 2, 2]).contains("shape"));
    assert!(bad(ddim(1.5, 5), &[1], SMALL).contains("eta"));
    assert!(bad(ddim(f64::NAN, 5), &[1], SMALL).contains("eta"));
    assert!(bad(SampleConfig { guidance: f64::NAN, ..ddim(0.0, 5) }, &[1], SMALL).contains("guidance"));
    assert!(bad(cfg(SamplerKind::Ddpm, 50), &[1], SMALL).contains("steps must be T-1"));
    assert!(bad(ddim(0.0, 1000), &[1], SMALL).contains("1..=999"));
    assert!(bad(SampleConfig { first_image: u64::MAX, ..ddim(0.0, 5) }, &[1], SMALL).contains("overflows"));
}

// ---------------------------------------------------------------- to_u8

#[test]
fn to_u8_matches_torch_truncation() {
    assert_eq!(to_u8(-1.0), 0);
    assert_eq!(to_u8(1.0), 255);
    assert_eq!(to_u8(0.0), 127); // 127.5 truncates
    assert_eq!(to_u8(-5.0), 0);
    assert_eq!(to_u8(5.0), 255);
    assert_eq!(to_u8(f32::NAN), 0);
    // 2 * 200.9 / 255 - 1 sits between 200 and 201 after scaling.
    assert_eq!(to_u8(2.0 * 200.9 / 255.0 - 1.0), 200);
    assert_eq!(to_u8(0.999), 254); // 254.87
    let mut prev = 0;
    for i in 0..=2000 {
        let v = to_u8(-1.0 + i as f32 / 1000.0);
        assert!(v >= prev);
        prev = v;
    }
}
