//! Copied submissions: a fingerprint per (student, grader) model, computed right after its grading
//! run in its own limited process (`grade fingerprint`, the model is untrusted), and pairs of
//! students compared from those fingerprints alone (no model runs per pair, so a class of 200 is
//! 19,900 small vector comparisons per grader, and `grade merge` finds pairs across shards).
//!
//! A fingerprint holds the model's outputs on fixed probes and a weight signature:
//! - generator: the images of the grader's seeded latents (pixels in [0, 1], 4x4-average-pooled),
//!   less the model's own mean image over the probes (the "average face" every face model shares);
//! - noise model: on fixed noisy synthetic digits at fixed timesteps and labels, the prediction's
//!   error `eps_hat - eps` (2x2-pooled): two good models both predict most of the noise, their errors
//!   are their own; two probes, low and high t;
//! - classifier: logits less their row mean (so logits, log-softmax and shifted logits agree) on the
//!   first 64 images of the grader's val split ("val-images") and on 64 seeded noise images
//!   ("noise-images"), where independently trained models disagree most.
//! - weights: per float tensor (initializers and Constant nodes, at least 16 values) a hash of its
//!   values sorted: survives renaming, reordering, transposition and a new opset, not noise.
//!
//! The distance of two students on a probe is `1 - cos` of the two vectors; a pair's output distance
//! is its largest probe distance (every probe must agree). A pair is listed when that distance is
//! below [`OUTPUT_THRESHOLD`] or at least half of the weights are shared value for value. Thresholds:
//! RESULTS.md ("Copied submissions"). A listing is evidence for a person to look at, never a verdict.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::ClassReport;
use crate::onnx::{ModelFile, ModelLimits};
use crate::tasks::RunOptions;

/// A pair whose every probe distance (1 - cos) is below this is listed. RESULTS.md ("Copied
/// submissions"): re-exports with 1e-4 weight noise measured at most 5.5e-4 (the seed UNet), the
/// closest independent pair 0.26 (a generator wrapping another's weights, listed by its weights
/// instead), independent classifiers at least 0.60; 1e-2 is about the logarithmic middle.
pub const OUTPUT_THRESHOLD: f64 = 1e-2;
/// A pair sharing at least this fraction of weight values (by count) is listed.
pub const WEIGHT_THRESHOLD: f64 = 0.5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FingerprintKind {
    Generator,
    Noise,
    Classifier,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    pub name: String,
    /// How many probe inputs.
    pub items: usize,
    /// f32 little-endian values, base64.
    pub values: String,
}

impl Probe {
    pub fn new(name: &str, items: usize, v: &[f32]) -> Probe {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        Probe { name: name.into(), items, values: base64::engine::general_purpose::STANDARD.encode(bytes) }
    }

