//! The plan of a `grade ddpm` run, resolved before anything is sampled: a pure function of the flags,
//! the grader spec, the device and the model's metadata (sampler, clipping, steps, seed, batches,
//! guidance), and the step-count arithmetic `--steps auto` plans and re-plans with.

use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use super::{DdpmArgs, SamplerArg};
use crate::diffusion::SamplerKind;
use crate::spec::GraderSpec;

/// What the model's metadata says about guidance (read from its contract; errors kept for when needed).
pub struct ModelMeta {
    pub guidance_scale: Result<f64>,
    pub null_label: Result<i64>,
}

/// The step count asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepsRequest {
    /// `--steps auto`: the most that fit the budget, measured on the real batch.
    Auto,
    Fixed(usize),
    /// Every step of the schedule (dome272's DDPM).
    Full,
}

/// A resolved run: everything the sampling needs but the measured speed.
#[derive(Debug, Clone)]
pub struct Plan {
    pub per_class: usize,
    pub classes: usize,
    /// Image side (the images are 3 x size x size).
    pub size: usize,
    pub kind: SamplerKind,
    pub clip: bool,
    pub steps: StepsRequest,
    pub seed: u64,
    /// Images sampled together.
    pub batch: usize,
    /// Rows per noise-model call.
    pub call_rows: usize,
    pub guidance: f64,
    pub null_label: i64,
    /// Sampling batches as [first, end) ranges of image numbers (digit = number / per_class).
    pub chunks: Vec<(usize, usize)>,
}

impl Plan {
    /// The plan from the flags (`args`, `batch_flag`: `--batch`, 0 when absent), the spec's defaults,
    /// the device and the model's metadata.
    pub fn resolve(args: &DdpmArgs, spec: &GraderSpec, on_gpu: bool, batch_flag: usize, meta: ModelMeta) -> Result<Plan> {
        let per_class = spec.data_int("images_per_class", spec.data.images_per_class)?;
        let classes = spec.data_int("num_classes", spec.data.num_classes)?;
        let size = spec.data_int("image_size", spec.data.image_size)?;
        let s = &spec.sampling;
        let sampler = args.sampler.or(s.sampler).unwrap_or(SamplerArg::DpmSolver);
        let clip = args.clip_choice().unwrap_or(sampler != SamplerArg::Ddpm && s.clip_x0.unwrap_or(true));
        let steps_arg = args.steps.clone().unwrap_or_else(|| s.steps.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "auto".into()));
        let steps = match (sampler, steps_arg.as_str()) {
            (SamplerArg::Ddpm, _) => StepsRequest::Full,
            (_, "auto") => StepsRequest::Auto,
            (_, n) => StepsRequest::Fixed(n.parse().map_err(|_| anyhow!("--steps {n:?}: expected a number or auto"))?),
        };
        let seed = args.seed.unwrap_or(s.seed.unwrap_or(0) as u64);
        // On a GPU the default batch is a whole class (100 digits, 200 rows with guidance): larger calls keep it busy.
        let batch = if batch_flag > 0 {
            batch_flag
        } else if on_gpu {
            s.batch_cuda.map(|v| v.max(1) as usize).unwrap_or(per_class)
        } else {
            s.batch.unwrap_or(100) as usize
        };
        // The row cap per call is a CPU cache effect (graders/ddpm.toml); on a GPU a batch goes in one call.
        let call_rows = if on_gpu {
            s.call_rows_cuda.map(|v| v.max(1) as usize).unwrap_or(usize::MAX)
        } else {
            s.call_rows.unwrap_or(20).max(1) as usize
        };
        let guidance = match args.guidance {
            Some(g) => g,
            None => meta.guidance_scale?,
        };
        let null_label = if guidance != 1.0 {
            meta.null_label.context("classifier-free guidance needs the model's null label")?
        } else {
            meta.null_label.unwrap_or(-1)
        };
        let kind = match sampler {
            SamplerArg::Ddpm => SamplerKind::Ddpm,
            SamplerArg::Ddim => SamplerKind::Ddim { eta: args.eta },
            SamplerArg::DpmSolver => SamplerKind::DpmSolver2M,
        };
        let chunks = chunks(per_class, classes, batch);
        Ok(Plan { per_class, classes, size, kind, clip, steps, seed, batch, call_rows, guidance, null_label, chunks })
    }

    pub fn total_images(&self) -> usize {
        self.per_class * self.classes
    }

    pub fn auto(&self) -> bool {
        self.steps == StepsRequest::Auto
    }
}

