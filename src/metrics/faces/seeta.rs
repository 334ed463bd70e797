//! rustface (the SeetaFace frontal cascade, pure Rust): the default face detector, with settings chosen to
//! agree with dlib on 64x64 faces; and the size arithmetic of dlib's upsample that both detectors share.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

use anyhow::{anyhow, Result};
use image::{GrayImage, RgbImage};

use super::{panic_text, DetectorFactory, FaceDetector};

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

    pub(super) fn build(model: &rustface::Model, s: &RustfaceSettings) -> Box<dyn rustface::Detector> {
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

/// Size of dlib's `pyramid_up(img, pyramid_down<2>)` output for a `w` x `h` image. dlib maps the
/// corners through `pyramid_down<2>::point_up(p) = (p + (1.25, 0.75)) * 2` and rounds, so the result
/// is `(2w + 2) x (2h + 1)`, not exactly 2x; matching it keeps the detector's input bit-identical.
pub fn dlib_pyramid_up_size(w: u32, h: u32) -> (u32, u32) {
    let right = ((w as f64 - 1.0 + 1.25) * 2.0 + 0.5).floor();
    let bottom = ((h as f64 - 1.0 + 0.75) * 2.0 + 0.5).floor();
    (right as u32 + 1, bottom as u32 + 1)
}
