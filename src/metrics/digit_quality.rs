//! What `grade ddpm` sees of generated digits beyond the judge's label: the share of images buried in
//! pixel noise, and a distribution distance of the digits to real MNIST-M in the judge's own feature
//! space. A judge can read a digit through heavy colour noise (a real case: a third of a model's digits
//! were corrupted and the accuracy still said "strong"), so both are reported beside the accuracy.
//!
//! - **Roughness**: the mean absolute difference between horizontally neighbouring pixels, over all
//!   three channels, in 0-255 levels. Real MNIST-M digits (textured backgrounds included) sit well
//!   below 40; saturated colour noise sits far above. An image above the grader's threshold
//!   (`[quality] noise_threshold`) counts as noise-corrupted.
//! - **Judge FID**: the Fréchet distance (`metrics::fid`, pytorch-fid's formula) between the judge's
//!   penultimate features (`digit_features`) of the generated digits and of the real val digits,
//!   overall and per class, beside the same distance for as many real *training* digits drawn the
//!   same way: the floor a perfect generator would score.

use std::path::Path;

use anyhow::Result;
use image::RgbImage;
use serde::Serialize;

use super::digit_features::DigitFeatures;
use super::fid::{frechet_distance, stats_from_features};
use crate::data::digits::DigitSet;
use crate::data::images::{load_rgb, ImageLimits};

/// Mean |p(x+1, y, c) - p(x, y, c)| over the image, in 0-255 levels.
pub fn roughness(img: &RgbImage) -> f64 {
    let (w, h) = img.dimensions();
    if w < 2 || h == 0 {
        return 0.0;
    }
    let raw = img.as_raw();
    let row = 3 * w as usize;
    let mut sum = 0u64;
    for y in 0..h as usize {
        let r = &raw[y * row..(y + 1) * row];
        for k in 3..row {
            sum += u64::from(r[k].abs_diff(r[k - 3]));
        }
    }
    sum as f64 / ((w as usize - 1) * h as usize * 3) as f64
}

/// Indices of the images whose roughness is above `threshold`.
pub fn noisy(images: &[RgbImage], threshold: f64) -> Vec<usize> {
    images.iter().enumerate().filter(|(_, i)| roughness(i) > threshold).map(|(k, _)| k).collect()
}

/// The judge-feature distance of one set of digits to the reference, and its real-data floor.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Distance {
    pub fid: Option<f64>,
    /// The same distance for as many real training digits of the same classes.
    pub floor: Option<f64>,
    pub n: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct JudgeFid {
    pub reference: String,
    pub n_reference: usize,
    pub feature_dim: usize,
    pub overall: Distance,
    /// Per digit 0-9 (`None` where a class has too few images for a covariance).
    pub per_class: Vec<Distance>,
}

/// Reads real digits of `split` from an MNIST-M-style folder: `per_class` of each class (the first ones
/// in the CSV's order; `usize::MAX` for all), with their labels.
pub fn real_digits(dir: &Path, split: &str, per_class: usize) -> Result<RealDigits> {
    let set = DigitSet::open(dir, split)?;
    let mut taken = [0usize; 10];
    let rows: Vec<_> = set
        .rows
        .iter()
        .filter(|r| {
            let c = &mut taken[r.label as usize % 10];
            *c += 1;
            *c <= per_class
        })
        .collect();
    use rayon::prelude::*;
    let limits = ImageLimits::default();
    let images = rows.par_iter().map(|r| load_rgb(&set.path(r), &limits)).collect::<Result<Vec<_>>>()?;
    Ok(RealDigits { images, labels: rows.iter().map(|r| r.label).collect() })
}

/// FID between two feature sets (rows of `dim`), `None` when either has too few rows for pytorch-fid's
/// covariance (fewer than 2).
fn fid(a: &[f32], b: &[f32], dim: usize) -> Result<Option<f64>> {
    let (na, nb) = (a.len() / dim, b.len() / dim);
    if na < 2 || nb < 2 {
        return Ok(None);
    }
    let sa = stats_from_features(a, na, dim)?;
    let sb = stats_from_features(b, nb, dim)?;
    Ok(Some(frechet_distance(&sa, &sb)?.value))
}

