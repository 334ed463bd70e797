//! dlib's HOG frontal face detector (cargo feature `dlib`), the detector behind the course's
//! face_recognition: the reference the rustface settings are measured against.

use std::sync::Arc;

use anyhow::{anyhow, Result};
use image::RgbImage;

use super::{dlib_pyramid_up_size, DetectorFactory, FaceDetector};
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
