//! Training data in memory: every image decoded once, in parallel on all cores (rayon), into one
//! uint8 tensor [N, 3, H, W]; batches are random index selections from it, scaled to [-1, 1]
//! (= normalised with mean 0.5, std 0.5, as the graders feed the exported models).

use std::path::Path;

use anyhow::{bail, Context, Result};
use gradekit::data::digits::DigitSet;
use gradekit::data::images::{fit_size, list_images, load_rgb, ImageLimits};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

pub struct ImageSet {
    /// [N, 3, H, W] uint8 on the training device.
    pub images: Tensor,
    /// [N] int64 digit labels (empty for unlabelled folders).
    pub labels: Option<Tensor>,
    pub len: usize,
    pub origin: String,
}

fn decode_all(paths: &[std::path::PathBuf], size: u32, what: &str) -> Result<Vec<u8>> {
    let limits = ImageLimits::default();
    let pb = gradekit::progress::bar(paths.len() as u64, what);
    let per = (3 * size * size) as usize;
    let chunks: Vec<Vec<u8>> = paths
        .par_iter()
        .map(|p| {
            let img = load_rgb(p, &limits)?;
            let img = fit_size(img, size, size, false, p)?;
            let mut out = vec![0u8; per];
            let plane = (size * size) as usize;
            for (i, px) in img.pixels().enumerate() {
                for c in 0..3 {
                    out[c * plane + i] = px.0[c];
                }
            }
            pb.inc(1);
            Ok(out)
        })
        .collect::<Result<_>>()?;
    pb.finish_and_clear();
    Ok(chunks.concat())
}

fn to_tensor(bytes: &[u8], n: usize, size: u32, device: Device) -> Tensor {
    Tensor::from_slice(bytes).reshape([n as i64, 3, size as i64, size as i64]).to_device(device)
}

/// Every image of a folder (faces), at most `limit`, sorted by name then optionally subsampled.
pub fn image_folder(dir: &Path, size: u32, limit: Option<usize>, device: Device) -> Result<ImageSet> {
    let mut paths = list_images(dir).with_context(|| format!("reading the training folder {}", dir.display()))?;
    if paths.is_empty() {
        bail!("{}: no images (png/jpg/bmp) found; pass --data with the training folder", dir.display());
    }
    if let Some(l) = limit {
        paths.truncate(l);
    }
    let bytes = decode_all(&paths, size, "decoding")?;
    Ok(ImageSet { images: to_tensor(&bytes, paths.len(), size, device), labels: None, len: paths.len(), origin: dir.display().to_string() })
}

/// A digit folder's split (`train`/`val`), 28x28 RGB (greyscale replicated), with labels.
pub fn digit_split(dir: &Path, split: &str, limit: Option<usize>, device: Device) -> Result<ImageSet> {
    let set = DigitSet::open(dir, split)?;
    let mut rows = set.rows.clone();
    if let Some(l) = limit {
        rows.truncate(l);
    }
    let paths: Vec<_> = rows.iter().map(|r| set.path(r)).collect();
    let bytes = decode_all(&paths, 28, split)?;
    let labels: Vec<i64> = rows.iter().map(|r| r.label as i64).collect();
    Ok(ImageSet {
        images: to_tensor(&bytes, paths.len(), 28, device),
        labels: Some(Tensor::from_slice(&labels).to_device(device)),
        len: paths.len(),
        origin: format!("{}/{split}.csv", dir.display()),
    })
}

/// Epoch-wise shuffled batches of indices, seeded (a resumed run reseeds from its step).
pub struct Batches {
    rng: ChaCha8Rng,
    order: Vec<i64>,
    pos: usize,
    n: usize,
    pub epoch: usize,
}

impl Batches {
    pub fn new(n: usize, seed: u64) -> Batches {
        Batches { rng: ChaCha8Rng::seed_from_u64(seed), order: Vec::new(), pos: n, n, epoch: 0 }
    }

    /// Skips `count` batches (a resumed run sees the batches it would have seen).
    pub fn skip(&mut self, count: i64, batch: usize) {
        for _ in 0..count {
            self.next(batch);
        }
    }

    /// The next `batch` indices (a partial tail is dropped, as `drop_last=True`).
    pub fn next(&mut self, batch: usize) -> Vec<i64> {
        let batch = batch.min(self.n);
        if self.pos + batch > self.order.len() {
            self.order = (0..self.n as i64).collect();
            self.order.shuffle(&mut self.rng);
            self.pos = 0;
            self.epoch += 1;
        }
        let b = self.order[self.pos..self.pos + batch].to_vec();
        self.pos += batch;
        b
    }
}

impl ImageSet {
    /// Images [B, 3, H, W] in [-1, 1] and labels for the given indices.
    pub fn batch(&self, idx: &[i64]) -> (Tensor, Option<Tensor>) {
        let i = Tensor::from_slice(idx).to_device(self.images.device());
        let x = self.images.index_select(0, &i).to_kind(Kind::Float) / 127.5 - 1.0;
        (x, self.labels.as_ref().map(|l| l.index_select(0, &i)))
    }
}

