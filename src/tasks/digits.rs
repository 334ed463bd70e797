//! `grade digits DIR`: score any folder of generated digits the way the course's digit_classifier.py
//! does: every file counts, the label is the first character of its name.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use super::classify::Classifier;
use super::RunOptions;
use crate::data::images::{fit_size, load_rgb, ImageLimits};
use crate::metrics::accuracy::AccuracyCounter;
use crate::report::Report;
use crate::spec::GraderSpec;

/// Checks a folder of generated digits the way the course's digit_classifier.py does: every file
/// counts, the label is the first character of its name.
pub fn digits_folder_labels(dir: &Path) -> Result<Vec<(PathBuf, u8)>> {
    let files = crate::data::images::list_images(dir)?;
    let all: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read folder {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    let not_images: Vec<String> = all
        .iter()
        .filter(|p| !crate::data::images::is_image_name(p))
        .map(|p| p.file_name().unwrap_or_default().to_string_lossy().to_string())
        .collect();
    let mut bad = not_images.iter().map(|n| format!("{n} (not an image file)")).collect::<Vec<_>>();
    let mut out = vec![];
    for f in files {
        let name = f.file_name().unwrap_or_default().to_string_lossy().to_string();
        match name.chars().next().and_then(|c| c.to_digit(10)) {
            Some(d) => out.push((f, d as u8)),
            None => bad.push(format!("{name} (name does not start with a digit)")),
        }
    }
    if !bad.is_empty() {
        bail!(
            "{}: {} file(s) cannot be graded: {}{}",
            dir.display(),
            bad.len(),
            bad.iter().take(10).cloned().collect::<Vec<_>>().join(", "),
            if bad.len() > 10 { ", ..." } else { "" }
        );
    }
    if out.is_empty() {
        bail!("{} holds no images", dir.display());
    }
    Ok(out)
}

/// The bundled digit judge (models/README.md): the course's LeNet trained on MNIST-M by `train
/// classifier`, named once, as `[data] judge` in graders/ddpm.toml.
pub fn default_judge() -> Result<std::path::PathBuf> {
    let spec = GraderSpec::builtin("ddpm")?;
    Ok(super::rel_or_root(spec.data_str("judge", &spec.data.judge)?))
}

pub fn run(dir: &Path, classifier: &Path, bundled: bool, resize: bool, opts: &RunOptions) -> Result<Report> {
    let spec = GraderSpec::load("ddpm", None)?;
    let files = digits_folder_labels(dir)?;
    let mut clf = Classifier::open(classifier, &opts.meta, &opts.runtime, if opts.batch == 0 { 256 } else { opts.batch })?;
    let limits = ImageLimits::default();
    let mut counter = AccuracyCounter::new(10);
    let pb = crate::progress::bar(files.len() as u64, "classifying");
    if opts.quiet {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    for chunk in files.chunks(clf.batch.max(1)) {
        let imgs: Result<Vec<_>> = chunk.par_iter().map(|(p, _)| fit_size(load_rgb(p, &limits)?, 28, 28, resize, p)).collect();
        for (p, (_, d)) in clf.predict(&imgs?)?.into_iter().zip(chunk) {
            counter.add(*d, p);
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let acc = counter.finish();
    let mut report = Report::new(&spec);
    report.engine = Some(clf.engine.info().clone());
    report.inputs.insert("folder".into(), dir.display().to_string());
    report.inputs.insert("classifier".into(), super::model_label(classifier, bundled));
    report.accuracy_metric("accuracy", acc.correct, acc.total);
    report.counts.insert("images".into(), acc.total);
    report.counts.insert("correct".into(), acc.correct);
    report.details = serde_json::json!({ "per_digit_accuracy": acc.per_class, "confusion": acc.confusion });
    report.settle();
    if opts.out.is_some() {
        report.write_all(&opts.out_dir(&spec.name)?, &opts.extra)?;
    } else {
        report.write_extra(&opts.extra)?;
    }
    if !opts.quiet {
        println!("{}", report.to_table());
        println!("confusion matrix:\n{}", acc.confusion_table());
    }
    Ok(report)
}
