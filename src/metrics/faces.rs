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

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{anyhow, Context, Result};
use image::{GrayImage, ImageReader, RgbImage};

use crate::data::images::ImageLimits;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;

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

/// Decodes an image the way `face_recognition.load_image_file` (PIL `Image.open(f).convert("RGB")`)
/// sees it: the format comes from the content, not the extension; alpha is dropped rather than
/// composited; and a truncated PNG still loads, because face_recognition sets PIL's
/// `LOAD_TRUNCATED_IMAGES = True` on import (see [`load_truncated_png`]).
///
/// The file is read as a regular file only, and the grader's [`ImageLimits`] apply as everywhere
/// else: dimensions over 4096x4096 are refused from the header (the image counts as unreadable).
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let limits = ImageLimits::default();
    let bytes = crate::data::images::read_image_file(path, &limits)?;
    let decoded = ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .with_context(|| format!("reading {}", path.display()))
        .and_then(|mut r| {
            r.limits(limits.decoder_limits());
            r.decode().with_context(|| format!("decoding {}", path.display()))
        });
    match decoded {
        Ok(img) => Ok(img.into_rgb8()),
        Err(e) if bytes.starts_with(b"\x89PNG\r\n\x1a\n") => truncated_png(&bytes, &limits).map_err(|_| e),
        Err(e) => Err(e),
    }
}

/// Largest image the lenient PNG path will allocate (pixels); the header is untrusted input.
const MAX_LENIENT_PIXELS: u64 = 1 << 26;

/// Lenient PNG decode matching PIL with `LOAD_TRUNCATED_IMAGES`: once the header up to the first
/// image-data chunk is readable, the rows that decode are kept and the rest stay black. A file cut
/// before that (or an interlaced one, whose rows arrive in passes) is still an error.
pub fn load_truncated_png(path: &Path) -> Result<RgbImage> {
    let limits = ImageLimits::default();
    truncated_png(&crate::data::images::read_image_file(path, &limits)?, &limits)
}

fn truncated_png(bytes: &[u8], limits: &ImageLimits) -> Result<RgbImage> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info()?;
    let (w, h, interlaced) = (reader.info().width, reader.info().height, reader.info().interlaced);
    if interlaced {
        return Err(anyhow!("truncated interlaced PNG"));
    }
    if w == 0 || h == 0 || w > limits.max_width || h > limits.max_height || w as u64 * h as u64 > MAX_LENIENT_PIXELS {
        return Err(anyhow!("implausible PNG size {w}x{h}"));
    }
    let channels = match reader.output_color_type().0 {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err(anyhow!("palette not expanded")),
    };
    let mut out = RgbImage::new(w, h);
    for y in 0..h {
        let Ok(Some(row)) = reader.next_row() else {
            break;
        };
        for (x, px) in row.data().chunks_exact(channels).take(w as usize).enumerate() {
            let rgb = if channels < 3 { [px[0]; 3] } else { [px[0], px[1], px[2]] };
            out.put_pixel(x as u32, y, image::Rgb(rgb));
        }
    }
    Ok(out)
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

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
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

// ------------------------------------------------------------------------------------------------
// rustface (SeetaFace frontal, pure Rust)

/// The SeetaFace frontal model shipped in the rustface crate (BSD-2-Clause, VIPL/ICT CAS; licence
/// in models/LICENSE-seetaface). Copied into this crate so the build does not depend on where cargo
/// unpacked rustface.
static SEETA_MODEL_BYTES: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/models/seeta_fd_frontal_v1.0.bin"));

fn seeta_model() -> Result<rustface::Model> {
    static MODEL: OnceLock<Result<rustface::Model, String>> = OnceLock::new();
    MODEL
        .get_or_init(|| rustface::read_model(SEETA_MODEL_BYTES).map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| anyhow!("parsing the SeetaFace model: {e}"))
}

/// rustface's fixed sliding window: the smallest face it can see is this many pixels of the image
/// it is given.
pub const SEETA_WINDOW: u32 = 40;

