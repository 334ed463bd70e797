//! The folder tools: `grade fid` (a drop-in for `python -m pytorch_fid A B`), `grade fid-stats` and
//! `grade faces`, each printing its one-paragraph summary and, when asked, writing its JSON.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::metrics::faces::{self, DetectorKind};
use crate::runtime::RuntimeOptions;

/// `grade fid A B|STATS.npz`: FID (and KID for two folders), printed; the JSON to `json` when given.
pub fn fid(a: &Path, b: &Path, inception: &Option<PathBuf>, json: Option<&Path>, rt: &RuntimeOptions) -> Result<i32> {
    let v = super::gan::fid_folders(a, b, inception, rt, false)?;
    // Say what was compared, as every grader's summary does.
    println!("compared {} ({} images) with {} ({} images)", a.display(), v["n_a"], b.display(), v["n_b"]);
    println!("inception: {}, backend: {}", v["inception"].as_str().unwrap_or("?"), v["backend"].as_str().unwrap_or("?"));
    println!("FID: {}", v["fid"]);
    if !v["kid"].is_null() {
        println!("KID: {} (std {})", v["kid"], v["kid_std"]);
    }
    if let Some(p) = json {
        crate::report::write_atomic(p, serde_json::to_string_pretty(&v)?.as_bytes())?;
    }
    Ok(0)
}

/// `grade fid-stats DIR -o stats.npz`.
pub fn fid_stats(dir: &Path, output: &Path, inception: &Option<PathBuf>, rt: &RuntimeOptions) -> Result<i32> {
    let s = super::gan::fid_stats(dir, output, inception, rt, false)?;
    println!("wrote {} (statistics of {} images)", output.display(), s.n);
    Ok(0)
}

/// `grade faces DIR`: the course's face rule on a folder.
pub fn faces(dir: &Path, detector: DetectorKind, json: Option<&Path>) -> Result<i32> {
    let files = crate::data::images::list_images(dir)?;
    if files.is_empty() {
        bail!("{} holds no images", dir.display());
    }
    let mut det = faces::make_detector(detector)?;
    let r = {
        let _faces = crate::memory::activity(format!("detecting faces in {}", dir.display()));
        faces::face_accuracy(&files, det.as_mut(), true)
    };
    println!(
        "face accuracy {:.4}: {} of {} loaded images have exactly one face ({} none, {} several, {} unreadable) [{}]",
        r.accuracy,
        r.exactly_one,
        r.loaded,
        r.zero,
        r.multiple,
        r.unreadable.len(),
        r.detector
    );
    if let Some(p) = json {
        crate::report::write_atomic(p, serde_json::to_string_pretty(&r)?.as_bytes())?;
    }
    Ok(0)
}
