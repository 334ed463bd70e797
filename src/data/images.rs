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

impl ImageLimits {
    /// The same limits as the `image` crate applies them: dimensions are checked from the header
    /// before any pixel buffer is allocated, and every decoder allocation is capped.
    pub fn decoder_limits(&self) -> image::Limits {
        let mut l = image::Limits::default();
        l.max_image_width = Some(self.max_width);
        l.max_image_height = Some(self.max_height);
        l.max_alloc = Some(self.max_alloc);
        l
    }

    /// Refuses an image whose declared dimensions are over the limits.
    pub fn check_dimensions(&self, width: u32, height: u32, path: &Path) -> Result<()> {
        if width > self.max_width || height > self.max_height {
            bail!(
                "image {} is {width}x{height}, over the limit of {}x{}; refused before decoding",
                path.display(),
                self.max_width,
                self.max_height
            );
        }
        Ok(())
    }
}

/// Reads an image file's bytes: a regular file (never a FIFO or device) within the file-size limit.
pub fn read_image_file(path: &Path, limits: &ImageLimits) -> Result<Vec<u8>> {
    crate::safe_fs::read_regular(path, limits.max_file_bytes, "image")
}

/// An image's width and height from its header alone (nothing decoded).
pub fn header_dimensions(bytes: &[u8], path: &Path) -> Result<(u32, u32)> {
    let format = image::guess_format(bytes)
        .map_err(|_| anyhow::anyhow!("{} is not an image (its content is not PNG, JPEG or BMP)", path.display()))?;
    ImageReader::with_format(std::io::Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| anyhow::anyhow!("cannot read the header of image {}: {e}", path.display()))
}

/// Decodes an image file to RGB (greyscale is replicated to three channels, alpha dropped).
pub fn load_rgb(path: &Path, limits: &ImageLimits) -> Result<RgbImage> {
    let bytes = read_image_file(path, limits)?;
    decode_rgb(&bytes, path, limits)
}

/// Decodes images that must share one size (pytorch-fid's rule) group by group, handing each group
/// to `each`. Every header is read first: each image's dimensions against `limits` and the one size;
/// a group is cut before its file bytes plus decoded RGB pixels would pass `max_group_bytes`, so a
/// folder of decompression bombs never has more than that decoded at once. Groups decode in
/// parallel. `size` carries the size from group to group (and call to call).
pub fn for_each_rgb_group(
    paths: &[PathBuf],
    limits: &ImageLimits,
    max_group_bytes: u64,
    size: &mut Option<(u32, u32)>,
    mut each: impl FnMut(&[RgbImage]) -> Result<()>,
) -> Result<()> {
    use rayon::prelude::*;
    let mut group: Vec<(&PathBuf, Vec<u8>)> = vec![];
    let mut used: u64 = 0;
    let mut flush = |group: &mut Vec<(&PathBuf, Vec<u8>)>| -> Result<()> {
        if group.is_empty() {
            return Ok(());
        }
        let _decoding = crate::memory::activity(format!("decoding {} images from {}", group.len(), group[0].0.display()));
        let imgs: Result<Vec<RgbImage>> = group.par_iter().map(|(p, b)| decode_rgb(b, p, limits)).collect();
        group.clear();
        each(&imgs?)
    };
    for p in paths {
        let bytes = read_image_file(p, limits)?;
        let (w, h) = header_dimensions(&bytes, p)?;
        limits.check_dimensions(w, h, p)?;
        match *size {
            None => *size = Some((w, h)),
            Some((sw, sh)) if (sw, sh) != (w, h) => {
                bail!("{} is {w}x{h} but earlier images are {sw}x{sh}; pytorch-fid needs one size per folder", p.display())
            }
            _ => {}
        }
        let cost = (w as u64 * h as u64 * 3).saturating_add(bytes.len() as u64);
        if !group.is_empty() && used.saturating_add(cost) > max_group_bytes {
            flush(&mut group)?;
            used = 0;
        }
        used = used.saturating_add(cost);
        group.push((p, bytes));
    }
    flush(&mut group)
}