/// Settings for [`RustfaceDetector`].
///
/// rustface 0.1.7 ignores `set_min_face_size` (the line that would use it is commented out), so the
/// pyramid always starts at 1x and the smallest detectable face is the 40 px window. Upscaling the
/// image first is therefore the only way to see smaller faces, which is also what dlib's
/// `upsample=1` does for its 80 px window. `min_face_size` is applied here instead, as a filter on
/// the reported box width.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RustfaceSettings {
    /// Resize factor applied before detection (bilinear). Smallest face = 40 / upscale px.
    pub upscale: f32,
    /// Minimum summed cascade score of a reported face (rustface default 3.85, must be > 0).
    pub score_thresh: f64,
    /// Ratio between pyramid levels, in (0.01, 0.99) (rustface default 0.8).
    pub pyramid_scale: f32,
    /// Sliding window step in pixels, >= 1 (rustface default 4).
    pub step: u32,
    /// Faces whose box is narrower than this many pixels of the *input* image are not counted
    /// (0 = no limit). dlib with one upsample cannot see faces much below 40 px, so without this
    /// rustface counts small faces that the course's detector never would.
    pub min_face_size: u32,
}

impl Default for RustfaceSettings {
    /// Chosen on the train faces plus synthetic images made from them, for per-image agreement with
    /// dlib HOG + 1 upsample on the exact-one decision (the fastest setting within 0.002 of the best
    /// of the grid in README.md; min face 24 rather than 28 because real faces start dropping out
    /// at 32); never tuned on val.
    fn default() -> Self {
        RustfaceSettings { upscale: 2.5, score_thresh: 7.0, pyramid_scale: 0.8, step: 4, min_face_size: 24 }
    }
}

impl RustfaceSettings {
    fn validate(&self) -> Result<()> {
        // rustface panics on these; reject them up front instead.
        if !(self.upscale.is_finite() && self.upscale > 0.0 && self.upscale <= 16.0) {
            return Err(anyhow!("upscale must be in (0, 16], got {}", self.upscale));
        }
        if !(self.score_thresh.is_finite() && self.score_thresh > 0.0) {
            return Err(anyhow!("score_thresh must be > 0, got {}", self.score_thresh));
        }
        if !(self.pyramid_scale >= 0.01 && self.pyramid_scale <= 0.99) {
            return Err(anyhow!("pyramid_scale must be in [0.01, 0.99], got {}", self.pyramid_scale));
        }
        if self.step == 0 {
            return Err(anyhow!("step must be >= 1"));
        }
        Ok(())
    }
}

/// Face detector based on rustface with the bundled SeetaFace frontal model.
pub struct RustfaceDetector {
    settings: RustfaceSettings,
    name: String,
    model: rustface::Model,
    inner: Box<dyn rustface::Detector>,
}

impl RustfaceDetector {
    pub fn new(settings: RustfaceSettings) -> Result<Self> {
        settings.validate()?;
        let model = seeta_model()?;
        let inner = Self::build(&model, &settings);
        let name = format!(
            "rustface(seeta-frontal-v1.0, upscale={}, thresh={}, pyramid={}, step={}, min_face={})",
            settings.upscale, settings.score_thresh, settings.pyramid_scale, settings.step, settings.min_face_size
        );
        Ok(RustfaceDetector { settings, name, model, inner })
    }

    fn build(model: &rustface::Model, s: &RustfaceSettings) -> Box<dyn rustface::Detector> {
        let mut d = rustface::create_detector_with_model(model.clone());
        d.set_score_thresh(s.score_thresh);
        d.set_pyramid_scale_factor(s.pyramid_scale);
        d.set_slide_window_step(s.step, s.step);
        // No effect in rustface 0.1.7 (see RustfaceSettings); set so a fixed upstream behaves the same.
        d.set_min_face_size(SEETA_WINDOW / 2);
        d
    }

    pub fn settings(&self) -> RustfaceSettings {
        self.settings
    }