/// Sampling batches as [first, end) ranges of image numbers: within a digit when the batch is at most a
/// digit's images (the CPU default), else spanning digits (a GPU's larger calls: --batch 1000 samples
/// every digit at once).
pub fn chunks(per_class: usize, classes: usize, batch: usize) -> Vec<(usize, usize)> {
    let total_images = per_class * classes;
    if batch <= per_class {
        (0..classes)
            .flat_map(|d| {
                (0..per_class).step_by(batch.max(1)).map(move |f| (d * per_class + f, d * per_class + (f + batch).min(per_class)))
            })
            .collect()
    } else {
        (0..total_images).step_by(batch).map(|g| (g, (g + batch).min(total_images))).collect()
    }
}

/// `--steps auto` plans for this share of the budget left after the warm-up. A sustained run was
/// measured 13% slower per call than its warm-up on an otherwise idle 2-core VM (1.15 s against 1.01 s,
/// 39 steps planned into 791 s took 896 s of the 900 s budget): 0.9 left too little room.
pub(super) const AIM: f64 = 0.85;
/// After the first batch, re-plan when the rest would need more than this share of what is left...
pub(super) const REPLAN_OVER: f64 = 0.92;
/// ...or less than this share (and the measured speed allows at least 10% more steps).
pub(super) const REPLAN_UNDER: f64 = 0.75;

/// Where the first batch of a `--steps auto` run stands part-way through.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pace {
    pub(super) elapsed: Duration,
    pub(super) steps_done: usize,
    pub(super) steps: usize,
    pub(super) n_batches: usize,
    pub(super) max_steps: usize,
}

impl Pace {
    pub(super) fn per_call(&self) -> Duration {
        self.elapsed.div_f64(self.steps_done.max(1) as f64)
    }

    /// The step count to restart with when the measured pace says the run would overrun what is left of
    /// the budget; `None` to carry on (on pace, or no smaller count would help: the deadline then decides).
    pub(super) fn replan(&self, left: Duration) -> Option<usize> {
        let rest = self.per_call().as_secs_f64() * ((self.steps - self.steps_done) + self.steps * (self.n_batches - 1)) as f64;
        if rest <= left.as_secs_f64() * REPLAN_OVER {
            return None;
        }
        let better = fit_steps(self.per_call(), left.mul_f64(AIM), self.n_batches, self.max_steps);
        (1..self.steps).contains(&better).then_some(better)
    }
}

