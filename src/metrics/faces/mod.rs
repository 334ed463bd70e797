//! Face accuracy for the hw2 face generator.
//!
//! The course rule (face_recog.py): run a frontal face detector on every generated image; an image
//! is correct only when the detector finds exactly one face; an image that fails to load is dropped
//! from the denominator. `face_accuracy = exactly_one / loaded`.
//!
//! The reference detector is dlib's HOG frontal face detector with one 2x upsample (what
//! `face_recognition.face_locations` does by default). It needs a C++ library, so the default here is
//! the pure-Rust SeetaFace port `rustface`, with settings chosen to agree with dlib on 64x64 crops
//! (see README.md). The `dlib` cargo feature adds dlib itself for exact parity.
//!
//! Here: the detector trait, the course's tally and the parallel run; `decode` loads images as
//! face_recognition does; `seeta` is the rustface detector, `dlib` the reference one (feature `dlib`).

mod decode;
#[cfg(feature = "dlib")]
mod dlib;
mod seeta;
#[cfg(test)]
mod tests;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Result};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;

pub use decode::{load_rgb, load_truncated_png};
#[cfg(feature = "dlib")]
pub use dlib::DlibHogDetector;
pub use seeta::{dlib_pyramid_up_size, RustfaceDetector, RustfaceSettings, SeetaFace, SEETA_WINDOW};

/// Something that counts frontal faces in an RGB image.
pub trait FaceDetector {
    /// Human-readable name including the settings, so reports say what graded them.
    fn name(&self) -> &str;
    /// Number of faces found in `img`.
    fn count_faces(&mut self, img: &RgbImage) -> Result<usize>;
    /// A way to build identical detectors on other threads. Detectors are stateful (scratch
    /// buffers), so parallel grading builds one per worker instead of sharing one. `None` (the
    /// default) makes `face_accuracy` run serially on `self`.
    fn factory(&self) -> Option<DetectorFactory> {
        None
    }
}

/// Builds a fresh detector with the same settings; called on the worker thread that will use it.
pub type DetectorFactory = Arc<dyn Fn() -> Result<Box<dyn FaceDetector>> + Send + Sync>;

/// What happened to one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageOutcome {
    /// The image loaded and the detector found this many faces.
    Faces(usize),
    /// The file could not be read or decoded: removed from the denominator, as the course does.
    Unreadable(String),
    /// The image loaded but the detector failed on it. It stays in the denominator and counts as
    /// not correct, because the image itself was valid.
    DetectorFailed(String),
}

/// A file and why it was not graded normally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileProblem {
    pub path: PathBuf,
    pub error: String,
}

/// Counts behind a face accuracy. Invariants: `total = loaded + unreadable.len()` and
/// `loaded = exactly_one + zero + multiple + detector_failed.len()`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaceReport {
    pub detector: String,
    pub total: usize,
    pub loaded: usize,
    pub unreadable: Vec<FileProblem>,
    pub exactly_one: usize,
    pub zero: usize,
    pub multiple: usize,
    pub detector_failed: Vec<FileProblem>,
    /// `exactly_one / loaded`; 0.0 when nothing loaded (no valid image cannot earn credit).
    pub accuracy: f64,
}

/// Loads and runs the detector on one file; a panicking detector becomes `DetectorFailed`.
pub fn grade_one(path: &Path, det: &mut dyn FaceDetector) -> ImageOutcome {
    let img = match load_rgb(path) {
        Ok(img) => img,
        Err(e) => return ImageOutcome::Unreadable(format!("{e:#}")),
    };
    match catch_unwind(AssertUnwindSafe(|| det.count_faces(&img))) {
        Ok(Ok(n)) => ImageOutcome::Faces(n),
        Ok(Err(e)) => ImageOutcome::DetectorFailed(format!("{e:#}")),
        Err(panic) => ImageOutcome::DetectorFailed(format!("detector panicked: {}", panic_text(&panic))),
    }
}

