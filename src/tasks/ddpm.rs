//! `grade ddpm`: sample 100 digits per class from a noise model within the time budget, save them as
//! the course names them (`0_001.png` ... `9_100.png`), and score them with the digit classifier.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use image::RgbImage;

use super::classify::Classifier;
use super::RunOptions;
use crate::budget::Deadline;
use crate::diffusion::{self, Control, NoiseModel, SampleConfig, SampleOutcome, SamplerKind, Schedule};
use crate::metrics::accuracy::AccuracyCounter;
use crate::onnx::{Contract, ModelFile, ModelKind, ModelLimits};
use crate::pictures;
use crate::report::{OutputDir, Report, Status};
use crate::runtime::{self, Engine, Input};
use crate::spec::GraderSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SamplerArg {
    Ddpm,
    Ddim,
    /// DPM-Solver++(2M).
    #[value(name = "dpm-solver", alias = "dpm-solver++", alias = "dpmpp")]
    DpmSolver,
}

pub struct DdpmArgs {
    pub model: Option<PathBuf>,
    pub classifier: Option<PathBuf>,
    pub sampler: Option<SamplerArg>,
    /// A number, or "auto": the largest DDIM step count that fits the budget.
    pub steps: Option<String>,
    pub guidance: Option<f64>,
    pub eta: f64,
    /// Clip x0 to [-1, 1]: `None` takes the grader's default (on for DDIM and DPM-Solver, off for
    /// DDPM, whose dome272 form never clips).
    pub clip: Option<bool>,
    pub seed: Option<u64>,
    /// Start even when the estimate says the run cannot fit; stop at the budget with a partial report.
    pub keep_going: bool,
    pub spec: Option<PathBuf>,
    /// Real digits for the judge FID (`None`: the spec's `[quality] reference`, skipped when absent).
    pub reference: Option<PathBuf>,
    /// Training digits for the memorisation check (`None`: the spec's `[data] train`; `off` skips it).
    pub train: Option<PathBuf>,
}

/// The timesteps shown in the reverse-process figure (1-based, as in the seed report), and the
/// 0-based sampler states they map to (t = 1000 is the starting noise, t = 1 the final image).
const PROCESS_T: [usize; 8] = [1000, 800, 600, 400, 200, 100, 50, 1];

/// `--steps auto` plans for this share of the budget left after the warm-up. A sustained run was
/// measured 13% slower per call than its warm-up on an otherwise idle 2-core VM (1.15 s against 1.01 s,
/// 39 steps planned into 791 s took 896 s of the 900 s budget): 0.9 left too little room.
const AIM: f64 = 0.85;
/// After the first batch, re-plan when the rest would need more than this share of what is left...
const REPLAN_OVER: f64 = 0.92;
/// ...or less than this share (and the measured speed allows at least 10% more steps).
const REPLAN_UNDER: f64 = 0.75;

/// Where the first batch of a `--steps auto` run stands part-way through.
#[derive(Debug, Clone, Copy)]
struct Pace {
    elapsed: Duration,
    steps_done: usize,
    steps: usize,
    n_batches: usize,
    max_steps: usize,
}

impl Pace {
    fn per_call(&self) -> Duration {
        self.elapsed.div_f64(self.steps_done.max(1) as f64)
    }

    /// The step count to restart with when the measured pace says the run would overrun what is left of
    /// the budget; `None` to carry on (on pace, or no smaller count would help: the deadline then decides).
    fn replan(&self, left: Duration) -> Option<usize> {
        let rest = self.per_call().as_secs_f64() * ((self.steps - self.steps_done) + self.steps * (self.n_batches - 1)) as f64;
        if rest <= left.as_secs_f64() * REPLAN_OVER {
            return None;
        }
        let better = fit_steps(self.per_call(), left.mul_f64(AIM), self.n_batches, self.max_steps);
        (1..self.steps).contains(&better).then_some(better)
    }
}