    pub fn vector(&self) -> Result<Vec<f32>> {
        let b = base64::engine::general_purpose::STANDARD.decode(&self.values).context("probe values are not base64")?;
        if b.len() % 4 != 0 {
            bail!("probe {}: {} bytes is not a number of f32", self.name, b.len());
        }
        Ok(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightSignature {
    /// Float weight values counted (tensors of at least 16 values).
    pub total: u64,
    /// (values, hash of the sorted values) per tensor, sorted.
    pub tensors: Vec<(u64, String)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub version: u32,
    pub kind: FingerprintKind,
    pub probes: Vec<Probe>,
    pub weights: WeightSignature,
}

/// The weight signature of an ONNX file.
pub fn weight_signature(file: &ModelFile) -> WeightSignature {
    use sha2::{Digest, Sha256};
    use tract_onnx::pb::tensor_proto::DataType;
    let Some(g) = file.proto.graph.as_ref() else { return WeightSignature { total: 0, tensors: vec![] } };
    let consts = g.node.iter().filter(|n| n.op_type == "Constant").flat_map(|n| n.attribute.iter().filter_map(|a| a.t.as_ref()));
    let mut tensors = vec![];
    let mut total = 0u64;
    for t in g.initializer.iter().chain(consts) {
        if t.data_type != DataType::Float as i32 {
            continue;
        }
        let mut v: Vec<f32> = if !t.raw_data.is_empty() {
            t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        } else {
            t.float_data.clone()
        };
        if v.len() < 16 {
            continue;
        }
        v.iter_mut().for_each(|x| {
            if *x == 0.0 {
                *x = 0.0; // -0 and 0 alike
            }
        });
        v.sort_by(|a, b| a.total_cmp(b));
        let mut h = Sha256::new();
        for x in &v {
            h.update(x.to_le_bytes());
        }
        let hex: String = h.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect();
        total += v.len() as u64;
        tensors.push((v.len() as u64, hex));
    }
    tensors.sort();
    WeightSignature { total, tensors }
}

/// Fraction of the larger model's weight values that lie in tensors both models hold value for value.
pub fn weights_shared(a: &WeightSignature, b: &WeightSignature) -> f64 {
    if a.total == 0 || b.total == 0 {
        return 0.0;
    }
    let mut left: BTreeMap<&(u64, String), usize> = BTreeMap::new();
    for t in &a.tensors {
        *left.entry(t).or_default() += 1;
    }
    let mut shared = 0u64;
    for t in &b.tensors {
        if let Some(c) = left.get_mut(t).filter(|c| **c > 0) {
            *c -= 1;
            shared += t.0;
        }
    }
    shared as f64 / a.total.max(b.total) as f64
}

fn pool(x: &[f32], c: usize, h: usize, w: usize, k: usize) -> Vec<f32> {
    let (ph, pw) = (h / k, w / k);
    let mut out = vec![0f32; c * ph * pw];
    for ch in 0..c {
        for y in 0..ph * k {
            for xx in 0..pw * k {
                out[ch * ph * pw + (y / k) * pw + xx / k] += x[ch * h * w + y * w + xx] / (k * k) as f32;
            }
        }
    }
    out
}

/// Probe digits: seeded synthetic colour digits (the fixtures' MNIST-M look), 28x28.
fn probe_digits(n: usize, seed: u64) -> Vec<(RgbImage, u8)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let d = (i % 10) as u8;
            (crate::fixtures::synthetic_digit(d, crate::fixtures::DigitStyle::Colour, &mut rng).to_rgb(), d)
        })
        .collect()
}