    /// The grey image rustface sees: BT.601 luma (what OpenCV's RGB->grey, used by SeetaFace's own
    /// tools, computes), then the upscale.
    pub fn prepare(&self, img: &RgbImage) -> GrayImage {
        let (w, h) = img.dimensions();
        let mut gray = GrayImage::new(w, h);
        for (g, p) in gray.pixels_mut().zip(img.pixels()) {
            let [r, gr, b] = p.0;
            g.0[0] = ((r as u32 * 4899 + gr as u32 * 9617 + b as u32 * 1868 + 8192) >> 14) as u8;
        }
        if (self.settings.upscale - 1.0).abs() < 1e-6 || w == 0 || h == 0 {
            return gray;
        }
        let nw = ((w as f32 * self.settings.upscale).round() as u32).max(1);
        let nh = ((h as f32 * self.settings.upscale).round() as u32).max(1);
        image::imageops::resize(&gray, nw, nh, image::imageops::FilterType::Triangle)
    }
}

impl FaceDetector for RustfaceDetector {
    fn name(&self) -> &str {
        &self.name
    }

    fn count_faces(&mut self, img: &RgbImage) -> Result<usize> {
        let min = self.settings.min_face_size as f64;
        Ok(self.faces(img)?.iter().filter(|f| f.size >= min).count())
    }

    fn factory(&self) -> Option<DetectorFactory> {
        let settings = self.settings;
        Some(Arc::new(move || Ok(Box::new(RustfaceDetector::new(settings)?) as Box<dyn FaceDetector>)))
    }
}

/// One rustface detection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeetaFace {
    /// Summed cascade score (>= the detector's `score_thresh`).
    pub score: f64,
    /// Box width in pixels of the input image (before the upscale).
    pub size: f64,
}

impl RustfaceDetector {
    /// Every detection at or above `score_thresh`, before the `min_face_size` filter. The threshold
    /// is a pure post-filter in rustface, so a run with a tiny threshold gives the count for any
    /// larger threshold and minimum size (used by the settings sweep).
    pub fn faces(&mut self, img: &RgbImage) -> Result<Vec<SeetaFace>> {
        let gray = self.prepare(img);
        // Below one window nothing can be found, and rustface's resizer indexes out of range on
        // images narrower than 2 px, so stop here.
        if gray.width() < SEETA_WINDOW || gray.height() < SEETA_WINDOW {
            return Ok(Vec::new());
        }
        let data = rustface::ImageData::new(gray.as_raw(), gray.width(), gray.height());
        match catch_unwind(AssertUnwindSafe(|| self.inner.detect(&data))) {
            Ok(faces) => {
                let back = img.width() as f64 / gray.width() as f64;
                Ok(faces.iter().map(|f| SeetaFace { score: f.score(), size: f.bbox().width() as f64 * back }).collect())
            }
            Err(panic) => {
                // The detector's buffers may be half-written; start the next image from a clean one.
                self.inner = Self::build(&self.model, &self.settings);
                Err(anyhow!("rustface panicked: {}", panic_text(&panic)))
            }
        }
    }
}

// ------------------------------------------------------------------------------------------------
// dlib HOG (feature "dlib")

/// Size of dlib's `pyramid_up(img, pyramid_down<2>)` output for a `w` x `h` image. dlib maps the
/// corners through `pyramid_down<2>::point_up(p) = (p + (1.25, 0.75)) * 2` and rounds, so the result
/// is `(2w + 2) x (2h + 1)`, not exactly 2x; matching it keeps the detector's input bit-identical.
pub fn dlib_pyramid_up_size(w: u32, h: u32) -> (u32, u32) {
    let right = ((w as f64 - 1.0 + 1.25) * 2.0 + 0.5).floor();
    let bottom = ((h as f64 - 1.0 + 0.75) * 2.0 + 0.5).floor();
    (right as u32 + 1, bottom as u32 + 1)
}

#[cfg(feature = "dlib")]
pub use dlib_hog::DlibHogDetector;

#[cfg(feature = "dlib")]
mod dlib_hog {
    use super::*;
    use dlib_face_recognition::{FaceDetectorTrait, ImageMatrix};