/// The most steps whose calls (`per_call` each, one per batch and step) fit in `usable`.
fn fit_steps(per_call: Duration, usable: Duration, n_batches: usize, max_steps: usize) -> usize {
    ((usable.as_secs_f64() / (n_batches as f64 * per_call.as_secs_f64().max(1e-9))) as usize).min(max_steps)
}

/// A noise model behind the contract, counting evaluations.
pub struct NoiseEngine {
    engine: Box<dyn Engine>,
    contract: Contract,
    name: String,
    pub evals: u64,
    /// Most rows sent to the model in one call (a sampling batch with guidance is split into calls of
    /// this size): the seed UNet's 784-token attention makes large calls memory-bound.
    pub call_rows: usize,
}

impl NoiseEngine {
    pub fn open(path: &Path, opts: &RunOptions) -> Result<(NoiseEngine, Schedule)> {
        let file = ModelFile::open(path, &ModelLimits::default())?;
        let contract = Contract::resolve(&file, ModelKind::Noise, &opts.meta);
        contract.ensure_ok(&file)?;
        let schedule = Schedule::new(
            contract.meta("schedule")?,
            contract.meta_f64("beta_start")?,
            contract.meta_f64("beta_end")?,
            contract.meta_i64("timesteps")?.try_into().map_err(|_| anyhow!("metadata timesteps must be positive"))?,
        )
        .with_context(|| format!("noise schedule of {}", path.display()))?;
        let engine = runtime::open(&file, &opts.runtime)?;
        Ok((NoiseEngine { engine, contract, name: path.display().to_string(), evals: 0, call_rows: usize::MAX }, schedule))
    }

    pub fn engine_info(&self) -> &runtime::EngineInfo {
        self.engine.info()
    }

    pub fn contract(&self) -> &Contract {
        &self.contract
    }
}

impl NoiseModel for NoiseEngine {
    fn predict(&mut self, x: &[f32], shape: [usize; 4], t: &[i64], labels: &[i64]) -> Result<Vec<f32>> {
        let [n, c, h, w] = shape;
        let chw = c * h * w;
        let step = self.contract.fixed_batch.unwrap_or(n.min(self.call_rows)).max(1);
        let mut out = Vec::with_capacity(n * chw);
        let names = &self.contract.inputs;
        for start in (0..n).step_by(step) {
            let end = (start + step).min(n);
            // A model with a fixed batch gets padded calls; padding rows are dropped.
            let b = self.contract.fixed_batch.unwrap_or(end - start);
            let mut xb = x[start * chw..end * chw].to_vec();
            xb.resize(b * chw, 0.0);
            let mut tb = t[start..end].to_vec();
            tb.resize(b, t[start]);
            let mut lb = labels[start..end].to_vec();
            lb.resize(b, labels[start]);
            let res = self.engine.run(
                &[Input::f32(&names[0], &[b, c, h, w], &xb), Input::i64(&names[1], &[b], &tb), Input::i64(&names[2], &[b], &lb)],
                &self.contract.output,
            )?;
            runtime::expect_shape(&res, &[b, c, h, w], &self.name)?;
            out.extend_from_slice(&res.data[..(end - start) * chw]);
        }
        self.evals += n as u64;
        Ok(out)
    }
}

