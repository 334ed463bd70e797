//! `grade csv`: score an existing prediction file against a label file, the way the course does
//! (accuracy over the label file's images), refusing missing, extra or duplicate rows by name.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{bail, Result};

use super::RunOptions;
use crate::data::labels::read_label_csv;
use crate::metrics::accuracy::AccuracyCounter;
use crate::report::Report;
use crate::spec::GraderSpec;

/// `grade csv`'s own flags (the output ones are in [`RunOptions`]).
#[derive(clap::Args, Debug, Clone)]
pub struct CsvArgs {
    /// The predictions.
    pub predictions: PathBuf,
    /// The true labels (e.g. hw2_data/digits/usps/val.csv).
    #[arg(long)]
    pub labels: PathBuf,
    /// Grader whose baselines apply.
    #[arg(long, default_value = "dann-mnistm-usps")]
    pub grader: String,
}

fn list(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(10).map(String::as_str).collect();
    format!("{}{}", shown.join(", "), if names.len() > 10 { format!(", ... ({} in all)", names.len()) } else { String::new() })
}

pub fn run(args: &CsvArgs, opts: &RunOptions) -> Result<Report> {
    let spec = GraderSpec::load(&args.grader, opts.spec.as_deref())?;
    let labels = read_label_csv(&args.labels, 10)?;
    let preds = read_label_csv(&args.predictions, 10)?;
    let truth: HashMap<&str, u8> = labels.iter().map(|r| (r.image.as_str(), r.label)).collect();
    let predicted: HashMap<&str, u8> = preds.iter().map(|r| (r.image.as_str(), r.label)).collect();
    let missing: Vec<String> = labels.iter().filter(|r| !predicted.contains_key(r.image.as_str())).map(|r| r.image.clone()).collect();
    let extra: Vec<String> = preds.iter().filter(|r| !truth.contains_key(r.image.as_str())).map(|r| r.image.clone()).collect();
    if !missing.is_empty() || !extra.is_empty() {
        let mut msg = format!("{} does not match {}:", args.predictions.display(), args.labels.display());
        if !missing.is_empty() {
            msg.push_str(&format!("\n  missing predictions for {} image(s): {}", missing.len(), list(&missing)));
        }
        if !extra.is_empty() {
            msg.push_str(&format!("\n  predictions for {} image(s) not in the labels: {}", extra.len(), list(&extra)));
        }
        bail!(msg);
    }
    let mut counter = AccuracyCounter::new(10);
    for r in &labels {
        counter.add(r.label, Some(predicted[r.image.as_str()]));
    }
    let acc = counter.finish();
    let mut report = Report::new(&spec);
    report.inputs.insert("predictions".into(), args.predictions.display().to_string());
    report.inputs.insert("labels".into(), args.labels.display().to_string());
    report.accuracy_metric("accuracy", acc.correct, acc.total);
    report.counts.insert("images".into(), acc.total);
    report.counts.insert("correct".into(), acc.correct);
    report.details = serde_json::json!({
        "per_class_accuracy": acc.per_class,
        "per_class_count": acc.per_class_count,
        "confusion": acc.confusion,
    });
    report.settle();
    if opts.out.is_some() {
        let out = opts.out_dir(&spec.name)?;
        report.write_all(&out, &opts.extra)?;
    } else {
        report.write_extra(&opts.extra)?;
    }
    if !opts.quiet {
        println!("{}", report.to_table());
        println!("confusion matrix:\n{}", acc.confusion_table());
    }
    Ok(report)
}
