//! Inception pool3 features for FID and KID, preprocessed exactly as pytorch-fid does: pixels to
//! [0, 1] (`to_tensor`), bilinear resize to 299x299 with `align_corners=False` and no antialiasing
//! (`F.interpolate`), then `2x - 1`. The resize is done here in f32 with PyTorch's index arithmetic,
//! so the ONNX model itself stays a plain convolutional network.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use image::RgbImage;
use rayon::prelude::*;

use crate::nn::inception::{FEATURES, INPUT_SIZE};
use crate::onnx::{ModelFile, ModelLimits};
use crate::runtime::{self, Engine, Input, RuntimeOptions};

/// Source index and weight pairs of a 1-D bilinear resize, as PyTorch's `upsample_bilinear2d` with
/// `align_corners=False` computes them: `src = (dst + 0.5) * in/out - 0.5`, clamped at 0.
fn linear_taps(input: usize, output: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|o| {
            let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(input - 1);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            let l1 = src - i0 as f32;
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// Writes the 3x299x299 network input for `img` into `out`.
pub fn inception_input(img: &RgbImage, out: &mut [f32]) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let xs = linear_taps(w, INPUT_SIZE);
    let ys = linear_taps(h, INPUT_SIZE);
    let plane = INPUT_SIZE * INPUT_SIZE;
    let raw = img.as_raw();
    for c in 0..3 {
        let px = |x: usize, y: usize| raw[(y * w + x) * 3 + c] as f32 / 255.0;
        for (oy, &(y0, y1, wy0, wy1)) in ys.iter().enumerate() {
            for (ox, &(x0, x1, wx0, wx1)) in xs.iter().enumerate() {
                let v = wy0 * (wx0 * px(x0, y0) + wx1 * px(x1, y0)) + wy1 * (wx0 * px(x0, y1) + wx1 * px(x1, y1));
                out[c * plane + oy * INPUT_SIZE + ox] = 2.0 * v - 1.0;
            }
        }
    }
}

/// The converted FID Inception network (`grade convert inception`).
pub struct InceptionNet {
    engine: Box<dyn Engine>,
    input: String,
    output: String,
    pub batch: usize,
    name: String,
}

impl InceptionNet {
    pub fn open(path: &Path, opts: &RuntimeOptions, batch: usize) -> Result<InceptionNet> {
        let file = ModelFile::open(path, &ModelLimits::default())?;
        if file.inputs.len() != 1 || file.outputs.len() != 1 {
            bail!("{} is not an Inception feature model: expected one input and one output (make it with `grade convert inception`)", path.display());
        }
        let engine = runtime::open(&file, opts)?;
        Ok(InceptionNet {
            engine,
            input: file.inputs[0].name.clone(),
            output: file.outputs[0].name.clone(),
            batch: batch.max(1),
            name: path.display().to_string(),
        })
    }

    pub fn engine_info(&self) -> &runtime::EngineInfo {
        self.engine.info()
    }

    /// pool3 features, [n, 2048] row-major.
    pub fn features(&mut self, imgs: &[RgbImage]) -> Result<Vec<f32>> {
        let per = 3 * INPUT_SIZE * INPUT_SIZE;
        let mut all = Vec::with_capacity(imgs.len() * FEATURES);
        for chunk in imgs.chunks(self.batch) {
            let mut x = vec![0f32; chunk.len() * per];
            x.par_chunks_mut(per).zip(chunk.par_iter()).for_each(|(o, img)| inception_input(img, o));
            let out = self.engine.run(&[Input::f32(&self.input, &[chunk.len(), 3, INPUT_SIZE, INPUT_SIZE], &x)], &self.output)?;
            runtime::expect_shape(&out, &[chunk.len(), FEATURES], &self.name)?;
            if out.data.iter().any(|v| !v.is_finite()) {
                bail!("{}: the Inception network returned NaN/Inf features", self.name);
            }
            all.extend_from_slice(&out.data);
        }
        Ok(all)
    }
}

/// The images pytorch-fid reads from a folder (its extension list), sorted.
pub fn fid_image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    const EXT: &[&str] = &["bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"];
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("cannot read folder {}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().and_then(|e| e.to_str()).is_some_and(|e| EXT.contains(&e.to_ascii_lowercase().as_str())))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{} holds no images", dir.display());
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_match_pytorch_for_64_to_299() {
        let t = linear_taps(64, 299);
        // dst 0: src = 0.5*64/299 - 0.5 < 0 -> clamped to 0.
        assert_eq!((t[0].0, t[0].1), (0, 1));
        assert!((t[0].3 - 0.0).abs() < 1e-7);
        // dst 298: src = 298.5*64/299 - 0.5 = 63.393... -> between 63 and 63 (edge).
        assert_eq!((t[298].0, t[298].1), (63, 63));
        // dst 150: src = 150.5 * 0.21404682 - 0.5 = 31.7140...
        let src = 150.5f32 * (64.0 / 299.0) - 0.5;
        assert_eq!(t[150].0, 31);
        assert!((t[150].3 - (src - 31.0)).abs() < 1e-6);
    }

    #[test]
    fn constant_image_maps_to_constant_input() {
        let img = RgbImage::from_pixel(64, 64, image::Rgb([255, 0, 51]));
        let mut out = vec![0f32; 3 * 299 * 299];
        inception_input(&img, &mut out);
        let plane = 299 * 299;
        assert!(out[..plane].iter().all(|v| (v - 1.0).abs() < 1e-6));
        assert!(out[plane..2 * plane].iter().all(|v| (v + 1.0).abs() < 1e-6));
        assert!(out[2 * plane..].iter().all(|v| (v - (2.0 * 0.2 - 1.0)).abs() < 1e-6));
    }
}
