//! `grade ddpm`: sample 100 digits per class from a noise model within the time budget, save them as
//! the course names them (`0_001.png` ... `9_100.png`), and score them with the digit classifier.
//!
//! A run in phases: resolve the plan (`plan.rs`, a pure function of flags, spec and model metadata),
//! warm up and fit the steps to the budget, generate (`generate.rs`), then save, score, draw and report
//! here. The noise model behind the contract is `engine.rs`.

mod engine;
mod generate;
mod plan;

pub use engine::NoiseEngine;
use generate::{generate, Generated};
use plan::{fit_steps, ModelMeta, Plan, StepsRequest, AIM};

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use image::RgbImage;

use super::classify::Classifier;
use super::RunOptions;
use crate::budget::Deadline;
use crate::diffusion::{self, Control, SampleConfig, SamplerKind};
use crate::metrics::accuracy::AccuracyCounter;
use crate::pictures;
use crate::report::{OutputDir, Report, Status};
use crate::runtime;
use crate::spec::GraderSpec;

/// The samplers, as the spec and `--sampler` name them.
pub use crate::spec::Sampler as SamplerArg;

/// `grade ddpm`'s own flags (the runtime and output ones are in [`RunOptions`]).
#[derive(clap::Args, Debug, Clone)]
pub struct DdpmArgs {
    /// The noise model (default: the bundled seed-width UNet, models/ddpm-unet-w64.onnx), see graders/CONTRACT.md.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The digit classifier that judges the images (default: the bundled judge, models/digit-judge-lenet.onnx).
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// Sampler (default from graders/ddpm.toml: dpm-solver, DPM-Solver++(2M)); ddpm is dome272's 1000-step ancestral sampler.
    #[arg(long, value_enum)]
    pub sampler: Option<SamplerArg>,
    /// Sampling steps, or `auto`: the most steps that fit about 90% of the budget (measured on the real batch).
    #[arg(long)]
    pub steps: Option<String>,
    /// Classifier-free guidance scale w (eps = uncond + w (cond - uncond)); default from the model.
    #[arg(long)]
    pub guidance: Option<f64>,
    /// DDIM eta (0 = deterministic).
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Clip the predicted x0 to [-1, 1] at every step (the default for ddim and dpm-solver).
    #[arg(long, conflicts_with = "no_clip")]
    pub clip: bool,
    /// Do not clip the predicted x0 (the default for ddpm, as dome272 samples).
    #[arg(long)]
    pub no_clip: bool,
    /// Seed of the initial noise.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Start even if the run is predicted to overrun the budget; stop at the budget with a partial report.
    #[arg(long)]
    pub keep_going: bool,
    /// Real digits for the judge FID: an MNIST-M folder (data/*.png, train.csv, val.csv), or `off`; default
    /// from graders/ddpm.toml (data/hw2_data/digits/mnistm), skipped with a note when absent.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Training digits for the memorisation check (an MNIST-M folder, or a feature file a batch cached);
    /// `off` skips it (default from graders/ddpm.toml: data/hw2_data/digits/mnistm, skipped with a note
    /// when absent).
    #[arg(long)]
    pub train: Option<PathBuf>,
}

impl DdpmArgs {
    /// `--clip` / `--no-clip`; `None` takes the grader's default (on for DDIM and DPM-Solver, off for
    /// DDPM, whose dome272 form never clips).
    pub fn clip_choice(&self) -> Option<bool> {
        match (self.clip, self.no_clip) {
            (_, true) => Some(false),
            (true, false) => Some(true),
            (false, false) => None,
        }
    }
}

/// The timesteps shown in the reverse-process figure (1-based, as in the seed report), and the
/// 0-based sampler states they map to (t = 1000 is the starting noise, t = 1 the final image).
pub(super) const PROCESS_T: [usize; 8] = [1000, 800, 600, 400, 200, 100, 50, 1];

pub fn run(args: &DdpmArgs, opts: &RunOptions) -> Result<Report> {
    // Resolve: the spec, the models, the real digits the quality and integrity checks need (read before
    // the budget's clock starts), then the plan from the flags, the spec and the model's metadata.
    let spec = GraderSpec::load("ddpm", opts.spec.as_deref())?;
    let per_class = spec.data_int("images_per_class", spec.data.images_per_class)?;
    let (model_path, _) = super::given_or_bundled(&args.model, &spec, "ddpm.onnx")?;
    let clf_path = match &args.classifier {
        Some(c) => c.clone(),
        None => super::rel_or_root(spec.data_str("judge", &spec.data.judge)?),
    };
    let quality = super::ddpm_quality::prepare(&spec, args.reference.as_deref(), &clf_path, per_class, opts)?;
    let memorisation_train = super::integrity::ddpm_prepare(&spec, &args.train, &clf_path, opts);
    let deadline = Deadline::start(opts.budget.unwrap_or(spec.budget()));
    let load_stop = opts.arm_load_stop(deadline, &spec);
    let on_gpu = opts.runtime.device == runtime::Device::Cuda;
    let (mut noise, schedule) = NoiseEngine::open(&model_path, opts)?;
    let meta =
        ModelMeta { guidance_scale: noise.contract().meta_f64("guidance_scale"), null_label: noise.contract().meta_i64("null_label") };
    let plan = Plan::resolve(args, &spec, on_gpu, opts.batch, meta)?;
    noise.call_rows = plan.call_rows;
    let (classes, size, kind, guidance, null_label, clip, seed, batch) =
        (plan.classes, plan.size, plan.kind, plan.guidance, plan.null_label, plan.clip, plan.seed, plan.batch);
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
    let total_images = plan.total_images();
    let n_batches = plan.chunks.len();
    // Warm-up on the real batch shape (guidance doubles it): one call builds the runtime's plan, then
    // several timed calls give the per-call cost the whole run is planned with.
    let per_call = {
        let n = plan.chunks.first().map(|&(a, b)| b - a).unwrap_or(1);
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
    let auto = plan.auto();
    let steps = match plan.steps {
        StepsRequest::Full => t_total - 1,
        StepsRequest::Auto => fitting(per_call, usable),
        StepsRequest::Fixed(n) => n,
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

    // Generate. With --steps auto the first batch re-checks the estimate (generate.rs).
    let images_dir = out.subdir("images")?;
    let g = generate(&mut noise, &schedule, &plan, deadline, per_call, steps, opts.quiet)?;

    // Save, score, draw and report.
    if let Some(n) = &g.stop_note {
        report.notes.push(n.clone());
    }
    let Generated { images: generated, process_rows, process_t, visited, stop_note, seconds: gen_s, replans } = g;
    let stopped = stop_note.is_some();
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
