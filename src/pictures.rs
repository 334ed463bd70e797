//! Pictures people look at: sample grids and labelled strips, written as PNG.

use image::{imageops, Rgb, RgbImage};

/// Lays `images` (all the same size) out in rows of `cols`, with `pad` pixels of dark grey between
/// them, scaled up by `scale` (nearest neighbour keeps pixels honest).
pub fn grid(images: &[RgbImage], cols: usize, pad: u32, scale: u32) -> RgbImage {
    let cols = cols.max(1);
    let rows = images.len().div_ceil(cols).max(1);
    let (w, h) = images.first().map(|i| (i.width(), i.height())).unwrap_or((1, 1));
    let (cw, ch) = (w * scale + pad, h * scale + pad);
    let mut out = RgbImage::from_pixel(cols as u32 * cw + pad, rows as u32 * ch + pad, Rgb([40, 40, 40]));
    for (k, img) in images.iter().enumerate() {
        let big = imageops::resize(img, w * scale, h * scale, imageops::FilterType::Nearest);
        let (x, y) = ((k % cols) as u32 * cw + pad, (k / cols) as u32 * ch + pad);
        imageops::overlay(&mut out, &big, x as i64, y as i64);
    }
    out
}

/// Converts a CHW float image in [-1, 1] to RGB with the course's rounding (`to_u8`).
pub fn chw_to_rgb(x: &[f32], w: u32, h: u32, to_u8: impl Fn(f32) -> u8) -> RgbImage {
    let plane = (w * h) as usize;
    RgbImage::from_fn(w, h, |i, j| {
        let p = (j * w + i) as usize;
        Rgb([to_u8(x[p]), to_u8(x[plane + p]), to_u8(x[2 * plane + p])])
    })
}

pub fn png_bytes(img: &RgbImage) -> anyhow::Result<Vec<u8>> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png)?;
    Ok(buf.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_places_images_in_rows() {
        let imgs: Vec<RgbImage> = (0..5).map(|k| RgbImage::from_pixel(2, 2, Rgb([k * 50, 0, 0]))).collect();
        let g = grid(&imgs, 3, 1, 2);
        assert_eq!((g.width(), g.height()), (3 * 5 + 1, 2 * 5 + 1));
        assert_eq!(g.get_pixel(1, 1)[0], 0);
        assert_eq!(g.get_pixel(1 + 5, 1)[0], 50);
        assert_eq!(g.get_pixel(1, 6)[0], 150);
        assert_eq!(g.get_pixel(0, 0)[0], 40);
    }
}