/// Colour augmentation of a batch in [-1, 1], per image and independently: greyscale (ITU-R 601
/// luma, replicated to three channels) with probability 1/2, negated (colours inverted) with
/// probability 1/2. Digit identity survives both, and they span exactly how the targets differ from
/// MNIST-M: USPS is grey, SVHN has light-on-dark and dark-on-light digits. Drawn from libtorch's
/// generator, which the trainer seeds per step (a resumed run augments as an uninterrupted one).
pub fn colour_augment(x: &Tensor) -> Tensor {
    let n = x.size()[0];
    let opts = (Kind::Float, x.device());
    let grey = greyscale(x);
    let g = Tensor::rand([n, 1, 1, 1], opts).lt(0.5).to_kind(Kind::Float);
    let mixed = &grey * &g + x * (1.0 - &g);
    let sign = Tensor::rand([n, 1, 1, 1], opts).lt(0.5).to_kind(Kind::Float) * 2.0 - 1.0;
    mixed * sign
}

/// [N, 3, H, W] images as their ITU-R 601 luma, replicated to three channels.
fn greyscale(x: &Tensor) -> Tensor {
    let luma = Tensor::from_slice(&[0.299f32, 0.587, 0.114]).to_device(x.device()).view([1, 3, 1, 1]);
    (x * luma).sum_dim_intlist([1i64].as_slice(), true, Kind::Float).expand_as(x)
}

/// Zoom augmentation of a batch, per image: a random square crop of side 28 / s, s uniform in
/// [1, 1.5], placed uniformly inside the image and resized back (bilinear). MNIST-M centres its
/// digits in 20 of the 28 pixels; USPS and SVHN crops are tight around the digit, which fills the
/// height: zooming by up to 1.5 spans that. The crop stays inside the image, so nothing is padded.
pub fn zoom_augment(x: &Tensor) -> Tensor {
    let n = x.size()[0];
    let opts = (Kind::Float, x.device());
    let inv = 1.0 - Tensor::rand([n], opts) * (1.0 - 1.0 / 1.5); // 1 / s in [2/3, 1]
    let room = 1.0 - &inv; // the crop's centre may move this far (normalised coordinates)
    let tx = (Tensor::rand([n], opts) * 2.0 - 1.0) * &room;
    let ty = (Tensor::rand([n], opts) * 2.0 - 1.0) * &room;
    let zero = Tensor::zeros([n], opts);
    let theta = Tensor::stack(&[&inv, &zero, &tx, &zero, &inv, &ty], 1).view([n, 2, 3]);
    let grid = Tensor::affine_grid_generator(&theta, x.size(), false);
    // interpolation 0 = bilinear, padding 1 = border (never reached: the crop is inside)
    x.grid_sampler(&grid, 0, 1, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every augmented image is the original, its greyscale, or either one negated, and all four
    /// occur; values stay in [-1, 1].
    #[test]
    fn colour_augment_greys_and_inverts_whole_images() {
        tch::manual_seed(3);
        let x = Tensor::rand([256, 3, 4, 4], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let y = colour_augment(&x);
        assert_eq!(y.size(), x.size());
        let grey = greyscale(&x);
        let mut seen = [0usize; 4];
        for i in 0..256 {
            let yi = y.get(i);
            let close = |t: &Tensor| f64::try_from((&yi - t).abs().max()).unwrap() < 1e-6;
            let k = [x.get(i), -x.get(i), grey.get(i), -grey.get(i)].iter().position(close);
            seen[k.unwrap_or_else(|| panic!("image {i} is none of the four colourings"))] += 1;
        }
        assert!(seen.iter().all(|&n| n > 30), "colourings drawn {seen:?} of 256");
        assert!(f64::try_from(y.abs().max()).unwrap() <= 1.0 + 1e-6);
    }

    /// Zooming keeps the shape and range, never shrinks the content (a centred dot only grows), and
    /// varies per image.
    #[test]
    fn zoom_augment_crops_inside_and_enlarges() {
        tch::manual_seed(4);
        let x = Tensor::full([64, 1, 28, 28], -1.0, (Kind::Float, Device::Cpu));
        let _ = x.narrow(2, 12, 4).narrow(3, 12, 4).fill_(1.0);
        let y = zoom_augment(&x);
        assert_eq!(y.size(), x.size());
        assert!(f64::try_from(y.abs().max()).unwrap() <= 1.0 + 1e-6);
        let ink = |t: &Tensor| (t.gt(0.0)).sum_dim_intlist([1i64, 2, 3].as_slice(), false, Kind::Float);
        let (before, after) = (Vec::<f32>::try_from(ink(&x)).unwrap(), Vec::<f32>::try_from(ink(&y)).unwrap());
        assert!(after.iter().zip(&before).all(|(a, b)| a + 4.0 >= *b), "{after:?}");
        assert!(after.iter().any(|a| *a > 20.0), "no image was zoomed in: {after:?}");
        let first = y.get(0);
        assert!((1..64).any(|i| f64::try_from((&y.get(i) - &first).abs().max()).unwrap() > 0.1), "every image got the same crop");
    }
}
