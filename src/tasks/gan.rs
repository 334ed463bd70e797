//! `grade gan`: generate 1000 faces from seeded latents within the budget, save them, and score FID
//! and KID against the reference faces (with pytorch-fid's Inception) and the course's face accuracy.
//! Also the folder tools: `grade fid`, `grade fid-stats`, `grade faces`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use image::{Rgb, RgbImage};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use super::RunOptions;
use crate::data::images::ImageLimits;
use crate::metrics::faces;
use crate::metrics::fid::{self, Stats};
use crate::metrics::inception::{fid_image_files, locate_inception, InceptionNet};
use crate::metrics::{kid, npz};
use crate::onnx::{Contract, ModelFile, ModelKind, ModelLimits};
use crate::pictures;
use crate::report::{Report, Status};
use crate::runtime::{self, Engine, Input, RuntimeOptions};
use crate::spec::GraderSpec;

/// `grade gan`'s own flags (the runtime and output ones are in [`RunOptions`]).
#[derive(clap::Args, Debug, Clone)]
pub struct GanArgs {
    /// The generator (latent -> image), see graders/CONTRACT.md (default: the bundled face DCGAN, models/README.md).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Reference faces: a folder, or a .npz from `grade fid-stats` (default from graders/gan.toml).
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// The FID Inception model (default: GRADEKIT_INCEPTION, else the one scripts/install-fid-weights.sh installs; GRADEKIT_INCEPTION=off skips FID).
    #[arg(long)]
    pub inception: Option<PathBuf>,
    /// Seed of the latents.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Training faces for the memorisation check (a folder, or a feature file a batch cached); `off`
    /// skips it (default from graders/gan.toml: data/hw2_data/face/train, skipped with a note when absent).
    #[arg(long)]
    pub train: Option<PathBuf>,
    /// Face detector for face accuracy.
    #[arg(long, value_enum, default_value_t = crate::metrics::faces::DetectorKind::Rustface)]
    pub detector: crate::metrics::faces::DetectorKind,
}

/// The Inception model to use, or an error that says how to install one (`grade fid`, `grade fid-stats`).
pub fn inception_path(flag: &Option<PathBuf>) -> Result<PathBuf> {
    locate_inception(flag)?.map_err(|why| anyhow::anyhow!("FID needs the Inception model: {why}"))
}

/// A generator behind the contract.
pub struct Generator {
    engine: Box<dyn Engine>,
    contract: Contract,
    latent_dim: usize,
    rank4: bool,
    zero_one: bool,
    name: String,
}

impl Generator {
    pub fn open(path: &Path, opts: &RunOptions) -> Result<Generator> {
        let file = ModelFile::open(path, &ModelLimits::default())?;
        let contract = Contract::resolve(&file, ModelKind::Generator, &opts.meta);
        contract.ensure_ok(&file)?;
        let latent_dim = contract.meta_i64("latent_dim")?;
        if !(1..=65536).contains(&latent_dim) {
            bail!("{}: latent_dim {latent_dim} is out of range", path.display());
        }
        let rank4 = !matches!(file.input(&contract.inputs[0]).and_then(|p| p.dims.as_ref()).map(|d| d.len()), Some(2));
        let zero_one = match contract.meta("output_range")?.replace(' ', "").as_str() {
            "-1,1" => false,
            "0,1" => true,
            other => bail!("{}: output_range {other:?} must be -1,1 or 0,1", path.display()),
        };
        let engine = runtime::open(&file, &opts.runtime)?;
        Ok(Generator { engine, contract, latent_dim: latent_dim as usize, rank4, zero_one, name: path.display().to_string() })
    }

    /// The latent of image `index`: its own ChaCha8 stream of the seed, so images do not depend on batching.
    pub fn latent(&self, seed: u64, index: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(index);
        (0..self.latent_dim).map(|_| StandardNormal.sample(&mut rng)).collect()
    }

