//! Image decoding for the face rule, as face_recognition sees files: the format from the content, alpha
//! dropped, truncated PNGs kept (PIL's `LOAD_TRUNCATED_IMAGES`), through the grader's `ImageLimits`.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use image::{ImageReader, RgbImage};

use crate::data::images::ImageLimits;

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
