//! The integrity checks' glue for the graders: memorisation of training images (`grade gan`,
//! `grade ddpm`), reported beside the course's metrics without changing them. A crossed threshold
//! adds a MiFID-style metric, an `integrity` verdict line to the report and a closest-pairs picture;
//! the course verdict (status, exit code) stays the baselines' (docs/batch.md, RESULTS.md).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use image::RgbImage;

use crate::metrics::inception::{fid_image_files, InceptionNet};
use crate::metrics::memorisation::{self, Memorisation, TrainFeatures};
use crate::report::{OutputDir, Report};

/// Where the training images come from: `--train PATH` (a folder or a feature file), `--train off`,
/// else the spec's `[data] train`.
pub fn train_source(flag: &Option<PathBuf>, spec: &crate::spec::GraderSpec) -> Option<PathBuf> {
    match flag {
        Some(p) if p.as_os_str() == "off" => None,
        Some(p) => Some(p.clone()),
        // From the current folder, as `grade gan`'s reference faces (a grader run elsewhere, a test in a
        // scratch folder, does not pay for the training set's features).
        None => spec.data.train.as_deref().map(PathBuf::from),
    }
}

/// The cache name of the training faces' Inception features.
pub const FACE_TRAIN: &str = "face-train-inception";

/// Inception features of the training faces in `dir` (or from a feature file), cached under `cache`.
pub fn face_train_features(
    source: &Path,
    inception: &Path,
    net: &mut InceptionNet,
    cache: Option<&Path>,
    quiet: bool,
) -> Result<(TrainFeatures, bool)> {
    memorisation::train_features(
        source,
        FACE_TRAIN,
        |d| Ok(fid_image_files(d)?.iter().map(|p| p.file_name().unwrap_or_default().to_string_lossy().to_string()).collect()),
        inception,
        cache,
        |d, _| {
            if !quiet {
                eprintln!("computing the training faces' Inception features once ({}; cached for later runs)", d.display());
            }
            let (f, _) = super::gan::folder_features(d, net, quiet)?;
            Ok((f, crate::nn::inception::FEATURES))
        },
    )
}

/// Memorisation of the generated faces (features `gen`, images `images`) against the training faces.
/// Writes `memorisation.png` (closest pairs) and records everything in the report; `None` (with a
/// note) when there are no training faces to compare with.
#[allow(clippy::too_many_arguments)]
pub fn gan_memorisation(
    source: Option<&Path>,
    inception: &Path,
    net: &mut InceptionNet,
    gen: &[f32],
    images: &[RgbImage],
    out: &OutputDir,
    quiet: bool,
    report: &mut Report,
) -> Result<Option<(Memorisation, serde_json::Value)>> {
    let Some(source) = source else {
        report.notes.push("memorisation not checked: no training faces (--train off, or no [data] train in the grader spec)".into());
        return Ok(None);
    };
    if !source.exists() {
        report.notes.push(format!(
            "memorisation not checked: training faces {} not found (pass --train DIR, or --train off to silence this)",
            source.display()
        ));
        return Ok(None);
    }
    let t0 = Instant::now();
    let cache = memorisation::cache_dir();
    let (train, cached) = face_train_features(source, inception, net, cache.as_deref(), quiet)?;
    report.timings.insert("memorisation_train_features".into(), t0.elapsed().as_secs_f64());
    let t1 = Instant::now();
    let m = memorisation::measure(gen, &train.features, train.dim, memorisation::FACES)?;
    record(report, &m, &train, out, images, "face", 1, |i| format!("images/{i:04}.png"))?;
    report.timings.insert("memorisation".into(), t1.elapsed().as_secs_f64());
    report.inputs.insert(
        "train".into(),
        format!("{} ({} faces{})", train.dir.display(), train.rows(), if cached { ", cached features" } else { "" }),
    );
    let details = details(&m, &train, |i| format!("images/{i:04}.png"));
    Ok(Some((m, details)))
}

/// Counts, picture, notes and the verdict line of a memorisation result.
#[allow(clippy::too_many_arguments)]
pub fn record(
    report: &mut Report,
    m: &Memorisation,
    train: &TrainFeatures,
    out: &OutputDir,
    images: &[RgbImage],
    what: &str,
    scale: u32,
    name: impl Fn(usize) -> String,
) -> Result<()> {
    report.counts.insert("memorisation_train_images".into(), train.rows() as u64);
    report.counts.insert("memorised_images".into(), m.copies as u64);
    if !images.is_empty() {
        let pic = memorisation::pairs_picture(m, images, train, 16, scale)?;
        out.write("memorisation.png", &crate::pictures::png_bytes(&pic)?)?;
    }
    let closest = m.nearest.iter().enumerate().min_by(|a, b| a.1.distance.total_cmp(&b.1.distance));
    if let Some((i, n)) = closest {
        report.notes.push(format!(
            "memorisation: nearest training {what} per generated image (1 - |cos|): mean d = {:.4}, closest {} ~ {} at {:.4}; {} of {} within {} (memorisation.png: the 16 closest pairs, generated left, distance x1000 above)",
            m.d,
            name(i),
            train.files[n.index],
            n.distance,
            m.copies,
            m.nearest.len(),
            m.thresholds.per_image
        ));
    }
    if let Some(line) = m.verdict_line(what) {
        report.integrity.push(line);
    }
    Ok(())
}

pub fn details(m: &Memorisation, train: &TrainFeatures, name: impl Fn(usize) -> String) -> serde_json::Value {
    serde_json::json!({
        "d": m.d,
        "d_reverse_torchmetrics": m.d_reverse,
        "min_distance": m.min_distance,
        "copies": m.copies,
        "copied_fraction": m.copied_fraction,
        "thresholds": m.thresholds,
        "flagged": m.flagged,
        "train": train.dir.display().to_string(),
        "train_images": train.rows(),
        "closest_pairs": memorisation::closest_pairs_json(m, train, 16, name),
    })
}

