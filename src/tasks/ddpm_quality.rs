//! `grade ddpm`'s quality pass: the noise-corrupted share of the digits and the judge-feature FID to
//! real MNIST-M (`metrics::digit_quality`), written into the report, the summary and `noisy.png`.
//! Informational: the course's verdict stays the judge's accuracy, but a run whose digits are buried
//! in noise says so in every report.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::RgbImage;

use super::RunOptions;
use crate::metrics::digit_features::DigitFeatures;
use crate::metrics::digit_quality::{judge_fid, noisy, real_digits, roughness, RealDigits};
use crate::pictures;
use crate::report::{OutputDir, Report};
use crate::spec::GraderSpec;

/// Flagged images shown in `noisy.png`.
const SHOWN: usize = 50;

/// The reference folder: the one given (must exist), else the spec's default (skipped when absent).
fn reference_dir(given: Option<&Path>, spec: &GraderSpec) -> Result<Option<PathBuf>> {
    if let Some(p) = given {
        if p.as_os_str() == "off" {
            return Ok(None);
        }
        if !p.is_dir() {
            bail!("--reference {}: not a folder; pass an MNIST-M folder (data/*.png, train.csv, val.csv)", p.display());
        }
        return Ok(Some(p.to_path_buf()));
    }
    Ok(spec.quality.as_ref().and_then(|q| q.reference.as_deref()).map(super::rel_or_root).filter(|p| p.is_dir()))
}

/// Reference digits per class for the judge FID (MNIST-M val has ~1,120 per class): enough for 64- or
/// 84-d statistics, and quick to load.
const REFERENCE_PER_CLASS: usize = 500;

/// What the quality pass needs, loaded before the budget's clock starts (the course's budget is for
/// generating the digits; reading the reference is the grader's own cost).
pub struct Prepared {
    threshold: f64,
    reference: Result<Reference, String>,
    pub seconds: f64,
}

struct Reference {
    dir: PathBuf,
    val: RealDigits,
    train: RealDigits,
    judge: Result<DigitFeatures, String>,
}

/// Reads the reference digits and opens the judge's feature extractor. `None` when the spec has no
/// `[quality]`. An explicit `--reference` that cannot be read is an error; the spec's default folder
/// missing is a note.
pub fn prepare(spec: &GraderSpec, reference: Option<&Path>, judge: &Path, per_class: usize, opts: &RunOptions) -> Result<Option<Prepared>> {
    let Some(q) = &spec.quality else { return Ok(None) };
    let t0 = std::time::Instant::now();
    let reference = match reference_dir(reference, spec)? {
        None if reference.is_some_and(|p| p.as_os_str() == "off") => Err("judge FID not computed: --reference off".into()),
        None => Err(format!(
            "judge FID not computed: no reference digits ({} not found; pass --reference DIR, an MNIST-M folder)",
            q.reference.as_deref().unwrap_or("no [quality] reference in the spec")
        )),
        Some(dir) => {
            let val = real_digits(&dir, "val", REFERENCE_PER_CLASS).with_context(|| format!("reference digits {}", dir.display()))?;
            let train = real_digits(&dir, "train", per_class).with_context(|| format!("reference digits {}", dir.display()))?;
            // A judge without a final linear layer costs the FID, not the run.
            let judge = DigitFeatures::open(judge, &opts.runtime).map_err(|e| format!("judge FID not computed: {e:#}"));
            Ok(Reference { dir, val, train, judge })
        }
    };
    Ok(Some(Prepared { threshold: q.noise_threshold, reference, seconds: t0.elapsed().as_secs_f64() }))
}

/// Adds `noise_fraction` and `judge_fid` (with their detail) to `report`, and `noisy.png` to `out`.
pub fn assess(prepared: Option<Prepared>, generated: &[(String, u8, RgbImage)], report: &mut Report, out: &OutputDir) -> Result<()> {
    let Some(mut prep) = prepared else { return Ok(()) };
    let threshold = prep.threshold;
    let images: Vec<RgbImage> = generated.iter().map(|g| g.2.clone()).collect();
    let labels: Vec<u8> = generated.iter().map(|g| g.1).collect();
    let flagged = noisy(&images, threshold);
    let fraction = (!images.is_empty()).then(|| flagged.len() as f64 / images.len() as f64);
    report.metric("noise_fraction", fraction);
    report.counts.insert("noise_corrupted_images".into(), flagged.len() as u64);
    let rough: Vec<f64> = images.iter().map(roughness).collect();
    let mean_rough = rough.iter().sum::<f64>() / rough.len().max(1) as f64;
    if !flagged.is_empty() {
        let shown: Vec<RgbImage> = flagged.iter().take(SHOWN).map(|&k| images[k].clone()).collect();
        out.write("noisy.png", &pictures::png_bytes(&pictures::grid(&shown, 10, 2, 2))?)?;
    }
    let mut quality = serde_json::json!({
        "noise_threshold": threshold,
        "noise_fraction": fraction,
        "mean_roughness": mean_rough,
        "noise_corrupted": flagged.iter().take(100).map(|&k| &generated[k].0).collect::<Vec<_>>(),
        "noise_fraction_per_digit": (0..10u8).map(|d| {
            let n = labels.iter().filter(|&&l| l == d).count();
            (n > 0).then(|| flagged.iter().filter(|&&k| labels[k] == d).count() as f64 / n as f64)
        }).collect::<Vec<_>>(),
        "reference_seconds": prep.seconds,
    });

    // The judge FID and the real data's own noise fraction, when real digits are at hand.
    let mut real_fraction = None;
    match &mut prep.reference {
        Err(note) => report.notes.push(note.clone()),
        Ok(r) => {
            let real_noisy = noisy(&r.val.images, threshold).len() as f64 / r.val.images.len().max(1) as f64;
            real_fraction = Some(real_noisy);
            quality["real_noise_fraction"] = serde_json::json!(real_noisy);
            let j = match &mut r.judge {
                Ok(fx) => judge_fid(&images, &labels, fx, &r.val, &r.train, &r.dir).map_err(|e| format!("judge FID not computed: {e:#}")),
                Err(note) => Err(note.clone()),
            };
            match j {
                Ok(j) => {
                    report.metric("judge_fid", j.overall.fid);
                    if let (Some(f), Some(floor)) = (j.overall.fid, j.overall.floor) {
                        report.notes.push(format!(
                            "judge FID {f:.2} ({}-d judge features against {} real val digits; as many real training digits score {floor:.2})",
                            j.feature_dim, j.n_reference
                        ));
                    }
                    quality["judge_fid"] = serde_json::to_value(&j)?;
                }
                Err(note) => report.notes.push(note),
            }
        }
    }
    if let Some(f) = fraction {
        // Far above the real data's: twice its share, and at least 1% of the images.
        let floor = real_fraction.unwrap_or(0.0);
        if f > (2.0 * floor).max(0.01) {
            report.notes.push(format!(
                "{} of {} digits ({:.1}%) are noise-corrupted (roughness above {threshold}){}: the judge's accuracy does not see this; noisy.png shows them",
                flagged.len(),
                images.len(),
                100.0 * f,
                real_fraction.map(|r| format!(", real MNIST-M val {:.2}%", 100.0 * r)).unwrap_or_default()
            ));
        }
    }
    if let serde_json::Value::Object(m) = &mut report.details {
        m.insert("quality".into(), quality);
    }
    Ok(())
}