    /// dlib's `get_frontal_face_detector()` (HOG), the detector behind `face_recognition`'s default
    /// `model="hog"`. The Python binding upsamples with `pyramid_up` before detecting; the Rust crate
    /// has no upsample argument, so this does the same `pyramid_up` itself: dlib's bilinear
    /// `resize_image` (via `ImageMatrix::resize`) to the size `pyramid_up` would pick.
    pub struct DlibHogDetector {
        inner: dlib_face_recognition::FaceDetector,
        upsample: u32,
        name: String,
    }

    impl DlibHogDetector {
        pub fn new(upsample: u32) -> Self {
            DlibHogDetector {
                inner: dlib_face_recognition::FaceDetector::new(),
                upsample,
                name: format!("dlib-hog(frontal, upsample={upsample})"),
            }
        }
    }

    impl FaceDetector for DlibHogDetector {
        fn name(&self) -> &str {
            &self.name
        }

        fn count_faces(&mut self, img: &RgbImage) -> Result<usize> {
            let (mut w, mut h) = img.dimensions();
            if w == 0 || h == 0 {
                return Ok(0);
            }
            let raw = img.as_raw();
            if raw.len() < w as usize * h as usize * 3 {
                return Err(anyhow!("RGB buffer shorter than its dimensions"));
            }
            // SAFETY: `ImageMatrix::new` reads exactly w*h*3 bytes from the pointer; checked above.
            let mut m = unsafe { ImageMatrix::new(w as usize, h as usize, raw.as_ptr()) };
            for _ in 0..self.upsample {
                let (nw, nh) = dlib_pyramid_up_size(w, h);
                m = m.resize(nw as usize, nh as usize);
                (w, h) = (nw, nh);
            }
            Ok(self.inner.face_locations(&m).len())
        }

        fn factory(&self) -> Option<DetectorFactory> {
            let up = self.upsample;
            Some(Arc::new(move || Ok(Box::new(DlibHogDetector::new(up)) as Box<dyn FaceDetector>)))
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, Rgba, RgbaImage};

    /// Reports the count written into the red channel of pixel (0, 0); 250 means "fail", 251 "panic".
    struct PixelCount;

    impl FaceDetector for PixelCount {
        fn name(&self) -> &str {
            "pixel-count"
        }
        fn count_faces(&mut self, img: &RgbImage) -> Result<usize> {
            match img.get_pixel(0, 0).0[0] {
                250 => Err(anyhow!("mock failure")),
                251 => panic!("mock panic"),
                n => Ok(n as usize),
            }
        }
        fn factory(&self) -> Option<DetectorFactory> {
            Some(Arc::new(|| Ok(Box::new(PixelCount) as Box<dyn FaceDetector>)))
        }
    }

    /// Same answers, but no factory, so grading is serial.
    struct SerialPixelCount;

    impl FaceDetector for SerialPixelCount {
        fn name(&self) -> &str {
            "serial-pixel-count"
        }
        fn count_faces(&mut self, img: &RgbImage) -> Result<usize> {
            PixelCount.count_faces(img)
        }
    }

    fn write_marked(dir: &Path, name: &str, count: u8) -> PathBuf {
        let path = dir.join(name);
        RgbImage::from_pixel(8, 8, Rgb([count, 0, 0])).save(&path).unwrap();
        path
    }

    #[test]
    fn counts_zero_one_and_many() {
        let dir = tempfile::tempdir().unwrap();
        let counts = [0u8, 1, 1, 2, 3, 1, 0];
        let paths: Vec<PathBuf> = counts.iter().enumerate().map(|(i, &c)| write_marked(dir.path(), &format!("{i}.png"), c)).collect();
        let r = face_accuracy(&paths, &mut SerialPixelCount, false);
        assert_eq!((r.total, r.loaded), (7, 7));
        assert_eq!((r.zero, r.exactly_one, r.multiple), (2, 3, 2));
        assert!(r.unreadable.is_empty() && r.detector_failed.is_empty());
        assert!((r.accuracy - 3.0 / 7.0).abs() < 1e-12);
        assert_eq!(r.detector, "serial-pixel-count");
    }

