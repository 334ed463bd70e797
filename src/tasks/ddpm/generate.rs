//! The generation phase of `grade ddpm`: every batch sampled within the budget, the first batch's pace
//! re-checked under `--steps auto` (restarting once with the steps that fit), and the frames of the
//! reverse-process figure collected on the way.

use std::time::{Duration, Instant};

use anyhow::Result;
use image::RgbImage;

use super::engine::NoiseEngine;
use super::plan::{fit_steps, Pace, Plan, AIM, REPLAN_OVER, REPLAN_UNDER};
use super::PROCESS_T;
use crate::budget::Deadline;
use crate::diffusion::{self, Control, SampleConfig, SampleOutcome, Schedule};
use crate::pictures;

/// What the generation phase made.
pub struct Generated {
    /// (file name, digit, image) of every finished image, in image order.
    pub images: Vec<(String, u8, RgbImage)>,
    /// The reverse-process frames of the first image of each digit (rows of `PROCESS_T.len()` frames).
    pub process_rows: Vec<Vec<RgbImage>>,
    /// The timestep (1-based) each frame column shows.
    pub process_t: Vec<usize>,
    /// The timesteps the sampler visited.
    pub visited: Vec<usize>,
    /// Set when the budget stopped the run: what was left unfinished.
    pub stop_note: Option<String>,
    pub seconds: f64,
    /// The `--steps auto` re-plans, as the report's details record them.
    pub replans: Vec<serde_json::Value>,
}