/// The fingerprint of `model` (run in the child process `grade fingerprint`). `val` is the grader's
/// val folder for classifiers (digits/*/ with data/ and val.csv), when there is one.
pub fn fingerprint(model: &Path, kind: FingerprintKind, val: Option<&Path>, opts: &RunOptions) -> Result<Fingerprint> {
    let file = ModelFile::open(model, &ModelLimits::default())?;
    let weights = weight_signature(&file);
    drop(file);
    let mut probes = vec![];
    match kind {
        FingerprintKind::Generator => {
            let mut g = crate::tasks::gan::Generator::open(model, opts)?;
            let n = 32;
            let (imgs, _) = g.generate(0, 0, n)?;
            let per = 3 * 16 * 16;
            let mut v = Vec::with_capacity(n * per);
            for img in &imgs {
                let (w, h) = (img.width() as usize, img.height() as usize);
                let mut chw = vec![0f32; 3 * w * h];
                crate::data::images::to_chw(img, &[0.0; 3], &[1.0; 3], &mut chw);
                v.extend(pool(&chw, 3, h, w, w / 16));
            }
            // Less the model's own mean image over the probes.
            for j in 0..per {
                let m = (0..n).map(|i| v[i * per + j]).sum::<f32>() / n as f32;
                (0..n).for_each(|i| v[i * per + j] -= m);
            }
            probes.push(Probe::new("seeded-latents", n, &v));
        }
        FingerprintKind::Noise => {
            let (mut eng, schedule) = crate::tasks::ddpm::NoiseEngine::open(model, opts)?;
            eng.call_rows = 16;
            let t_total = schedule.len();
            let ab = schedule.alpha_bars();
            for (name, fracs, seed) in [("noisy-digits-low-t", [0.02, 0.1], 31u64), ("noisy-digits-high-t", [0.3, 0.6], 32)] {
                let digits = probe_digits(16, seed);
                let mut rng = ChaCha8Rng::seed_from_u64(seed + 100);
                let chw = 3 * 28 * 28;
                let mut x = vec![0f32; 16 * chw];
                let mut eps = vec![0f32; 16 * chw];
                let mut t = vec![0i64; 16];
                let mut labels = vec![0i64; 16];
                for (i, (img, d)) in digits.iter().enumerate() {
                    let ti = ((fracs[i % 2] * t_total as f64) as usize).min(t_total - 1);
                    t[i] = ti as i64;
                    labels[i] = *d as i64;
                    let mut x0 = vec![0f32; chw];
                    crate::data::images::to_chw(img, &[0.5; 3], &[0.5; 3], &mut x0);
                    let (a, s) = (ab[ti].sqrt() as f32, (1.0 - ab[ti]).sqrt() as f32);
                    for k in 0..chw {
                        let e: f32 = StandardNormal.sample(&mut rng);
                        eps[i * chw + k] = e;
                        x[i * chw + k] = a * x0[k] + s * e;
                    }
                }
                use crate::diffusion::sampler::NoiseModel;
                let pred = eng.predict(&x, [16, 3, 28, 28], &t, &labels)?;
                let mut v = vec![];
                for i in 0..16 {
                    let err: Vec<f32> = (0..chw).map(|k| pred[i * chw + k] - eps[i * chw + k]).collect();
                    v.extend(pool(&err, 3, 28, 28, 2));
                }
                probes.push(Probe::new(name, 16, &v));
            }
        }
        FingerprintKind::Classifier => {
            let mut c = crate::tasks::classify::Classifier::open(model, &opts.meta, &opts.runtime, 64)?;
            let mut sets: Vec<(&str, Vec<RgbImage>)> = vec![];
            match val.map(val_images).transpose()? {
                Some(v) if !v.is_empty() => sets.push(("val-images", v)),
                _ => sets.push(("synthetic-digits", probe_digits(64, 41).into_iter().map(|(i, _)| i).collect())),
            }
            let mut rng = ChaCha8Rng::seed_from_u64(42);
            let noise: Vec<RgbImage> = (0..64)
                .map(|_| RgbImage::from_fn(28, 28, |_, _| Rgb([rng.random::<u8>(), rng.random::<u8>(), rng.random::<u8>()])))
                .collect();
            sets.push(("noise-images", noise));
            for (name, imgs) in sets {
                let logits = c.logits(&imgs)?;
                let mut v = vec![];
                for row in &logits {
                    let m = row.iter().sum::<f32>() / row.len() as f32;
                    v.extend(row.iter().map(|x| x - m));
                }
                probes.push(Probe::new(name, imgs.len(), &v));
            }
        }
    }
    for p in &probes {
        if p.vector()?.iter().any(|v| !v.is_finite()) {
            bail!("{}: the model's outputs on probe {} are not finite", model.display(), p.name);
        }
    }
    Ok(Fingerprint { version: 1, kind, probes, weights })
}

/// The first 64 images of a digit folder's val split (data/ + val.csv), 28x28.
fn val_images(dir: &Path) -> Result<Vec<RgbImage>> {
    let csv = dir.join("val.csv");
    if !csv.is_file() {
        return Ok(vec![]);
    }
    let rows = crate::data::labels::read_label_csv(&csv, 10)?;
    let limits = crate::data::images::ImageLimits::default();
    let mut out = vec![];
    for r in rows.iter().take(64) {
        let img = crate::data::images::load_rgb(&dir.join("data").join(&r.image), &limits)?;
        out.push(crate::data::images::fit_size(img, 28, 28, true, &dir.join(&r.image))?);
    }
    Ok(out)
}

