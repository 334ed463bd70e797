//! Decoding images safely (size and allocation limits against decompression bombs), converting them
//! to the tensors the models expect, and listing folders of images.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use image::{imageops::FilterType, ImageReader, RgbImage};

/// Limits applied before and during decoding.
#[derive(Debug, Clone, Copy)]
pub struct ImageLimits {
    pub max_file_bytes: u64,
    pub max_width: u32,
    pub max_height: u32,
    /// Largest allocation the decoder may make.
    pub max_alloc: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        // Homework images are 28x28 or 64x64; 4096 leaves room for any honest photo.
        ImageLimits { max_file_bytes: 32 << 20, max_width: 4096, max_height: 4096, max_alloc: 256 << 20 }
    }
}

const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp"];

pub fn is_image_name(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Decodes an image file to RGB (greyscale is replicated to three channels, alpha dropped).
pub fn load_rgb(path: &Path, limits: &ImageLimits) -> Result<RgbImage> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read image {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a file", path.display());
    }
    if meta.len() > limits.max_file_bytes {
        bail!("image {} is {} bytes, over the {}-byte limit", path.display(), meta.len(), limits.max_file_bytes);
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read image {}", path.display()))?;
    decode_rgb(&bytes, path, limits)
}

/// Decodes image bytes (named `path` in errors) under the same limits. Public for the fuzz target.
pub fn decode_rgb(bytes: &[u8], path: &Path, limits: &ImageLimits) -> Result<RgbImage> {
    // Trust the content, not the extension: a text file named .png is not an image.
    let format = image::guess_format(bytes)
        .map_err(|_| anyhow::anyhow!("{} is not an image (its content is not PNG, JPEG or BMP)", path.display()))?;
    let mut reader = ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut l = image::Limits::default();
    l.max_image_width = Some(limits.max_width);
    l.max_image_height = Some(limits.max_height);
    l.max_alloc = Some(limits.max_alloc);
    reader.limits(l);
    let img = reader
        .decode()
        .map_err(|e| anyhow::anyhow!("cannot decode image {}: {e} (corrupt, truncated or too large?)", path.display()))?;
    Ok(img.to_rgb8())
}

/// Checks the size, or resizes (bilinear) when allowed.
pub fn fit_size(img: RgbImage, width: u32, height: u32, resize: bool, path: &Path) -> Result<RgbImage> {
    if img.width() == width && img.height() == height {
        return Ok(img);
    }
    if !resize {
        bail!(
            "{} is {}x{}, expected {width}x{height}; pass --resize to resize images",
            path.display(),
            img.width(),
            img.height()
        );
    }
    Ok(image::imageops::resize(&img, width, height, FilterType::Triangle))
}

/// Writes `img` into `out` as CHW floats: `(pixel/255 - mean[c]) / std[c]`.
pub fn to_chw(img: &RgbImage, mean: &[f32], std: &[f32], out: &mut [f32]) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let plane = w * h;
    debug_assert_eq!(out.len(), 3 * plane);
    for (i, px) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (px[c] as f32 / 255.0 - mean[c]) / std[c];
        }
    }
}

/// The image files directly inside `dir`, sorted by name.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("cannot read folder {}", dir.display()))?;
    let mut files = vec![];
    for e in entries {
        let e = e.with_context(|| format!("cannot read folder {}", dir.display()))?;
        let p = e.path();
        if e.file_type().map(|t| t.is_file()).unwrap_or(false) && is_image_name(&p) {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}