pub fn run(args: &DdpmArgs, opts: &RunOptions) -> Result<Report> {
    let spec = GraderSpec::load("ddpm", args.spec.as_deref())?;
    let per_class = spec.data_int("images_per_class")? as usize;
    let classes = spec.data_int("num_classes")? as usize;
    let size = spec.data_int("image_size")? as usize;
    let s = &spec.sampling;
    let model_path = args.model.clone().unwrap_or_else(|| super::rel_or_root(s.get("model").and_then(|v| v.as_str()).unwrap_or("")));
    let clf_path =
        args.classifier.clone().unwrap_or_else(|| super::rel_or_root(s.get("classifier").and_then(|v| v.as_str()).unwrap_or("")));
    // The quality pass's reference digits are read before the budget's clock starts.
    let quality = super::ddpm_quality::prepare(&spec, args.reference.as_deref(), &clf_path, per_class, opts)?;
    let memorisation_train = super::integrity::ddpm_prepare(&spec, &args.train, &clf_path, opts);
    let deadline = Deadline::start(opts.budget.unwrap_or(spec.budget()));
    let load_stop = opts.arm_load_stop(deadline, &spec);
    let sampler = match args.sampler {
        Some(a) => a,
        None => match s.get("sampler").and_then(|v| v.as_str()).unwrap_or("dpm-solver") {
            "ddpm" => SamplerArg::Ddpm,
            "ddim" => SamplerArg::Ddim,
            "dpm-solver" => SamplerArg::DpmSolver,
            other => anyhow::bail!("grader spec: unknown sampler {other:?} (ddpm, ddim or dpm-solver)"),
        },
    };
    let clip = args.clip.unwrap_or(sampler != SamplerArg::Ddpm && s.get("clip_x0").and_then(|v| v.as_bool()).unwrap_or(true));
    let steps_arg = args.steps.clone().unwrap_or_else(|| s.get("steps").and_then(|v| v.as_str()).unwrap_or("auto").to_string());
    let seed = args.seed.unwrap_or(s.get("seed").and_then(|v| v.as_integer()).unwrap_or(0) as u64);
    let on_gpu = opts.runtime.device == runtime::Device::Cuda;
    // On a GPU the default batch is a whole class (100 digits, 200 rows with guidance): larger calls keep it busy.
    let batch = if opts.batch > 0 {
        opts.batch
    } else if on_gpu {
        s.get("batch_cuda").and_then(|v| v.as_integer()).map(|v| v.max(1) as usize).unwrap_or(per_class)
    } else {
        s.get("batch").and_then(|v| v.as_integer()).unwrap_or(100) as usize
    };

    let (mut noise, schedule) = NoiseEngine::open(&model_path, opts)?;
    // The row cap per call is a CPU cache effect (graders/ddpm.toml); on a GPU a batch goes in one call.
    noise.call_rows = if on_gpu {
        s.get("call_rows_cuda").and_then(|v| v.as_integer()).map(|v| v.max(1) as usize).unwrap_or(usize::MAX)
    } else {
        s.get("call_rows").and_then(|v| v.as_integer()).unwrap_or(20).max(1) as usize
    };
    let guidance = match args.guidance {
        Some(g) => g,
        None => noise.contract().meta_f64("guidance_scale")?,
    };
    let null_label = if guidance != 1.0 {
        noise.contract().meta_i64("null_label").context("classifier-free guidance needs the model's null label")?
    } else {
        noise.contract().meta_i64("null_label").unwrap_or(-1)
    };
    let mut clf = Classifier::open(&clf_path, &Default::default(), &opts.runtime, 256)?;
    let out = opts.out_dir(&spec.name)?;
    let t_total = schedule.len();

    let mut report = Report::new(&spec);
    report.engine = Some(noise.engine_info().clone());
    report.inputs.insert("model".into(), super::model_label(&model_path, args.model.is_none()));
    report.inputs.insert(
        "classifier".into(),
        format!("{} (judge){}", clf_path.display(), if args.classifier.is_none() { " (bundled default)" } else { "" }),
    );
    report.inputs.insert("out".into(), out.root().display().to_string());
    for f in noise.contract().findings.iter().filter(|f| f.level != crate::onnx::contract::Level::Info) {
        report.notes.push(f.message.clone());
    }

    let mut partial = report.clone();
    partial.metric("accuracy", None);
    drop(load_stop);
    let _hard_stop = crate::report::arm_hard_stop(deadline, partial, out.root(), &opts.extra);
    let total_images = per_class * classes;
    // Sampling batches as [first, end) ranges of image numbers (digit = number / per_class): within a digit
    // when the batch is at most a digit's images (the CPU default), else spanning digits (a GPU's larger
    // calls: --batch 1000 samples every digit at once).
    let chunks: Vec<(usize, usize)> = if batch <= per_class {
        (0..classes)
            .flat_map(|d| {
                (0..per_class).step_by(batch.max(1)).map(move |f| (d * per_class + f, d * per_class + (f + batch).min(per_class)))
            })
            .collect()
    } else {
        (0..total_images).step_by(batch).map(|g| (g, (g + batch).min(total_images))).collect()
    };
    let n_batches = chunks.len();
    let chw = 3 * size * size;
    let kind = match sampler {
        SamplerArg::Ddpm => SamplerKind::Ddpm,
        SamplerArg::Ddim => SamplerKind::Ddim { eta: args.eta },
        SamplerArg::DpmSolver => SamplerKind::DpmSolver2M,
    };
    // Warm-up on the real batch shape (guidance doubles it): one call builds the runtime's plan, then
    // several timed calls give the per-call cost the whole run is planned with.
    let per_call = {
        let n = chunks.first().map(|&(a, b)| b - a).unwrap_or(1);
        let labels = vec![0i64; n];
        let cfg =
            SampleConfig { kind: SamplerKind::Ddim { eta: 0.0 }, steps: 1, guidance, null_label, clip_x0: clip, seed, first_image: 0 };
        let mut quiet = |_: diffusion::StepEvent<'_>| -> Result<Control> { Ok(Control::Continue) };
        diffusion::sample(&mut noise, &schedule, &cfg, &labels, [3, size, size], &mut quiet)?;
        const TIMED: usize = 3;
        let t0 = Instant::now();
        diffusion::sample(&mut noise, &schedule, &SampleConfig { steps: TIMED, ..cfg }, &labels, [3, size, size], &mut quiet)?;
        noise.evals = 0;
        t0.elapsed() / TIMED as u32
    };
    let left = deadline.remaining();
    let predict = |per_call: Duration, steps: usize| per_call.mul_f64((n_batches * steps) as f64);
    // Aim at 85% of what is left: the rest covers saving, scoring and a slower stretch.
    let usable = left.mul_f64(AIM);
    let fitting = |per_call: Duration, usable: Duration| fit_steps(per_call, usable, n_batches, t_total - 1);
    let auto = steps_arg == "auto" && sampler != SamplerArg::Ddpm;
    let mut steps = match (sampler, steps_arg.as_str()) {
        (SamplerArg::Ddpm, _) => t_total - 1,
        (_, "auto") => fitting(per_call, usable),
        (_, n) => n.parse().map_err(|_| anyhow!("--steps {n:?}: expected a number or auto"))?,
    };
    let sampler_name = kind.label();
    if auto && steps == 0 {
        return fail_fast(report, &out, opts, format!(
            "not even one {sampler_name} step fits: one step for {total_images} images takes ~{:.1} s, {:.1} s are left of the {:.0} s budget. Use a faster backend (--backend ort) or a larger --budget",
            predict(per_call, 1).as_secs_f64(), left.as_secs_f64(), deadline.budget().as_secs_f64()));
    }
    if !args.keep_going && !auto {
        let need = predict(per_call, steps);
        if need > usable {
            return fail_fast(report, &out, opts, format!(
                "{sampler_name} with {steps} steps would take ~{:.0} s for {total_images} images ({:.3} s per call on a batch of {batch}), but the budget leaves {:.0} s. \
                 Use --sampler dpm-solver --steps {} (the most that fits), --steps auto, a faster backend, or a larger --budget",
                need.as_secs_f64(), per_call.as_secs_f64(), left.as_secs_f64(), fitting(per_call, usable).max(1)));
        }
    }
    let first_prediction = predict(per_call, steps).as_secs_f64();

    // Generation. With --steps auto the first batch re-checks the estimate: if the rest would overrun
    // the budget, or leave much of it unused, sampling restarts once with the step count the measured
    // speed allows, so every digit still gets the same steps and the overrun is at most one batch.
    let images_dir = out.subdir("images")?;
    let wanted: Vec<usize> = PROCESS_T.iter().map(|t| t - 1).collect();
    let pb = crate::progress::bar(0, "sampling");
    if opts.quiet {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut replans: Vec<serde_json::Value> = vec![];
    let (generated, process_rows, process_t, visited, stopped, gen_s) = 'attempt: loop {
        let visited = diffusion::timesteps(kind, steps, t_total)?;
        pb.set_length((total_images * visited.len()) as u64);
        pb.set_position(0);
        pb.set_message(format!("{} x {} steps", kind.label(), visited.len()));
        let mut process_rows: Vec<Vec<RgbImage>> = vec![];
        let mut process_t: Vec<usize> = vec![];
        let mut generated: Vec<(String, u8, RgbImage)> = Vec::with_capacity(total_images);
        let t_gen = Instant::now();
        let mut stopped = false;
        let mut batch_no = 0;
        for &(g0, g1) in &chunks {
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
            let outcome = diffusion::sample(&mut noise, &schedule, &cfg, &labels, [3, size, size], &mut observer)?;
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
                    stopped = true;
                    let (d0, d1) = (g0 / per_class, (g1 - 1) / per_class);
                    let digits = if d0 == d1 { format!("digit {d0}") } else { format!("digits {d0}-{d1}") };
                    report.notes.push(format!(
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
        break (generated, process_rows, process_t, visited, stopped, t_gen.elapsed().as_secs_f64());
    };
    pb.finish_and_clear();
    let predicted = predict(per_call, visited.len()).as_secs_f64();
    report.details = serde_json::json!({
        "sampler": kind.label(),
        "steps": visited.len(),
        "steps_auto": auto,
        "clip_x0": clip,
        "guidance": guidance,
        "null_label": null_label,
        "seed": seed,
        "timesteps_first_last": [visited.first(), visited.last()],
        "warmup_seconds_per_call": per_call.as_secs_f64(),
        "predicted_seconds": predicted,
        "first_predicted_seconds": first_prediction,
        "generate_seconds": gen_s,
        "replans": replans,
    });
    if auto {
        report.notes.push(format!(
            "--steps auto: {} steps were predicted to take {predicted:.0} s of generation (warm-up {:.3} s per call){}; they took {gen_s:.0} s",
            visited.len(),
            per_call.as_secs_f64(),
            if replans.is_empty() { String::new() } else { format!(", after a re-plan from {} steps on the first batch's timing", replans[0]["steps_before"]) }
        ));
    }
    report.inputs.insert(
        "sampler".into(),
        format!(
            "{} with {} steps{}, x0 clipping {}, guidance {guidance}, seed {seed}",
            kind.label(),
            visited.len(),
            if auto { " (auto)" } else { "" },
            if clip { "on" } else { "off" }
        ),
    );
    let evals = noise.evals;

    // Save PNGs (parallel: PNG encoding is the slow part).
    let t_save = Instant::now();
    {
        use rayon::prelude::*;
        generated.par_iter().try_for_each(|(name, _, img)| -> Result<()> {
            crate::report::write_atomic(&images_dir.join(name), &pictures::png_bytes(img)?)
        })?;
    }
    let save_s = t_save.elapsed().as_secs_f64();

    // Score with the classifier: label = first character of the file name.
    let t_score = Instant::now();
    let mut counter = AccuracyCounter::new(10);
    let imgs: Vec<RgbImage> = generated.iter().map(|g| g.2.clone()).collect();
    for (chunk, meta) in imgs.chunks(256).zip(generated.chunks(256)) {
        for (p, (_, d, _)) in clf.predict(chunk)?.into_iter().zip(meta) {
            counter.add(*d, p);
        }
    }
    let score_s = t_score.elapsed().as_secs_f64();
    let acc = counter.finish();

    // Pictures.
    if !generated.is_empty() {
        let per_row = 10.min(per_class);
        let grid_imgs: Vec<RgbImage> =
            (0..classes).flat_map(|d| generated.iter().filter(move |g| g.1 as usize == d).take(per_row).map(|g| g.2.clone())).collect();
        out.write("grid.png", &pictures::png_bytes(&pictures::grid(&grid_imgs, per_row, 2, 2))?)?;
    }
    let process: Vec<RgbImage> = process_rows.into_iter().filter(|r| r.len() == PROCESS_T.len()).flatten().collect();
    if !process.is_empty() {
        // Columns are labelled with the timestep each one really shows (1-based as in the seed report:
        // t=1000 is the starting noise, t=1 the final image); few-step samplers land near, not on, PROCESS_T.
        let labels: Vec<String> = process_t.iter().map(|t| format!("t={t}")).collect();
        out.write("process.png", &pictures::png_bytes(&pictures::grid_with_header(&process, &labels, 2, 2))?)?;
    }

    if stopped {
        report.status = Status::OverBudget;
    }
    report.accuracy_metric("accuracy", acc.correct, acc.total);
    report.counts.insert("images".into(), generated.len() as u64);
    report.counts.insert("images_expected".into(), total_images as u64);
    report.counts.insert("noise_model_evaluations".into(), evals);
    report.counts.insert("invalid_classifier_outputs".into(), acc.invalid);
    report.timings.insert("generate".into(), gen_s);
    report.timings.insert("save".into(), save_s);
    report.timings.insert("score".into(), score_s);
    report.timings.insert("total".into(), deadline.elapsed().as_secs_f64());
    report.timings.insert("images_per_second".into(), generated.len() as f64 / gen_s.max(1e-9));
    report.timings.insert("evaluations_per_second".into(), evals as f64 / gen_s.max(1e-9));
    if let serde_json::Value::Object(m) = &mut report.details {
        m.insert("per_digit_accuracy".into(), serde_json::json!(acc.per_class));
        m.insert("confusion".into(), serde_json::json!(acc.confusion));
    }
    let t_quality = Instant::now();
    super::ddpm_quality::assess(quality, &generated, &mut report, &out)?;
    report.timings.insert("quality".into(), t_quality.elapsed().as_secs_f64());
    // Integrity: memorised training digits (tasks/integrity.rs), beside the accuracy, never changing it.
    super::integrity::ddpm_memorisation(memorisation_train, &clf_path, &generated, &out, opts, &mut report)?;
    report.settle();
    report.write_all(&out, &opts.extra)?;
    if !opts.quiet {
        println!("{}", report.to_table());
        println!(
            "sampler {} with {} steps, guidance {guidance}, seed {seed}: {:.1} images/s, {:.0} noise-model evaluations/s",
            report.details["sampler"].as_str().unwrap_or("?"),
            visited.len(),
            generated.len() as f64 / gen_s.max(1e-9),
            evals as f64 / gen_s.max(1e-9)
        );
        for (d, a) in acc.per_class.iter().enumerate() {
            println!("  digit {d}: {}", a.map(|a| format!("{a:.3}")).unwrap_or_else(|| "-".into()));
        }
        println!("wrote {} (images/, grid.png, process.png, noisy.png if any, report.json, junit.xml, summary.md)", out.root().display());
    }
    Ok(report)
}

/// A run that cannot fit its budget stops before generating, with the partial report written.
fn fail_fast(mut report: Report, out: &OutputDir, opts: &RunOptions, why: String) -> Result<Report> {
    report.status = Status::OverBudget;
    report.notes.push(why.clone());
    report.metric("accuracy", None);
    report.write_all(out, &opts.extra)?;
    if !opts.quiet {
        println!("{}", report.to_table());
    }
    eprintln!("error: {why}");
    Ok(report)
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
}
