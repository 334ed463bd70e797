//! Closed-form tests for the schedule and samplers: the shared oracles and recorders here; the
//! schedule, the sampling itself, and the run's control and bad inputs in the files beside.

mod control;
mod sampling;
mod schedule;

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