fn rows_of(features: &[f32], labels: &[u8], class: u8, dim: usize) -> Vec<f32> {
    labels.iter().enumerate().filter(|(_, &l)| l == class).flat_map(|(i, _)| features[i * dim..(i + 1) * dim].iter().copied()).collect()
}

/// Real digits with their labels.
pub struct RealDigits {
    pub images: Vec<RgbImage>,
    pub labels: Vec<u8>,
}

/// The judge-feature FID of `generated` (with their intended labels) against the real `val` digits,
/// overall and per class, each with the floor of as many real `train` digits per class.
pub fn judge_fid(
    generated: &[RgbImage],
    labels: &[u8],
    fx: &mut DigitFeatures,
    val: &RealDigits,
    train: &RealDigits,
    reference: &Path,
) -> Result<JudgeFid> {
    let dim = fx.dim;
    let (f_gen, _) = fx.features(generated)?;
    let (f_val, _) = fx.features(&val.images)?;
    let (f_train, _) = fx.features(&train.images)?;
    // The floor draws real training digits in the generated set's class proportions.
    let mut floor_rows = Vec::new();
    let mut per_class = Vec::with_capacity(10);
    for c in 0..10u8 {
        let g = rows_of(&f_gen, labels, c, dim);
        let v = rows_of(&f_val, &val.labels, c, dim);
        let t = rows_of(&f_train, &train.labels, c, dim);
        let n = g.len() / dim;
        let t = &t[..t.len().min(n * dim)];
        floor_rows.extend_from_slice(t);
        per_class.push(Distance { fid: fid(&g, &v, dim)?, floor: fid(t, &v, dim)?, n });
    }
    let overall = Distance { fid: fid(&f_gen, &f_val, dim)?, floor: fid(&floor_rows, &f_val, dim)?, n: generated.len() };
    Ok(JudgeFid { reference: reference.display().to_string(), n_reference: val.images.len(), feature_dim: dim, overall, per_class })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roughness_of_flat_striped_and_noisy_images() {
        let flat = RgbImage::from_pixel(28, 28, image::Rgb([120, 30, 200]));
        assert_eq!(roughness(&flat), 0.0);
        // Columns alternating 0 / 255 in every channel: every neighbour differs by 255.
        let stripes = RgbImage::from_fn(28, 28, |x, _| if x % 2 == 0 { image::Rgb([0; 3]) } else { image::Rgb([255; 3]) });
        assert_eq!(roughness(&stripes), 255.0);
        // Uniform random levels: E|U - V| = 256/3 ~ 85 for independent U, V uniform on 0..=255.
        let mut s = 12345u64;
        let noise = RgbImage::from_fn(28, 28, |_, _| {
            let mut c = [0u8; 3];
            for v in &mut c {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                *v = (s >> 56) as u8;
            }
            image::Rgb(c)
        });
        let r = roughness(&noise);
        assert!((75.0..95.0).contains(&r), "{r}");
        assert_eq!(noisy(&[flat, stripes, noise], 40.0), vec![1, 2]);
    }

    #[test]
    fn roughness_looks_only_at_horizontal_neighbours() {
        // Rows alternating: no horizontal difference at all.
        let rows = RgbImage::from_fn(10, 10, |_, y| if y % 2 == 0 { image::Rgb([0; 3]) } else { image::Rgb([255; 3]) });
        assert_eq!(roughness(&rows), 0.0);
        // A single vertical edge: one step of 90 levels in 9 neighbour pairs per row.
        let edge = RgbImage::from_fn(10, 4, |x, _| if x < 5 { image::Rgb([10; 3]) } else { image::Rgb([100; 3]) });
        assert!((roughness(&edge) - 10.0).abs() < 1e-12);
        assert_eq!(roughness(&RgbImage::new(1, 5)), 0.0);
    }
}
