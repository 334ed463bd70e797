//! `grade dann`: predict every image of the target split, write the course's CSV, score accuracy.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use rayon::prelude::*;

use super::classify::Classifier;
use super::RunOptions;
use crate::data::images::{fit_size, load_rgb, ImageLimits};
use crate::data::DigitSet;
use crate::metrics::accuracy::AccuracyCounter;
use crate::report::{Report, Status};
use crate::spec::GraderSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Pair {
    #[value(name = "mnistm-svhn")]
    MnistmSvhn,
    #[value(name = "mnistm-usps")]
    MnistmUsps,
}

impl Pair {
    pub fn grader(self) -> &'static str {
        match self {
            Pair::MnistmSvhn => "dann-mnistm-svhn",
            Pair::MnistmUsps => "dann-mnistm-usps",
        }
    }
}

/// `grade dann`'s own flags (the runtime and output ones are in [`RunOptions`]).
#[derive(clap::Args, Debug, Clone)]
pub struct DannArgs {
    /// Source -> target pair.
    #[arg(long, value_enum)]
    pub pair: Pair,
    /// The model (image -> logits), see graders/CONTRACT.md (default: the bundled DANN of the pair, models/README.md).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Target digit folder (data/*.png + train.csv/val.csv); default from the grader spec.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Split to grade (default from the grader spec: val).
    #[arg(long)]
    pub split: Option<String>,
    /// Resize images of another size instead of refusing them.
    #[arg(long)]
    pub resize: bool,
}

pub fn run(args: &DannArgs, opts: &RunOptions) -> Result<Report> {
    let spec = GraderSpec::load(args.pair.grader(), opts.spec.as_deref())?;
    let data_dir = args.data.clone().map(Ok).unwrap_or_else(|| spec.data_str("dir", &spec.data.dir).map(PathBuf::from))?;
    let split = match &args.split {
        Some(s) => s.clone(),
        None => spec.data_str("split", &spec.data.split)?.to_string(),
    };
    let size = spec.data_int("image_size", spec.data.image_size)? as u32;
    let deadline = crate::budget::Deadline::start(opts.budget.unwrap_or(spec.budget()));
    let load_stop = opts.arm_load_stop(deadline, &spec);

    let (model, bundled) = super::given_or_bundled(&args.model, &spec, "MODEL.onnx")?;
    let t0 = Instant::now();
    let set = DigitSet::open(&data_dir, &split)?;
    let mut clf = Classifier::open(&model, &opts.meta, &opts.runtime, if opts.batch == 0 { 256 } else { opts.batch })?;
    let out = opts.out_dir(&spec.name)?;
    let load_s = t0.elapsed().as_secs_f64();

    let mut report = Report::new(&spec);
    report.engine = Some(clf.engine.info().clone());
    report.inputs.insert("model".into(), super::model_label(&model, bundled));
    report.inputs.insert("data".into(), data_dir.display().to_string());
    report.inputs.insert("split".into(), split.clone());
    report.inputs.insert("out".into(), out.root().display().to_string());
    for f in clf.contract.findings.iter().filter(|f| f.level != crate::onnx::contract::Level::Info) {
        report.notes.push(f.message.clone());
    }

    let mut partial = report.clone();
    partial.metric("accuracy", None);
    drop(load_stop);
    let _hard_stop = crate::report::arm_hard_stop(deadline, partial, out.root(), &opts.extra);
    let limits = ImageLimits::default();
    let mut counter = AccuracyCounter::new(clf.classes);
    let mut predictions: Vec<(String, u8)> = Vec::with_capacity(set.rows.len());
    let mut invalid_names = vec![];
    let pb = crate::progress::bar(set.rows.len() as u64, "predicting");
    if opts.quiet {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let t1 = Instant::now();
    let mut decode_s = 0.0;
    // Decoding several batches at once keeps both cores busy while batches stay bounded in memory.
    for rows in set.rows.chunks(clf.batch.max(1)) {
        if deadline.exceeded() {
            report.status = Status::OverBudget;
            report.notes.push(format!(
                "stopped at the {:.0} s budget after {} of {} images; accuracy covers only those",
                deadline.budget().as_secs_f64(),
                predictions.len(),
                set.rows.len()
            ));
            break;
        }
        let td = Instant::now();
        let images: Result<Vec<_>> = rows
            .par_iter()
            .map(|r| {
                let p = set.path(r);
                fit_size(load_rgb(&p, &limits)?, size, size, args.resize, &p)
            })
            .collect();
        let images = images?;
        decode_s += td.elapsed().as_secs_f64();
        let preds = clf.predict(&images)?;
        for (r, p) in rows.iter().zip(preds) {
            counter.add(r.label, p);
            match p {
                Some(p) => predictions.push((r.image.clone(), p)),
                None => {
                    invalid_names.push(r.image.clone());
                    predictions.push((r.image.clone(), u8::MAX));
                }
            }
        }
        pb.inc(rows.len() as u64);
    }
    pb.finish_and_clear();
    let predict_s = t1.elapsed().as_secs_f64();

    // The course's CSV; rows whose logits were not finite carry -1 so they cannot pass for a digit.
    // The csv writer quotes names that need it (a name with a comma must not split the row).
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["image_name", "label"])?;
    for (name, p) in &predictions {
        let label = if *p == u8::MAX { "-1".to_string() } else { p.to_string() };
        w.write_record([name.as_str(), label.as_str()])?;
    }
    let csv = w.into_inner().map_err(|e| anyhow::anyhow!("writing pred.csv: {e}"))?;
    out.write("pred.csv", &csv)?;

    let acc = counter.finish();
    if acc.invalid > 0 {
        report.notes.push(format!(
            "{} image(s) got NaN/Inf logits and count as wrong: {}{}",
            acc.invalid,
            invalid_names.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
            if invalid_names.len() > 5 { ", ..." } else { "" }
        ));
    }
    report.accuracy_metric("accuracy", acc.correct, acc.total);
    report.counts.insert("images".into(), acc.total);
    report.counts.insert("correct".into(), acc.correct);
    report.counts.insert("invalid_outputs".into(), acc.invalid);
    report.counts.insert("images_in_split".into(), set.rows.len() as u64);
    report.timings.insert("load".into(), load_s);
    report.timings.insert("predict".into(), predict_s);
    report.timings.insert("decode".into(), decode_s);
    report.timings.insert("images_per_second".into(), acc.total as f64 / predict_s.max(1e-9));
    report.details = serde_json::json!({
        "per_class_accuracy": acc.per_class,
        "per_class_count": acc.per_class_count,
        "confusion": acc.confusion,
    });
    report.settle();
    report.write_all(&out, &opts.extra)?;
    if !opts.quiet {
        println!("{}", report.to_table());
        println!("per-class accuracy:");
        for (c, a) in acc.per_class.iter().enumerate() {
            println!("  {c}: {} ({} images)", a.map(|a| format!("{a:.4}")).unwrap_or_else(|| "-".into()), acc.per_class_count[c]);
        }
        println!("confusion matrix:\n{}", acc.confusion_table());
        println!("wrote {} (pred.csv, report.json, junit.xml, summary.md)", out.root().display());
    }
    Ok(report)
}