    #[test]
    fn unreadable_files_leave_the_denominator() {
        let dir = tempfile::tempdir().unwrap();
        let good_one = write_marked(dir.path(), "good1.png", 1);
        let good_zero = write_marked(dir.path(), "good0.png", 0);
        // A PNG signature followed by garbage: the decoder must reject it.
        let corrupt = dir.path().join("corrupt.png");
        let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
        bytes.extend_from_slice(&[7u8; 64]);
        std::fs::write(&corrupt, bytes).unwrap();
        // A PNG cut inside its header: PIL cannot open it either.
        let truncated = dir.path().join("truncated.png");
        let full = std::fs::read(&good_one).unwrap();
        std::fs::write(&truncated, &full[..20]).unwrap();
        let empty = dir.path().join("empty.png");
        std::fs::write(&empty, b"").unwrap();
        let missing = dir.path().join("missing.png");

        let paths = vec![good_one, corrupt.clone(), truncated.clone(), good_zero, empty.clone(), missing.clone()];
        let r = face_accuracy(&paths, &mut SerialPixelCount, false);
        assert_eq!(r.total, 6);
        assert_eq!(r.loaded, 2);
        let bad: Vec<&PathBuf> = r.unreadable.iter().map(|p| &p.path).collect();
        assert_eq!(bad, vec![&corrupt, &truncated, &empty, &missing]);
        assert!(r.unreadable.iter().all(|p| !p.error.is_empty()));
        assert!((r.accuracy - 0.5).abs() < 1e-12, "1 correct of 2 loaded, got {}", r.accuracy);
    }

    #[test]
    fn truncated_png_loads_with_black_rows_like_face_recognition() {
        let dir = tempfile::tempdir().unwrap();
        let full = dir.path().join("full.png");
        // Stored (uncompressed) rows would make the cut point exact, but any cut mid-data must keep
        // the decodable top rows and blacken the rest.
        RgbImage::from_fn(64, 64, |x, y| Rgb([200, (x * 4) as u8, (y * 4) as u8])).save(&full).unwrap();
        let bytes = std::fs::read(&full).unwrap();
        let cut = dir.path().join("cut.png");
        std::fs::write(&cut, &bytes[..bytes.len() * 2 / 3]).unwrap();
        let img = load_rgb(&cut).expect("truncated PNG should load");
        assert_eq!(img.dimensions(), (64, 64));
        assert_eq!(img.get_pixel(5, 0).0, [200, 20, 0], "top row decoded");
        assert_eq!(img.get_pixel(5, 63).0, [0, 0, 0], "missing rows are black");
        // Cut right after the first data chunk's header: PIL gives an all-black image.
        let idat = bytes.windows(4).position(|w| w == b"IDAT").unwrap();
        std::fs::write(&cut, &bytes[..idat + 4]).unwrap();
        let black = load_rgb(&cut).expect("header-only PNG should load");
        assert!(black.pixels().all(|p| p.0 == [0, 0, 0]));
        // Cut inside the header: unreadable, as in PIL.
        std::fs::write(&cut, &bytes[..idat - 2]).unwrap();
        assert!(load_rgb(&cut).is_err());
    }

    #[test]
    fn nothing_loaded_gives_zero_not_nan() {
        let dir = tempfile::tempdir().unwrap();
        let paths = vec![dir.path().join("nope.png")];
        let r = face_accuracy(&paths, &mut SerialPixelCount, false);
        assert_eq!((r.total, r.loaded, r.unreadable.len()), (1, 0, 1));
        assert_eq!(r.accuracy, 0.0);
    }

    #[test]
    fn detector_errors_and_panics_stay_in_the_denominator() {
        let dir = tempfile::tempdir().unwrap();
        let paths = vec![
            write_marked(dir.path(), "a.png", 1),
            write_marked(dir.path(), "fail.png", 250),
            write_marked(dir.path(), "panic.png", 251),
            write_marked(dir.path(), "b.png", 1),
        ];
        let r = face_accuracy(&paths, &mut SerialPixelCount, false);
        assert_eq!((r.loaded, r.exactly_one), (4, 2));
        assert_eq!(r.detector_failed.len(), 2);
        assert!(r.detector_failed[0].error.contains("mock failure"));
        assert!(r.detector_failed[1].error.contains("mock panic"));
        assert!((r.accuracy - 0.5).abs() < 1e-12);
    }