/// Samples every batch of `plan` with `steps` steps (re-planned under `--steps auto`), stopping at the
/// deadline. `per_call` is the warm-up's measured cost of one call.
pub fn generate(
    noise: &mut NoiseEngine,
    schedule: &Schedule,
    plan: &Plan,
    deadline: Deadline,
    per_call: Duration,
    mut steps: usize,
    quiet: bool,
) -> Result<Generated> {
    let (per_class, size, kind, guidance, null_label, clip, seed) =
        (plan.per_class, plan.size, plan.kind, plan.guidance, plan.null_label, plan.clip, plan.seed);
    let (chunks, auto, total_images) = (&plan.chunks, plan.auto(), plan.total_images());
    let n_batches = chunks.len();
    let t_total = schedule.len();
    let chw = 3 * size * size;
    let fitting = |per_call: Duration, usable: Duration| fit_steps(per_call, usable, n_batches, t_total - 1);
    // Generation. With --steps auto the first batch re-checks the estimate: if the rest would overrun
    // the budget, or leave much of it unused, sampling restarts once with the step count the measured
    // speed allows, so every digit still gets the same steps and the overrun is at most one batch.
    let wanted: Vec<usize> = PROCESS_T.iter().map(|t| t - 1).collect();
    let pb = crate::progress::bar(0, "sampling");
    if quiet {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut replans: Vec<serde_json::Value> = vec![];
    let generated = 'attempt: loop {
        let visited = diffusion::timesteps(kind, steps, t_total)?;
        pb.set_length((total_images * visited.len()) as u64);
        pb.set_position(0);
        pb.set_message(format!("{} x {} steps", kind.label(), visited.len()));
        let mut process_rows: Vec<Vec<RgbImage>> = vec![];
        let mut process_t: Vec<usize> = vec![];
        let mut generated: Vec<(String, u8, RgbImage)> = Vec::with_capacity(total_images);
        let t_gen = Instant::now();
        let mut stop_note = None;
        let mut batch_no = 0;
        for &(g0, g1) in chunks {
            let n = g1 - g0;
            // Image g is digit g / per_class, number g % per_class + 1; its noise stream is keyed by g, so a
            // digit comes out the same whatever batch it was sampled in.
            let labels: Vec<i64> = (g0..g1).map(|g| (g / per_class) as i64).collect();
            let cfg = SampleConfig { kind, steps: visited.len(), guidance, null_label, clip_x0: clip, seed, first_image: g0 as u64 };
            // The process figure follows the first image of each digit: offsets of those in this batch.
            let firsts: Vec<usize> = (g0..g1).filter(|g| g % per_class == 0).map(|g| g - g0).collect();
            let mut frames: Vec<Vec<RgbImage>> = vec![vec![]; firsts.len()];
            let mut frame_t: Vec<usize> = vec![];
            let t_batch = Instant::now();
            // With --steps auto the first batch also checks its pace part-way through: a run of one batch
            // (or a machine that slowed down after the warm-up) would otherwise find out too late.
            let pace_check =
                (auto && batch_no == 0 && replans.is_empty()).then(|| (visited.len() / 10).max(3)).filter(|&k| k < visited.len());
            let mut pace_replan: Option<(Duration, usize)> = None;
            let mut observer = |ev: diffusion::StepEvent<'_>| -> Result<Control> {
                if pace_check == Some(ev.step + 1) {
                    let pace = Pace {
                        elapsed: t_batch.elapsed(),
                        steps_done: ev.step + 1,
                        steps: visited.len(),
                        n_batches,
                        max_steps: t_total - 1,
                    };
                    if let Some(better) = pace.replan(deadline.remaining()) {
                        pace_replan = Some((pace.per_call(), better));
                        return Ok(Control::Stop);
                    }
                }
                let rgb = |x: &[f32], off: usize| {
                    pictures::chw_to_rgb(&x[off * chw..(off + 1) * chw], size as u32, size as u32, diffusion::to_u8)
                };
                if !firsts.is_empty() {
                    // The state before the first step is t = 1000 (pure noise).
                    if ev.step == 0 && wanted.contains(&(t_total - 1)) {
                        for (f, &off) in frames.iter_mut().zip(&firsts) {
                            f.push(rgb(ev.x_t, off));
                        }
                        frame_t.push(ev.t + 1);
                    }
                    for &w in &wanted {
                        if w < t_total - 1 && ev.t > w && ev.t_next <= w {
                            for (f, &off) in frames.iter_mut().zip(&firsts) {
                                f.push(rgb(ev.x_next, off));
                            }
                            frame_t.push(ev.t_next + 1);
                        }
                    }
                }
                pb.inc(n as u64);
                Ok(if deadline.exceeded() { Control::Stop } else { Control::Continue })
            };
            let outcome = diffusion::sample(noise, schedule, &cfg, &labels, [3, size, size], &mut observer)?;
            // Only a batch that reached every frame gives rows and the column labels: a batch stopped at the
            // budget has fewer frames, and its labels would no longer match the finished rows.
            if !firsts.is_empty() && frame_t.len() == PROCESS_T.len() {
                process_rows.extend(frames);
                process_t = frame_t;
            }
            match outcome {
                SampleOutcome::Finished(x) => {
                    for (i, img) in x.chunks(chw).enumerate() {
                        let (d, k) = ((g0 + i) / per_class, (g0 + i) % per_class);
                        let rgb = pictures::chw_to_rgb(img, size as u32, size as u32, diffusion::to_u8);
                        generated.push((format!("{d}_{:03}.png", k + 1), d as u8, rgb));
                    }
                }
                SampleOutcome::Stopped { steps_done, .. } if pace_replan.is_some() => {
                    let (measured_call, better) = pace_replan.unwrap();
                    replans.push(serde_json::json!({
                        "after_steps_of_first_batch": steps_done,
                        "after_batch_seconds": t_batch.elapsed().as_secs_f64(),
                        "steps_before": steps,
                        "steps_after": better,
                        "why": "the first batch's pace said the run would overrun the budget",
                        "warmup_seconds_per_call": per_call.as_secs_f64(),
                        "measured_seconds_per_call": measured_call.as_secs_f64(),
                    }));
                    steps = better;
                    continue 'attempt;
                }
                SampleOutcome::Stopped { steps_done, .. } => {
                    let (d0, d1) = (g0 / per_class, (g1 - 1) / per_class);
                    let digits = if d0 == d1 { format!("digit {d0}") } else { format!("digits {d0}-{d1}") };
                    stop_note = Some(format!(
                        "stopped at the {:.0} s budget during {digits} after {steps_done} of {} steps; {} of {total_images} images were finished",
                        deadline.budget().as_secs_f64(),
                        visited.len(),
                        generated.len()
                    ));
                    break;
                }
            }
            batch_no += 1;
            if auto && batch_no == 1 && n_batches > 1 && replans.is_empty() {
                let per_batch = t_batch.elapsed();
                let left_now = deadline.remaining();
                let rest = per_batch.mul_f64((n_batches - 1) as f64);
                let measured_call = per_batch / visited.len() as u32;
                let better = fitting(measured_call, left_now.mul_f64(AIM));
                let overrun = rest > left_now.mul_f64(REPLAN_OVER);
                let unused = rest < left_now.mul_f64(REPLAN_UNDER) && better > steps + steps / 10;
                if (overrun || unused) && better >= 1 && better != steps {
                    replans.push(serde_json::json!({
                        "after_batch_seconds": per_batch.as_secs_f64(),
                        "steps_before": steps,
                        "steps_after": better,
                        "why": if overrun { "the rest would overrun the budget" } else { "the rest would leave much of the budget unused" },
                        "warmup_seconds_per_call": per_call.as_secs_f64(),
                        "measured_seconds_per_call": measured_call.as_secs_f64(),
                    }));
                    steps = better;
                    continue 'attempt;
                }
            }
        }
        break Generated {
            images: generated,
            process_rows,
            process_t,
            visited,
            stop_note,
            seconds: t_gen.elapsed().as_secs_f64(),
            replans: vec![],
        };
    };
    pb.finish_and_clear();
    Ok(Generated { replans, ..generated })
}