/// The most steps whose calls (`per_call` each, one per batch and step) fit in `usable`.
pub(super) fn fit_steps(per_call: Duration, usable: Duration, n_batches: usize, max_steps: usize) -> usize {
    ((usable.as_secs_f64() / (n_batches as f64 * per_call.as_secs_f64().max(1e-9))) as usize).min(max_steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pace(elapsed_s: f64, steps_done: usize, steps: usize, n_batches: usize) -> Pace {
        Pace { elapsed: Duration::from_secs_f64(elapsed_s), steps_done, steps, n_batches, max_steps: 999 }
    }

    #[test]
    fn a_run_on_pace_carries_on() {
        // 0.01 s a step, 90 of 100 steps left in one batch: 0.9 s of the 2 s left.
        assert_eq!(pace(0.1, 10, 100, 1).replan(Duration::from_secs(2)), None);
    }

    #[test]
    fn a_single_batch_that_runs_slow_restarts_with_the_steps_that_fit() {
        // The CI failure: 475 steps planned into ~7.8 s, the batch ran at 8/7 of the warm-up's speed.
        let per_step = 8.0 / 475.0;
        let p = pace(per_step * 47.0, 47, 475, 1);
        let left = Duration::from_secs_f64(7.8 - per_step * 47.0);
        let better = p.replan(left).expect("the overrun is caught part-way");
        assert!((1..475).contains(&better));
        // The new count fits AIM of what is left at the measured pace.
        assert!(better as f64 * per_step <= left.as_secs_f64() * AIM + 1e-9);
        assert!((better + 1) as f64 * per_step > left.as_secs_f64() * AIM);
    }

    #[test]
    fn later_batches_count_in_the_projection() {
        // On pace for one batch, but ten of them cannot fit.
        let p = pace(0.5, 10, 100, 10);
        assert_eq!(pace(0.5, 10, 100, 1).replan(Duration::from_secs(10)), None);
        let better = p.replan(Duration::from_secs(10)).unwrap();
        assert_eq!(better, (10.0 * AIM / (10.0 * 0.05)) as usize);
    }

    #[test]
    fn no_restart_when_not_even_one_step_fits() {
        assert_eq!(pace(10.0, 10, 100, 1).replan(Duration::from_millis(100)), None);
    }

    fn args(extra: &[&str]) -> DdpmArgs {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: DdpmArgs,
        }
        Cli::parse_from(std::iter::once("ddpm").chain(extra.iter().copied())).args
    }

    fn meta(guidance: Option<f64>, null: Option<i64>) -> ModelMeta {
        ModelMeta {
            guidance_scale: guidance.ok_or_else(|| anyhow!("metadata guidance_scale missing")),
            null_label: null.ok_or_else(|| anyhow!("metadata null_label missing")),
        }
    }

    #[test]
    fn the_default_plan_is_the_specs() {
        let spec = GraderSpec::builtin("ddpm").unwrap();
        let p = Plan::resolve(&args(&[]), &spec, false, 0, meta(Some(3.0), Some(10))).unwrap();
        assert!(matches!(p.kind, SamplerKind::DpmSolver2M));
        assert_eq!((p.clip, p.steps, p.seed), (true, StepsRequest::Auto, 0));
        assert_eq!((p.batch, p.call_rows, p.guidance, p.null_label), (50, 20, 3.0, 10));
        assert_eq!(p.total_images(), 1000);
        // Two batches a digit, in digit order.
        assert_eq!(p.chunks.len(), 20);
        assert_eq!((p.chunks[0], p.chunks[1], p.chunks[19]), ((0, 50), (50, 100), (950, 1000)));
        // A GPU takes a class per batch and sends it in one call.
        let g = Plan::resolve(&args(&[]), &spec, true, 0, meta(Some(3.0), Some(10))).unwrap();
        assert_eq!((g.batch, g.call_rows, g.chunks.len()), (100, usize::MAX, 10));
    }

    #[test]
    fn flags_override_the_spec_and_the_model() {
        let spec = GraderSpec::builtin("ddpm").unwrap();
        let a = args(&["--sampler", "ddim", "--steps", "20", "--no-clip", "--seed", "7", "--guidance", "1", "--eta", "0.5"]);
        let p = Plan::resolve(&a, &spec, false, 1000, meta(None, None)).unwrap();
        assert_eq!((p.clip, p.steps, p.seed), (false, StepsRequest::Fixed(20), 7));
        // Guidance 1 needs no null label; --batch 1000 spans every digit in one batch.
        assert_eq!((p.guidance, p.null_label, p.chunks.clone()), (1.0, -1, vec![(0, 1000)]));
        assert!(matches!(p.kind, SamplerKind::Ddim { eta } if eta == 0.5));
        // dome272's DDPM takes every step and never clips by default, whatever --steps says.
        let d = Plan::resolve(&args(&["--sampler", "ddpm", "--steps", "x"]), &spec, false, 0, meta(Some(3.0), Some(10))).unwrap();
        assert_eq!((d.steps, d.clip), (StepsRequest::Full, false));
        assert!(matches!(d.kind, SamplerKind::Ddpm));
    }

    #[test]
    fn a_plan_that_cannot_be_made_says_why() {
        let spec = GraderSpec::builtin("ddpm").unwrap();
        let e = |a: &[&str], m| format!("{:#}", Plan::resolve(&args(a), &spec, false, 0, m).unwrap_err());
        assert!(e(&["--steps", "many"], meta(Some(3.0), Some(10))).contains("expected a number or auto"));
        assert!(e(&[], meta(None, Some(10))).contains("guidance_scale"));
        assert!(e(&[], meta(Some(3.0), None)).contains("needs the model's null label"));
    }

    #[test]
    fn chunks_cover_every_image_once() {
        for (per_class, classes, batch) in [(100, 10, 50), (100, 10, 30), (12, 10, 1000), (7, 3, 7), (5, 2, 3)] {
            let c = chunks(per_class, classes, batch);
            let covered: Vec<usize> = c.iter().flat_map(|&(a, b)| a..b).collect();
            assert_eq!(covered, (0..per_class * classes).collect::<Vec<_>>(), "{per_class} {classes} {batch}");
            assert!(c.iter().all(|&(a, b)| b > a && b - a <= batch));
            if batch <= per_class {
                assert!(c.iter().all(|&(a, b)| a / per_class == (b - 1) / per_class), "a batch stays within a digit");
            }
        }
    }
}