    /// Generates images `first..first + n` of the seeded sequence.
    pub fn generate(&mut self, seed: u64, first: u64, n: usize) -> Result<(Vec<RgbImage>, usize)> {
        let z: Vec<f32> = (0..n as u64).flat_map(|i| self.latent(seed, first + i)).collect();
        let b = self.contract.fixed_batch.unwrap_or(n);
        let mut images = Vec::with_capacity(n);
        let mut non_finite = 0;
        for start in (0..n).step_by(b.max(1)) {
            let end = (start + b).min(n);
            let mut zb = z[start * self.latent_dim..end * self.latent_dim].to_vec();
            zb.resize(b * self.latent_dim, 0.0);
            let shape: Vec<usize> = if self.rank4 { vec![b, self.latent_dim, 1, 1] } else { vec![b, self.latent_dim] };
            let out = self.engine.run(&[Input::f32(&self.contract.inputs[0], &shape, &zb)], &self.contract.output)?;
            runtime::expect_shape(&out, &[b, 3, 64, 64], &self.name)?;
            let plane = 64 * 64;
            for img in out.data.chunks(3 * plane).take(end - start) {
                non_finite += img.iter().filter(|v| !v.is_finite()).count();
                let zero_one = self.zero_one;
                // As torchvision's save_image: value*255 + 0.5, clamped, truncated.
                let to_u8 = move |v: f32| -> u8 {
                    let v01 = if zero_one { v } else { (v + 1.0) / 2.0 };
                    if v01.is_finite() {
                        (v01 * 255.0 + 0.5).clamp(0.0, 255.0) as u8
                    } else {
                        0
                    }
                };
                images.push(RgbImage::from_fn(64, 64, |x, y| {
                    let p = (y * 64 + x) as usize;
                    Rgb([to_u8(img[p]), to_u8(img[plane + p]), to_u8(img[2 * plane + p])])
                }));
            }
        }
        Ok((images, non_finite))
    }

    pub fn engine_info(&self) -> &runtime::EngineInfo {
        self.engine.info()
    }
}

/// Most bytes (files read plus RGB pixels decoded) held at once while an Inception batch is decoded:
/// a batch of 50 homework images (64x64) is a few hundred KB; 50 big photos are decoded in groups.
const FID_MAX_DECODED_BYTES: u64 = 256 << 20;