/// The memorisation metrics (no baselines: they never change the course verdict on their own).
pub fn add_metrics(report: &mut Report, m: &Memorisation, fid: Option<f64>) {
    if let Some(f) = fid {
        report.metric("mifid", Some(m.mifid(f)));
    }
    report.metric("memorisation_d", Some(m.d));
    report.metric("memorised_fraction", Some(m.copied_fraction));
}

/// The cache name of the training digits' judge features.
pub const DIGIT_TRAIN: &str = "digit-train-judge";

/// Judge-penultimate features of the training digits (`dir` with data/ and train.csv, or a feature file).
pub fn digit_train_features(
    source: &Path,
    judge: &Path,
    rt: &crate::runtime::RuntimeOptions,
    cache: Option<&Path>,
    quiet: bool,
) -> Result<(TrainFeatures, bool)> {
    digit_train_features_if(source, judge, rt, cache, quiet, true)?.context("training features are not cached")
}

fn digit_train_features_if(
    source: &Path,
    judge: &Path,
    rt: &crate::runtime::RuntimeOptions,
    cache: Option<&Path>,
    quiet: bool,
    may_compute: bool,
) -> Result<Option<(TrainFeatures, bool)>> {
    memorisation::train_features_if(
        source,
        DIGIT_TRAIN,
        |d| {
            let rows = crate::data::labels::read_label_csv(&d.join("train.csv"), 10)?;
            Ok(rows.iter().map(|r| format!("data/{}", r.image)).collect())
        },
        judge,
        cache,
        may_compute,
        |d, names| {
            use rayon::prelude::*;
            if !quiet {
                eprintln!(
                    "computing the training digits' judge features once ({}, {} images; cached for later runs)",
                    d.display(),
                    names.len()
                );
            }
            let mut net = crate::metrics::digit_features::DigitFeatures::open(judge, rt)?;
            let limits = crate::data::images::ImageLimits::default();
            let mut all = Vec::new();
            let mut dim = 0;
            for chunk in names.chunks(2048) {
                let imgs: Result<Vec<RgbImage>> = chunk
                    .par_iter()
                    .map(|n| crate::data::images::fit_size(crate::data::images::load_rgb(&d.join(n), &limits)?, 28, 28, false, &d.join(n)))
                    .collect();
                let (f, w) = net.features(&imgs?)?;
                dim = w;
                all.extend(f);
            }
            Ok((all, dim))
        },
    )
}

/// The training digits' judge features for [`ddpm_memorisation`]: read from the cache, or computed (and
/// cached) here, before the budget's clock starts, so a cold cache costs the grader's time, never the
/// course's generation budget. `Err` is the note the report carries instead of the check.
pub fn ddpm_prepare(
    spec: &crate::spec::GraderSpec,
    train: &Option<PathBuf>,
    judge: &Path,
    opts: &super::RunOptions,
) -> std::result::Result<(TrainFeatures, bool), String> {
    let Some(source) = train_source(train, spec) else {
        return Err("memorisation not checked: no training digits (--train off, or no [data] train in the grader spec)".into());
    };
    if !source.exists() {
        return Err(format!("memorisation not checked: training digits {} not found", source.display()));
    }
    let cache = memorisation::cache_dir();
    digit_train_features(&source, judge, &opts.runtime, cache.as_deref(), opts.quiet)
        .map_err(|e| format!("memorisation not checked: {e:#}"))
}

/// Memorisation of the generated digits against the training digits (the spec's `[data] train`,
/// MNIST-M train, prepared by [`ddpm_prepare`]), in the judge's penultimate features: metrics,
/// `memorisation.png`, notes, the verdict line. A judge that cannot be cut to its penultimate layer, or
/// no training digits, is a note.
pub fn ddpm_memorisation(
    prepared: std::result::Result<(TrainFeatures, bool), String>,
    judge: &Path,
    generated: &[(String, u8, RgbImage)],
    out: &OutputDir,
    opts: &super::RunOptions,
    report: &mut Report,
) -> Result<()> {
    let (train, cached) = match prepared {
        Ok(t) => t,
        Err(note) => {
            report.notes.push(note);
            return Ok(());
        }
    };
    if generated.is_empty() {
        return Ok(());
    }
    let t0 = Instant::now();
    let mut net = match crate::metrics::digit_features::DigitFeatures::open(judge, &opts.runtime) {
        Ok(n) => n,
        Err(e) => {
            report.notes.push(format!("memorisation not checked: {e:#}"));
            return Ok(());
        }
    };
    let images: Vec<RgbImage> = generated.iter().map(|g| g.2.clone()).collect();
    let (gen, dim) = net.features(&images)?;
    anyhow::ensure!(dim == train.dim, "judge features of width {dim} but the training features have {}", train.dim);
    let m = memorisation::measure(&gen, &train.features, dim, memorisation::DIGITS)?;
    let name = |i: usize| format!("images/{}", generated[i].0);
    record(report, &m, &train, out, &images, "digit", 2, name)?;
    report.timings.insert("memorisation".into(), t0.elapsed().as_secs_f64());
    report.inputs.insert(
        "train".into(),
        format!("{} ({} digits{})", train.dir.display(), train.rows(), if cached { ", cached features" } else { "" }),
    );
    add_metrics(report, &m, None);
    let d = details(&m, &train, name);
    if let serde_json::Value::Object(o) = &mut report.details {
        o.insert("memorisation".into(), d);
    }
    Ok(())
}
