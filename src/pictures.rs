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

/// 3x5 glyphs for the few characters figure labels need (digits, `t`, `=`), one row a 3-bit number.
/// A font crate would bring a font file; labels need ten digits.
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 3, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 2, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        't' => [2, 7, 2, 2, 3],
        '=' => [0, 7, 0, 7, 0],
        '.' => [0, 0, 0, 0, 2],
        ' ' => [0, 0, 0, 0, 0],
        _ => return None,
    })
}

/// Draws `text` in light grey at (x, y), each font pixel `scale` pixels wide; unknown characters are
/// skipped as blanks.
pub fn draw_text(img: &mut RgbImage, text: &str, x: u32, y: u32, scale: u32) {
    for (k, c) in text.chars().enumerate() {
        let rows = glyph(c).unwrap_or([0; 5]);
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..3u32 {
                if bits >> (2 - col) & 1 == 1 {
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let (px, py) = (x + (k as u32 * 4 + col) * scale + dx, y + r as u32 * scale + dy);
                            if px < img.width() && py < img.height() {
                                img.put_pixel(px, py, Rgb([230, 230, 230]));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `grid` with a header row naming each column (for example the timestep a column shows).
pub fn grid_with_header(images: &[RgbImage], labels: &[String], pad: u32, scale: u32) -> RgbImage {
    let cols = labels.len().max(1);
    let body = grid(images, cols, pad, scale);
    let w = images.first().map(|i| i.width()).unwrap_or(1);
    let cw = w * scale + pad;
    let font = (scale).max(1);
    let header_h = 5 * font + 2 * pad + 2;
    let mut out = RgbImage::from_pixel(body.width(), body.height() + header_h, Rgb([40, 40, 40]));
    imageops::overlay(&mut out, &body, 0, header_h as i64);
    for (k, label) in labels.iter().enumerate() {
        let text_w = label.chars().count() as u32 * 4 * font;
        let x0 = k as u32 * cw + pad + (w * scale).saturating_sub(text_w) / 2;
        draw_text(&mut out, label, x0, pad + 1, font);
    }
    out
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

    #[test]
    fn header_labels_draw_lit_pixels_over_their_own_column_only() {
        let imgs: Vec<RgbImage> = (0..4).map(|_| RgbImage::from_pixel(10, 10, Rgb([0, 0, 0]))).collect();
        let labels = vec!["1".to_string(), String::new()];
        let g = grid_with_header(&imgs, &labels, 2, 2);
        let header_h = g.height() - grid(&imgs, 2, 2, 2).height();
        assert!(header_h >= 10);
        let lit = |x0: u32, x1: u32| {
            (x0..x1).flat_map(|x| (0..header_h).map(move |y| (x, y))).filter(|&(x, y)| g.get_pixel(x, y)[0] == 230).count()
        };
        // "1" has 8 lit font pixels, each 2x2.
        assert_eq!(lit(0, 22), 8 * 4);
        assert_eq!(lit(22, g.width()), 0);
    }
}