/// 1 - cos of two vectors; `None` when both are all zero (nothing to compare), 1 when one is.
pub fn distance(a: &[f32], b: &[f32]) -> Option<f64> {
    if a.len() != b.len() {
        return Some(1.0);
    }
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (*x as f64, *y as f64);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    match (aa > 0.0, bb > 0.0) {
        (false, false) => None,
        (true, true) => Some((1.0 - ab / (aa.sqrt() * bb.sqrt())).max(0.0)),
        _ => Some(1.0),
    }
}

/// One pair of students on one grader.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pair {
    pub grader: String,
    pub a: String,
    pub b: String,
    /// Largest probe distance (1 - cos); None when no probe was comparable.
    pub distance: Option<f64>,
    /// The probe with that largest distance.
    pub probe: String,
    /// Every probe's distance, `name=value` joined by spaces.
    pub probes: String,
    pub weights_shared: f64,
    pub flagged: bool,
}

/// Summary of a grader's pairs that are not listed (the class's unrelated pairs).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassSpread {
    pub pairs: usize,
    pub median: Option<f64>,
    pub min: Option<f64>,
}

/// Every pair of `fps` (student, grader, fingerprint) within each grader.
pub fn pairs(fps: &[(String, String, Fingerprint)]) -> Result<Vec<Pair>> {
    let mut vectors: Vec<Vec<(String, Vec<f32>)>> = vec![];
    for (_, _, f) in fps {
        vectors.push(f.probes.iter().map(|p| Ok((p.name.clone(), p.vector()?))).collect::<Result<_>>()?);
    }
    let mut out = vec![];
    for i in 0..fps.len() {
        for j in i + 1..fps.len() {
            let ((sa, ga, fa), (sb, gb, fb)) = (&fps[i], &fps[j]);
            if ga != gb || sa == sb {
                continue;
            }
            let mut ds = vec![];
            for (name, va) in &vectors[i] {
                if let Some((_, vb)) = vectors[j].iter().find(|(n, _)| n == name) {
                    if let Some(d) = distance(va, vb) {
                        ds.push((name.clone(), d));
                    }
                }
            }
            let worst = ds.iter().max_by(|x, y| x.1.total_cmp(&y.1)).cloned();
            let ws = weights_shared(&fa.weights, &fb.weights);
            let distance = worst.as_ref().map(|w| w.1);
            let flagged = distance.is_some_and(|d| d < OUTPUT_THRESHOLD) || ws >= WEIGHT_THRESHOLD;
            let (x, y) = if sa < sb { (sa, sb) } else { (sb, sa) };
            out.push(Pair {
                grader: ga.clone(),
                a: x.clone(),
                b: y.clone(),
                distance,
                probe: worst.map(|w| w.0).unwrap_or_default(),
                probes: ds.iter().map(|(n, d)| format!("{n}={d:.3e}")).collect::<Vec<_>>().join(" "),
                weights_shared: ws,
                flagged,
            });
        }
    }
    out.sort_by(|p, q| (&p.grader, &p.a, &p.b).cmp(&(&q.grader, &q.a, &q.b)));
    Ok(out)
}

/// The spread of the unlisted pairs' distances per grader.
pub fn spread(pairs: &[Pair]) -> BTreeMap<String, ClassSpread> {
    let mut by: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for p in pairs {
        *count.entry(p.grader.clone()).or_default() += 1;
        let e = by.entry(p.grader.clone()).or_default();
        if !p.flagged {
            if let Some(d) = p.distance {
                e.push(d);
            }
        }
    }
    by.into_iter()
        .map(|(g, mut v)| {
            v.sort_by(|a, b| a.total_cmp(b));
            let median = if v.is_empty() {
                None
            } else {
                Some(if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 })
            };
            let n = count[&g];
            (g, ClassSpread { pairs: n, median, min: v.first().copied() })
        })
        .collect()
}