pub(crate) fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Per-image outcomes, in the order of `paths`. Runs in parallel when the detector offers a factory.
pub fn grade_images(paths: &[PathBuf], det: &mut dyn FaceDetector, progress: bool) -> Vec<ImageOutcome> {
    let bar = if progress {
        let bar = ProgressBar::new(paths.len() as u64);
        if let Ok(style) = ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ({eta})") {
            bar.set_style(style);
        }
        bar.set_prefix(format!("faces: {}", det.name()));
        bar
    } else {
        ProgressBar::hidden()
    };

    let outcomes = match det.factory() {
        Some(factory) if rayon::current_num_threads() > 1 && paths.len() > 1 => paths
            .par_iter()
            // Each split builds its own detector; a minimum split length keeps that rare.
            .with_min_len(32)
            .map_init(
                || factory(),
                |local, path| {
                    let outcome = match local {
                        Ok(d) => grade_one(path, d.as_mut()),
                        Err(e) => ImageOutcome::DetectorFailed(format!("building detector: {e:#}")),
                    };
                    bar.inc(1);
                    outcome
                },
            )
            .collect(),
        _ => paths
            .iter()
            .map(|path| {
                let outcome = grade_one(path, det);
                bar.inc(1);
                outcome
            })
            .collect(),
    };
    bar.finish_and_clear();
    outcomes
}

/// Applies the course rule to per-image outcomes. `paths` and `outcomes` pair up by index.
pub fn tally(detector: &str, paths: &[PathBuf], outcomes: &[ImageOutcome]) -> FaceReport {
    let mut r = FaceReport {
        detector: detector.to_string(),
        total: paths.len(),
        loaded: 0,
        unreadable: Vec::new(),
        exactly_one: 0,
        zero: 0,
        multiple: 0,
        detector_failed: Vec::new(),
        accuracy: 0.0,
    };
    for (path, outcome) in paths.iter().zip(outcomes) {
        match outcome {
            ImageOutcome::Unreadable(e) => r.unreadable.push(FileProblem { path: path.clone(), error: e.clone() }),
            ImageOutcome::DetectorFailed(e) => {
                r.loaded += 1;
                r.detector_failed.push(FileProblem { path: path.clone(), error: e.clone() });
            }
            ImageOutcome::Faces(n) => {
                r.loaded += 1;
                match n {
                    0 => r.zero += 1,
                    1 => r.exactly_one += 1,
                    _ => r.multiple += 1,
                }
            }
        }
    }
    // A path without an outcome (mismatched lengths) was never graded: treat it like a load failure
    // so `total` still adds up instead of silently shrinking.
    for path in paths.iter().skip(outcomes.len()) {
        r.unreadable.push(FileProblem { path: path.clone(), error: "not graded".to_string() });
    }
    if r.loaded > 0 {
        r.accuracy = r.exactly_one as f64 / r.loaded as f64;
    }
    r
}

/// Face accuracy of the images at `paths` under the course rule.
pub fn face_accuracy(paths: &[PathBuf], det: &mut dyn FaceDetector, progress: bool) -> FaceReport {
    let outcomes = grade_images(paths, det, progress);
    tally(det.name(), paths, &outcomes)
}

/// Which face detector grades.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DetectorKind {
    /// Pure-Rust SeetaFace (always available; agrees with dlib on ~96% of real faces).
    #[default]
    Rustface,
    /// dlib's HOG frontal detector with one upsample, as face_recognition (needs the `dlib` feature).
    Dlib,
}

/// Builds the chosen detector, or says how to get it.
pub fn make_detector(kind: DetectorKind) -> Result<Box<dyn FaceDetector>> {
    match kind {
        DetectorKind::Rustface => Ok(Box::new(RustfaceDetector::new(RustfaceSettings::default())?)),
        #[cfg(feature = "dlib")]
        DetectorKind::Dlib => Ok(Box::new(DlibHogDetector::new(1))),
        #[cfg(not(feature = "dlib"))]
        DetectorKind::Dlib => Err(anyhow!(
            "this grade was built without dlib: install Debian's dlib (bash scripts/install-dlib.sh) and build with --features dlib"
        )),
    }
}