    #[test]
    fn parallel_and_serial_agree_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..200u32).map(|i| write_marked(dir.path(), &format!("{i:03}.png"), (i * 7 % 4) as u8)).collect();
        let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build().unwrap();
        let par = pool.install(|| grade_images(&paths, &mut PixelCount, false));
        let ser = grade_images(&paths, &mut SerialPixelCount, false);
        assert_eq!(par, ser);
        assert_eq!(par[3], ImageOutcome::Faces(1)); // 3*7 % 4
        let r = tally("x", &paths, &par);
        assert_eq!(r.zero + r.exactly_one + r.multiple, 200);
    }

    #[test]
    fn tally_counts_missing_outcomes_as_not_graded() {
        let paths = vec![PathBuf::from("a"), PathBuf::from("b")];
        let r = tally("x", &paths, &[ImageOutcome::Faces(1)]);
        assert_eq!((r.total, r.loaded, r.unreadable.len()), (2, 1, 1));
        assert_eq!(r.unreadable[0].path, PathBuf::from("b"));
    }

    #[test]
    fn format_is_sniffed_from_content_and_alpha_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        // A JPEG saved under a .png name still loads, as it does with PIL.
        let jpeg_as_png = dir.path().join("really_a_jpeg.png");
        let mut buf = Vec::new();
        RgbImage::from_pixel(16, 16, Rgb([200, 100, 50])).write_to(&mut std::io::Cursor::new(&mut buf), image::ImageFormat::Jpeg).unwrap();
        std::fs::write(&jpeg_as_png, &buf).unwrap();
        let img = load_rgb(&jpeg_as_png).unwrap();
        assert_eq!(img.dimensions(), (16, 16));
        // RGBA: colour kept, alpha discarded (not composited on black or white).
        let rgba = dir.path().join("rgba.png");
        RgbaImage::from_pixel(4, 4, Rgba([10, 20, 30, 0])).save(&rgba).unwrap();
        assert_eq!(load_rgb(&rgba).unwrap().get_pixel(1, 1).0, [10, 20, 30]);
    }

    #[test]
    fn rustface_finds_no_face_in_flat_or_tiny_images() {
        let mut det = RustfaceDetector::new(RustfaceSettings::default()).unwrap();
        for v in [0u8, 128, 255] {
            let n = det.count_faces(&RgbImage::from_pixel(64, 64, Rgb([v, v, v]))).unwrap();
            assert_eq!(n, 0, "flat image of value {v}");
        }
        // Sizes that would trip rustface's own index arithmetic must be answered, not panic.
        for (w, h) in [(1, 1), (1, 64), (64, 1), (2, 2), (19, 19), (20, 20), (300, 3)] {
            assert_eq!(det.count_faces(&RgbImage::new(w, h)).unwrap(), 0, "{w}x{h}");
        }
    }

    #[test]
    fn rustface_finds_no_face_in_seeded_noise() {
        // xorshift: deterministic noise without an RNG dependency.
        let mut s = 0x9E3779B97F4A7C15u64;
        let img = RgbImage::from_fn(64, 64, |_, _| {
            let mut px = [0u8; 3];
            for c in &mut px {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                *c = (s >> 56) as u8;
            }
            Rgb(px)
        });
        let mut det = RustfaceDetector::new(RustfaceSettings::default()).unwrap();
        assert_eq!(det.count_faces(&img).unwrap(), 0);
    }

    #[test]
    fn bad_rustface_settings_are_errors_not_panics() {
        let d = RustfaceSettings::default();
        for s in [
            RustfaceSettings { score_thresh: 0.0, ..d },
            RustfaceSettings { score_thresh: f64::NAN, ..d },
            RustfaceSettings { pyramid_scale: 1.0, ..d },
            RustfaceSettings { pyramid_scale: 0.0, ..d },
            RustfaceSettings { step: 0, ..d },
            RustfaceSettings { upscale: 0.0, ..d },
            RustfaceSettings { upscale: f32::INFINITY, ..d },
        ] {
            assert!(RustfaceDetector::new(s).is_err(), "{s:?} accepted");
        }
        assert!(RustfaceDetector::new(d).is_ok());
    }

    #[test]
    fn rustface_upscale_changes_the_working_size() {
        let det = RustfaceDetector::new(RustfaceSettings { upscale: 2.0, ..Default::default() }).unwrap();
        let g = det.prepare(&RgbImage::from_pixel(64, 48, Rgb([255, 0, 0])));
        assert_eq!(g.dimensions(), (128, 96));
        // BT.601 red weight: 0.299 * 255 = 76.2
        assert_eq!(g.get_pixel(10, 10).0[0], 76);
        assert!(det.name().contains("upscale=2"));
    }

    #[test]
    fn dlib_pyramid_up_size_matches_dlib_rounding() {
        // Worked from dlib's pyramid_down<2>::rect_up and drectangle -> rectangle rounding.
        assert_eq!(dlib_pyramid_up_size(64, 64), (130, 129));
        assert_eq!(dlib_pyramid_up_size(1, 1), (4, 3));
        assert_eq!(dlib_pyramid_up_size(130, 129), (262, 259));
    }

    const REAL_VAL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/hw2_data/face/val");

    fn real_val_paths(n: usize) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(REAL_VAL)
            .expect("real face data missing")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "png"))
            .collect();
        paths.sort();
        paths.truncate(n);
        paths
    }

    #[test]
    #[ignore = "needs the real faces in data/ (not committed); .ci/run unpacks ../shared/data and runs these with --ignored"]
    fn rustface_accepts_most_real_faces() {
        let paths = real_val_paths(200);
        assert_eq!(paths.len(), 200);
        let mut det = RustfaceDetector::new(RustfaceSettings::default()).unwrap();
        let r = face_accuracy(&paths, &mut det, false);
        assert_eq!(r.loaded, 200);
        assert!(r.accuracy > 0.85, "{r:?}");
    }

    #[cfg(feature = "dlib")]
    #[test]
    fn dlib_finds_no_face_in_flat_or_tiny_images() {
        let mut det = DlibHogDetector::new(1);
        for (w, h, v) in [(64, 64, 0u8), (64, 64, 200), (1, 1, 0), (3, 70, 9)] {
            assert_eq!(det.count_faces(&RgbImage::from_pixel(w, h, Rgb([v, v, v]))).unwrap(), 0, "{w}x{h}");
        }
    }

    /// Per-image counts that face_recognition 1.3.0 (dlib-bin 20.0.1, HOG, upsample 1) gave for the
    /// first 200 val crops; made by tools/face_ref.py. Counts only, no image data.
    #[cfg(feature = "dlib")]
    const FACE_RECOGNITION_VAL_FIRST200: &str =
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/faces/face_recognition_val_first200.csv"));

    #[cfg(feature = "dlib")]
    #[test]
    #[ignore = "needs the real faces in data/ (not committed); .ci/run unpacks ../shared/data and runs these with --ignored"]
    fn dlib_matches_face_recognition_image_by_image() {
        let expected: Vec<(&str, usize)> = FACE_RECOGNITION_VAL_FIRST200
            .lines()
            .skip(1)
            .map(|l| {
                let (f, n) = l.split_once(',').unwrap();
                (f, n.parse().unwrap())
            })
            .collect();
        assert_eq!(expected.len(), 200);
        let mut det = DlibHogDetector::new(1);
        for (file, want) in expected {
            let img = load_rgb(&Path::new(REAL_VAL).join(file)).unwrap();
            assert_eq!(det.count_faces(&img).unwrap(), want, "{file}");
        }
    }

    #[cfg(feature = "dlib")]
    #[test]
    #[ignore = "needs the real faces in data/ (not committed); .ci/run unpacks ../shared/data and runs these with --ignored"]
    fn dlib_accepts_most_real_faces() {
        let paths = real_val_paths(200);
        let mut det = DlibHogDetector::new(1);
        let r = face_accuracy(&paths, &mut det, false);
        assert_eq!(r.loaded, 200);
        assert!(r.accuracy > 0.85, "{r:?}");
    }
}