/// The fingerprint file of a (student, grader) in a batch folder.
pub fn fingerprint_rel(student: &str, grader: &str) -> String {
    format!("students/{student}/{grader}/fingerprint.json")
}

/// Reads every fingerprint of the report's students under `root`.
pub fn load_fingerprints(root: &Path, report: &ClassReport) -> Vec<(String, String, Fingerprint)> {
    let mut v = vec![];
    for s in &report.students {
        for g in &s.graders {
            let p: PathBuf = root.join(fingerprint_rel(&s.id, g.grader.name()));
            if let Ok(bytes) = std::fs::read(&p) {
                if let Ok(f) = serde_json::from_slice::<Fingerprint>(&bytes) {
                    v.push((s.id.clone(), g.grader.name().to_string(), f));
                }
            }
        }
    }
    v
}

fn fmt_d(d: Option<f64>) -> String {
    d.map(|d| format!("{d:.3e}")).unwrap_or_else(|| "-".into())
}

/// Evidence text of a listed pair, as the scoreboard shows it.
pub fn evidence(p: &Pair, spread: &ClassSpread) -> String {
    format!(
        "{}: outputs 1-cos {} (probe {}), weights {:.0}% identical; unrelated pairs of the class: median {}, closest {} ({} pairs)",
        p.grader,
        fmt_d(p.distance),
        if p.probe.is_empty() { "-" } else { &p.probe },
        100.0 * p.weights_shared,
        fmt_d(spread.median),
        fmt_d(spread.min),
        spread.pairs
    )
}