/// Decodes image bytes (named `path` in errors) under the same limits. Public for the fuzz target.
pub fn decode_rgb(bytes: &[u8], path: &Path, limits: &ImageLimits) -> Result<RgbImage> {
    // Trust the content, not the extension: a text file named .png is not an image.
    let format = image::guess_format(bytes)
        .map_err(|_| anyhow::anyhow!("{} is not an image (its content is not PNG, JPEG or BMP)", path.display()))?;
    let mut reader = ImageReader::with_format(std::io::Cursor::new(bytes), format);
    reader.limits(limits.decoder_limits());
    let img =
        reader.decode().map_err(|e| anyhow::anyhow!("cannot decode image {}: {e} (corrupt, truncated or too large?)", path.display()))?;
    Ok(img.to_rgb8())
}

/// Checks the size, or resizes (bilinear) when allowed.
pub fn fit_size(img: RgbImage, width: u32, height: u32, resize: bool, path: &Path) -> Result<RgbImage> {
    if img.width() == width && img.height() == height {
        return Ok(img);
    }
    if !resize {
        bail!("{} is {}x{}, expected {width}x{height}; pass --resize to resize images", path.display(), img.width(), img.height());
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A PNG of `w`x`h` black pixels, written row by row (a few KB on disk, `3wh` bytes decoded).
    fn black_png(p: &Path, w: u32, h: u32) {
        let file = std::fs::File::create(p).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
        enc.set_color(png::ColorType::Rgb);
        let mut s = enc.write_header().unwrap().into_stream_writer().unwrap();
        let row = vec![0u8; 3 * w as usize];
        for _ in 0..h {
            std::io::Write::write_all(&mut s, &row).unwrap();
        }
        s.finish().unwrap();
    }

    #[test]
    fn groups_are_checked_from_headers_and_bounded_before_decoding() {
        let tmp = tempfile::tempdir().unwrap();
        let limits = ImageLimits::default();
        let small: Vec<PathBuf> = (0..3).map(|i| tmp.path().join(format!("s{i}.png"))).collect();
        for p in &small {
            black_png(p, 64, 64);
        }
        let mut size = None;
        let mut groups = vec![];
        for_each_rgb_group(&small, &limits, 1 << 20, &mut size, |g| {
            let _: () = groups.push(g.len());
            Ok(())
        })
        .unwrap();
        assert_eq!((groups, size), (vec![3], Some((64, 64))));
        // Four 4096x4096 images (48 MiB each decoded, a few KB on disk) with 100 MiB at once: decoded
        // two at a time, never all four.
        let bombs: Vec<PathBuf> = (0..4).map(|i| tmp.path().join(format!("b{i}.png"))).collect();
        for p in &bombs {
            black_png(p, 4096, 4096);
        }
        let mut groups = vec![];
        for_each_rgb_group(&bombs, &limits, 100 << 20, &mut None, |g| {
            let _: () = groups.push(g.len());
            Ok(())
        })
        .unwrap();
        assert_eq!(groups, vec![2, 2]);
        // Over the dimension limit: refused from the header, before anything is decoded.
        let wide = tmp.path().join("wide.png");
        black_png(&wide, 5000, 2);
        let mut called = false;
        let e = for_each_rgb_group(&[small[0].clone(), wide.clone()], &limits, u64::MAX, &mut None, |_| {
            let _: () = called = true;
            Ok(())
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("wide.png") && e.contains("5000x2") && e.contains("4096x4096"), "{e}");
        assert!(!called);
        // One size per folder, from the headers.
        let e = for_each_rgb_group(&[small[0].clone(), wide], &ImageLimits { max_width: 8192, ..limits }, u64::MAX, &mut None, |_| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("one size per folder"), "{e}");
    }
}