/// Inception features of the images in `dir` (decoded like pytorch-fid: converted to RGB).
pub fn folder_features(dir: &Path, net: &mut InceptionNet, quiet: bool) -> Result<(Vec<f32>, usize)> {
    let files = fid_image_files(dir)?;
    let limits = ImageLimits::default();
    let pb = crate::progress::bar(files.len() as u64, "inception");
    if quiet {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut feats = Vec::with_capacity(files.len() * 2048);
    let mut size = None;
    for chunk in files.chunks(net.batch) {
        // Headers first (sizes, one size per folder: pytorch-fid batches images); at most
        // FID_MAX_DECODED_BYTES decoded at once, so a batch of decompression bombs is cut into groups.
        crate::data::images::for_each_rgb_group(chunk, &limits, FID_MAX_DECODED_BYTES, &mut size, |imgs| {
            feats.extend(net.features(imgs)?);
            Ok(())
        })?;
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    Ok((feats, files.len()))
}

/// Reference statistics from a `.npz` (pytorch-fid's `--save-stats` form) or a folder of images; the
/// folder's features come back too (KID needs them).
pub fn reference_stats(reference: &Path, net: &mut InceptionNet, quiet: bool) -> Result<(Stats, Option<(Vec<f32>, usize)>)> {
    if reference.is_file() {
        if reference.extension().and_then(|e| e.to_str()) != Some("npz") {
            bail!(
                "reference {} is a file but not a .npz of statistics (make one with `grade fid-stats DIR -o stats.npz`)",
                reference.display()
            );
        }
        // Statistics cached with their features (as `grade batch` does) still allow KID.
        let feats = npz::read_features_npz(reference)?;
        return Ok((npz::read_stats_npz(reference)?, feats));
    }
    if !reference.is_dir() {
        bail!("reference {} not found: pass a folder of images or a .npz from `grade fid-stats`", reference.display());
    }
    let (f, n) = folder_features(reference, net, quiet)?;
    Ok((fid::stats_from_features(&f, n, 2048)?, Some((f, n))))
}

pub fn run(args: &GanArgs, opts: &RunOptions) -> Result<Report> {
    let spec = GraderSpec::load("gan", opts.spec.as_deref())?;
    let deadline = crate::budget::Deadline::start(opts.budget.unwrap_or(spec.budget()));
    let load_stop = opts.arm_load_stop(deadline, &spec);
    let count = spec.data_int("images", spec.data.images)?;
    let seed = args.seed.unwrap_or(spec.sampling.seed.unwrap_or(0) as u64);
    let batch = if opts.batch > 0 { opts.batch } else { spec.sampling.batch.unwrap_or(100) as usize };
    let reference =
        args.reference.clone().map(Ok).unwrap_or_else(|| spec.data_str("reference", &spec.data.reference).map(PathBuf::from))?;

    // Before generating: a wrong installed model is an error the user should see at once.
    let inception = locate_inception(&args.inception)?;
    let (model, bundled) = super::given_or_bundled(&args.model, &spec, "G.onnx")?;
    let mut gen = Generator::open(&model, opts)?;
    let out = opts.out_dir(&spec.name)?;
    let mut report = Report::new(&spec);
    report.engine = Some(gen.engine_info().clone());
    report.inputs.insert("model".into(), super::model_label(&model, bundled));
    report.inputs.insert("reference".into(), reference.display().to_string());
    report.inputs.insert("out".into(), out.root().display().to_string());
    for f in gen.contract.findings.iter().filter(|f| f.level != crate::onnx::contract::Level::Info) {
        report.notes.push(f.message.clone());
    }

    let mut partial = report.clone();
    partial.metric("fid", None);
    partial.metric("face_accuracy", None);
    drop(load_stop);
    let hard_stop = crate::report::arm_hard_stop(deadline, partial, out.root(), &opts.extra);
    // Generate under the budget (checked between batches).
    let images_dir = out.subdir("images")?;
    let Faces { images, non_finite, seconds: gen_s, stop_note } = generate_faces(&mut gen, count, batch, seed, deadline, opts.quiet)?;
    // The budget covers the student's generation, not the grader's own FID and face detection.
    drop(hard_stop);
    if let Some(n) = stop_note {
        report.status = Status::OverBudget;
        report.notes.push(n);
    }
    if non_finite > 0 {
        report.notes.push(format!("the generator produced {non_finite} NaN/Inf pixel values (saved as 0)"));
    }
    images.par_iter().enumerate().try_for_each(|(i, img)| -> Result<()> {
        crate::report::write_atomic(&images_dir.join(format!("{i:04}.png")), &pictures::png_bytes(img)?)
    })?;
    if !images.is_empty() {
        let k = images.len().min(64);
        out.write("grid.png", &pictures::png_bytes(&pictures::grid(&images[..k], 8, 2, 1))?)?;
    }

    // Score: FID, KID and memorisation on Inception features, then the course's face rule.
    let t_fid = Instant::now();
    let train = super::integrity::train_source(&args.train, &spec);
    let InceptionScores { fid: fid_value, kid: kid_value, fid_interval, memorised } =
        inception_scores(&images, inception, &reference, train.as_deref(), &spec, seed, &out, opts, &mut report)?;
    let fid_s = t_fid.elapsed().as_secs_f64();

    // Face accuracy with the course's rule.
    let t_face = Instant::now();
    // Read back from the saved files, as the course's face_recog.py does.
    let mut det = faces::make_detector(args.detector)?;
    let names: Vec<PathBuf> = (0..images.len()).map(|i| images_dir.join(format!("{i:04}.png"))).collect();
    let face = faces::face_accuracy(&names, det.as_mut(), !opts.quiet);
    let face_s = t_face.elapsed().as_secs_f64();

    report.metric("fid", fid_value);
    if let Some(i) = fid_interval {
        report.set_interval("fid", i);
    }
    report.accuracy_metric("face_accuracy", face.exactly_one as u64, face.loaded as u64);
    report.metric("kid", kid_value);
    if let Some((m, _)) = &memorised {
        super::integrity::add_metrics(&mut report, m, fid_value);
    }
    report.counts.insert("images".into(), images.len() as u64);
    report.counts.insert("faces_exactly_one".into(), face.exactly_one as u64);
    report.counts.insert("faces_zero".into(), face.zero as u64);
    report.counts.insert("faces_multiple".into(), face.multiple as u64);
    report.timings.insert("generate".into(), gen_s);
    report.timings.insert("fid".into(), fid_s);
    report.timings.insert("faces".into(), face_s);
    report.timings.insert("images_per_second".into(), images.len() as f64 / gen_s.max(1e-9));
    report.details = serde_json::json!({ "seed": seed, "face_detector": face.detector });
    if let Some((_, d)) = memorised {
        report.details["memorisation"] = d;
    }
    report.settle();
    report.write_all(&out, &opts.extra)?;
    if !opts.quiet {
        println!("{}", report.to_table());
        println!("wrote {} (images/, grid.png, report.json, junit.xml, summary.md)", out.root().display());
    }
    Ok(report)
}

/// What the generation phase made.
struct Faces {
    images: Vec<RgbImage>,
    /// NaN/Inf pixel values the generator produced (saved as 0).
    non_finite: usize,
    seconds: f64,
    /// Set when the budget stopped the run.
    stop_note: Option<String>,
}

/// Generates `count` faces from the seeded latents in batches, stopping at the deadline.
fn generate_faces(
    gen: &mut Generator,
    count: usize,
    batch: usize,
    seed: u64,
    deadline: crate::budget::Deadline,
    quiet: bool,
) -> Result<Faces> {
    let pb = crate::progress::bar(count as u64, "generating");
    if quiet {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let t_gen = Instant::now();
    let mut images: Vec<RgbImage> = Vec::with_capacity(count);
    let mut non_finite = 0;
    let mut stop_note = None;
    while images.len() < count {
        if deadline.exceeded() {
            stop_note =
                Some(format!("stopped at the {:.0} s budget after {} of {count} images", deadline.budget().as_secs_f64(), images.len()));
            break;
        }
        let n = batch.min(count - images.len());
        let (imgs, bad) = gen.generate(seed, images.len() as u64, n)?;
        non_finite += bad;
        images.extend(imgs);
        pb.inc(n as u64);
    }
    pb.finish_and_clear();
    Ok(Faces { images, non_finite, seconds: t_gen.elapsed().as_secs_f64(), stop_note })
}

/// The Inception-feature scores of the generated faces; `None` where not computed (the report says why).
struct InceptionScores {
    fid: Option<f64>,
    kid: Option<f64>,
    fid_interval: Option<crate::metrics::interval::Interval>,
    memorised: Option<(crate::metrics::memorisation::Memorisation, serde_json::Value)>,
}

/// FID (with its bootstrap interval), KID and memorisation of `images` against the reference and
/// training faces; notes, inputs, counts and timings go into `report`.
#[allow(clippy::too_many_arguments)]
fn inception_scores(
    images: &[RgbImage],
    inception: std::result::Result<PathBuf, String>,
    reference: &Path,
    train: Option<&Path>,
    spec: &GraderSpec,
    seed: u64,
    out: &crate::report::OutputDir,
    opts: &RunOptions,
    report: &mut Report,
) -> Result<InceptionScores> {
    let mut scores = InceptionScores { fid: None, kid: None, fid_interval: None, memorised: None };
    match inception {
        Err(why) => report.notes.push(format!("FID and KID not computed: {why}")),
        Ok(p) if images.is_empty() => report.notes.push(format!("FID not computed: no image was generated ({})", p.display())),
        Ok(p) => {
            report.inputs.insert("inception".into(), p.display().to_string());
            let mut net = InceptionNet::open(&p, &opts.runtime, 50)?;
            let pb = crate::progress::bar(images.len() as u64, "inception");
            if opts.quiet {
                pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            let mut feats = Vec::with_capacity(images.len() * 2048);
            for chunk in images.chunks(net.batch) {
                feats.extend(net.features(chunk)?);
                pb.inc(chunk.len() as u64);
            }
            pb.finish_and_clear();
            let ours = fid::stats_from_features(&feats, images.len(), 2048)?;
            let (theirs, ref_feats) = reference_stats(reference, &mut net, opts.quiet)?;
            let f = fid::frechet_distance(&ours, &theirs)?;
            report.notes.extend(f.warnings.iter().cloned());
            scores.fid = Some(f.value);
            let reps = spec.sampling.fid_bootstrap.unwrap_or(100).max(0) as usize;
            if reps > 0 && images.len() >= 2 {
                let t = Instant::now();
                let b = crate::metrics::fid_bootstrap::fid_bootstrap(&feats, images.len(), 2048, &theirs, reps, seed, 0.95)?;
                report.notes.push(format!(
                    "FID interval: {reps} bootstrap resamples of the generated images; resampled FIDs ran {:.2} higher on average (the sample-size bias), taken out of the interval",
                    b.bias
                ));
                scores.fid_interval = Some(b.interval);
                report.timings.insert("fid_bootstrap".into(), t.elapsed().as_secs_f64());
                report.counts.insert("fid_bootstrap_resamples".into(), reps as u64);
            }
            match ref_feats {
                Some((rf, rn)) => {
                    let k = kid::kid(&feats, images.len(), &rf, rn, 2048, &kid::KidConfig::default())?;
                    report.notes.extend(k.warnings.iter().cloned());
                    scores.kid = Some(k.mean);
                    report.counts.insert("kid_subset_size".into(), k.subset_size as u64);
                }
                None => report.notes.push("KID not computed: it needs the reference images, not only their statistics".into()),
            }
            scores.memorised = super::integrity::gan_memorisation(train, &p, &mut net, &feats, images, out, opts.quiet, report)?;
        }
    }
    Ok(scores)
}

/// `grade fid-stats DIR -o stats.npz`.
pub fn fid_stats(dir: &Path, output: &Path, inception: &Option<PathBuf>, rt: &RuntimeOptions, quiet: bool) -> Result<Stats> {
    let p = inception_path(inception)?;
    let mut net = InceptionNet::open(&p, rt, 50)?;
    let (f, n) = folder_features(dir, &mut net, quiet)?;
    let stats = fid::stats_from_features(&f, n, 2048)?;
    npz::write_stats_npz(output, &stats)?;
    Ok(stats)
}

/// `grade fid A B`: FID (and KID when both are folders), like `python -m pytorch_fid A B`.
pub fn fid_folders(a: &Path, b: &Path, inception: &Option<PathBuf>, rt: &RuntimeOptions, quiet: bool) -> Result<serde_json::Value> {
    let p = inception_path(inception)?;
    let mut net = InceptionNet::open(&p, rt, 50)?;
    let (sa, fa) = reference_stats(a, &mut net, quiet)?;
    let (sb, fb) = reference_stats(b, &mut net, quiet)?;
    let f = fid::frechet_distance(&sa, &sb)?;
    let kid = match (fa, fb) {
        (Some((x, nx)), Some((y, ny))) => Some(kid::kid(&x, nx, &y, ny, 2048, &kid::KidConfig::default())?),
        _ => None,
    };
    Ok(serde_json::json!({
        "fid": f.value,
        "kid": kid.as_ref().map(|k| k.mean),
        "kid_std": kid.as_ref().map(|k| k.std),
        "n_a": sa.n,
        "n_b": sb.n,
        "warnings": f.warnings,
        "backend": net.engine_info().to_string(),
        "inception": p.display().to_string(),
        "a": a.display().to_string(),
        "b": b.display().to_string(),
    }))
}