/// Fills each student's `similar_to` and renders `similar-pairs.csv` (listed pairs only, with the
/// evidence) from the fingerprints under `root`.
pub fn annotate(root: &Path, report: &mut ClassReport) -> Result<String> {
    let fps = load_fingerprints(root, report);
    let all = pairs(&fps)?;
    let spreads = spread(&all);
    for s in report.students.iter_mut() {
        s.similar_to.clear();
    }
    let mut w = csv::Writer::from_writer(vec![]);
    w.write_record([
        "grader",
        "student_a",
        "student_b",
        "output_distance",
        "probe",
        "probe_distances",
        "weights_identical",
        "class_pairs",
        "class_median_distance",
        "class_closest_unlisted_distance",
        "evidence",
    ])?;
    for p in all.iter().filter(|p| p.flagged) {
        let sp = &spreads[&p.grader];
        let ev = evidence(p, sp);
        w.write_record([
            p.grader.clone(),
            p.a.clone(),
            p.b.clone(),
            p.distance.map(|d| format!("{d:e}")).unwrap_or_default(),
            p.probe.clone(),
            p.probes.clone(),
            format!("{:.4}", p.weights_shared),
            sp.pairs.to_string(),
            sp.median.map(|d| format!("{d:e}")).unwrap_or_default(),
            sp.min.map(|d| format!("{d:e}")).unwrap_or_default(),
            ev.clone(),
        ])?;
        for (me, other) in [(&p.a, &p.b), (&p.b, &p.a)] {
            if let Some(s) = report.students.iter_mut().find(|s| &s.id == me) {
                s.similar_to.push(format!("{other} ({ev})"));
            }
        }
    }
    Ok(String::from_utf8(w.into_inner().map_err(|e| anyhow::anyhow!("similar-pairs.csv: {e}"))?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(probes: &[(&str, Vec<f32>)], tensors: &[(u64, &str)]) -> Fingerprint {
        Fingerprint {
            version: 1,
            kind: FingerprintKind::Classifier,
            probes: probes.iter().map(|(n, v)| Probe::new(n, 1, v)).collect(),
            weights: WeightSignature {
                total: tensors.iter().map(|t| t.0).sum(),
                tensors: tensors.iter().map(|(n, h)| (*n, h.to_string())).collect(),
            },
        }
    }

    #[test]
    fn pairs_list_copies_by_outputs_or_weights_with_the_class_spread() {
        let base: Vec<f32> = (0..100).map(|i| ((i * 37 % 17) as f32 - 8.0) / 3.0).collect();
        let near: Vec<f32> = base.iter().enumerate().map(|(i, v)| v + 1e-4 * ((i % 3) as f32 - 1.0)).collect();
        let other: Vec<f32> = (0..100).map(|i| ((i * 13 % 11) as f32 - 5.0) / 2.0).collect();
        let third: Vec<f32> = (0..100).map(|i| ((i * 7 % 19) as f32 - 9.0) / 2.0).collect();
        let fps = vec![
            ("amy".to_string(), "g".to_string(), fp(&[("p", base.clone()), ("q", other.clone())], &[(100, "a")])),
            ("bo".to_string(), "g".to_string(), fp(&[("p", near.clone()), ("q", other.clone())], &[(100, "b")])),
            ("cy".to_string(), "g".to_string(), fp(&[("p", other.clone()), ("q", third.clone())], &[(100, "c")])),
            // Same weights as cy, different outputs: listed by the weights.
            ("di".to_string(), "g".to_string(), fp(&[("p", third.clone()), ("q", base.clone())], &[(100, "c")])),
            // Another grader never pairs with g.
            ("amy".to_string(), "h".to_string(), fp(&[("p", base.clone())], &[])),
            ("ed".to_string(), "h".to_string(), fp(&[("p", other.clone())], &[])),
        ];
        let ps = pairs(&fps).unwrap();
        assert_eq!(ps.iter().filter(|p| p.grader == "g").count(), 6);
        assert_eq!(ps.iter().filter(|p| p.grader == "h").count(), 1);
        let get = |a: &str, b: &str| ps.iter().find(|p| p.a == a && p.b == b).unwrap();
        let ab = get("amy", "bo");
        assert!(ab.flagged && ab.distance.unwrap() < 1e-6 && ab.weights_shared == 0.0, "{ab:?}");
        let cd = get("cy", "di");
        assert!(cd.flagged && cd.weights_shared == 1.0 && cd.distance.unwrap() > 0.1, "{cd:?}");
        // One probe alike is not enough: amy and cy share nothing, amy and di agree on nothing.
        assert!(!get("amy", "cy").flagged && !get("amy", "di").flagged);
        let sp = spread(&ps);
        assert_eq!(sp["g"].pairs, 6);
        assert!(sp["g"].median.unwrap() > 0.1 && sp["g"].min.unwrap() > OUTPUT_THRESHOLD, "{:?}", sp["g"]);
        assert!(evidence(ab, &sp["g"]).contains("weights 0% identical"));
    }

    #[test]
    fn weight_sharing_counts_values_and_distance_handles_zeros() {
        let a = WeightSignature { total: 300, tensors: vec![(100, "x".into()), (200, "y".into())] };
        let b = WeightSignature { total: 400, tensors: vec![(200, "y".into()), (200, "z".into())] };
        assert!((weights_shared(&a, &b) - 0.5).abs() < 1e-12);
        assert_eq!(weights_shared(&a, &WeightSignature { total: 0, tensors: vec![] }), 0.0);
        assert_eq!(distance(&[0.0, 0.0], &[0.0, 0.0]), None);
        assert_eq!(distance(&[1.0, 0.0], &[0.0, 0.0]), Some(1.0));
        assert!(distance(&[1.0, 2.0], &[2.0, 4.0]).unwrap() < 1e-12);
        assert!((distance(&[1.0, 0.0], &[0.0, 1.0]).unwrap() - 1.0).abs() < 1e-12);
    }
}
