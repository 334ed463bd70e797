//! t-SNE of a DANN's features on source and target validation digits, drawn twice: coloured by class
//! and by domain (as in the seed report). The features come from the trainer's checkpoint through the
//! architecture's own feature extractor (`nn::dann::features_to_onnx`), run by the grader's runtime.
//!
//! cargo run --release --features tsne --example dann_tsne -- CHECKPOINT.safetensors \
//!     data/hw2_data/digits/mnistm data/hw2_data/digits/usps OUT_PREFIX [PER_DOMAIN=500]
//! writes OUT_PREFIX-class.png and OUT_PREFIX-domain.png.

use std::path::PathBuf;

use anyhow::{Context, Result};
use gradekit::data::images::{load_rgb, to_chw, ImageLimits};
use gradekit::data::DigitSet;
use gradekit::runtime::{self, Input, RuntimeOptions};
use gradekit::tasks::convert::{load_state_dict, ConvertKind, ConvertOptions};
use image::{Rgb, RgbImage};

// Ten distinguishable colours (matplotlib's tab10), and source / target.
const CLASS: [[u8; 3]; 10] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
];
const DOMAIN: [[u8; 3]; 2] = [[66, 135, 245], [245, 120, 66]];

fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(a.len() >= 4, "usage: dann_tsne CHECKPOINT SOURCE_DIR TARGET_DIR OUT_PREFIX [PER_DOMAIN]");
    let per: usize = a.get(4).map(|s| s.parse()).transpose()?.unwrap_or(500);
    let mut sd = load_state_dict(ConvertKind::Dann, a[0].as_ref(), &ConvertOptions::default())?;
    let model = gradekit::nn::dann::features_to_onnx(&mut sd)?;
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("features.onnx");
    gradekit::onnx::writer::save(&model, &path)?;
    let file = gradekit::onnx::ModelFile::open(&path, &Default::default())?;
    let mut engine = runtime::open(&file, &RuntimeOptions::default())?;

    // The first PER_DOMAIN validation images of each domain (files sorted by the label CSV's order).
    let mut feats: Vec<f32> = vec![];
    let mut labels = vec![];
    let mut domains = vec![];
    for (d, dir) in [&a[1], &a[2]].into_iter().enumerate() {
        let set = DigitSet::open(&PathBuf::from(dir), "val")?;
        let rows: Vec<_> = set.rows.iter().take(per).collect();
        let mut x = vec![0f32; rows.len() * 3 * 784];
        for (i, r) in rows.iter().enumerate() {
            let img = load_rgb(&set.path(r), &ImageLimits::default())?;
            let img = image::imageops::resize(&img, 28, 28, image::imageops::FilterType::Triangle);
            to_chw(&img, &[0.5; 3], &[0.5; 3], &mut x[i * 3 * 784..(i + 1) * 3 * 784]);
            labels.push(r.label);
            domains.push(d);
        }
        let out = engine.run(&[Input::f32("image", &[rows.len(), 3, 28, 28], &x)], "features")?;
        feats.extend(out.data);
    }
    let dim = gradekit::nn::dann::FEATURES;
    let samples: Vec<&[f32]> = feats.chunks(dim).collect();
    let t = std::time::Instant::now();
    let mut tsne = bhtsne::tSNE::<f32, &[f32], 2>::new(&samples);
    tsne.perplexity(30.0).epochs(1000).barnes_hut(0.5, |p, q| p.iter().zip(q.iter()).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt());
    let emb = tsne.embedding();
    eprintln!("t-SNE of {} points x {dim} features: {:.1} s", samples.len(), t.elapsed().as_secs_f64());

    // How well each picture keeps classes apart: the share of points whose nearest neighbour (other
    // than itself) has the same label, in the features and in the 2-d embedding.
    let nn_agree = |v: &[f32], d: usize| {
        let n = v.len() / d;
        let same = (0..n)
            .filter(|&i| {
                let near = (0..n)
                    .filter(|&j| j != i)
                    .min_by(|&j, &k| {
                        let dist = |m: usize| {
                            v[i * d..(i + 1) * d].iter().zip(&v[m * d..(m + 1) * d]).map(|(x, y)| (x - y) * (x - y)).sum::<f32>()
                        };
                        dist(j).total_cmp(&dist(k))
                    })
                    .unwrap();
                labels[near] == labels[i]
            })
            .count();
        same as f64 / n as f64
    };
    eprintln!(
        "nearest neighbour has the same class: {:.3} in the features, {:.3} in the t-SNE picture",
        nn_agree(&feats, dim),
        nn_agree(&emb, 2)
    );
    let prefix = &a[3];
    draw(&emb, |i| CLASS[labels[i] as usize], true).save(format!("{prefix}-class.png")).context("writing the class picture")?;
    draw(&emb, |i| DOMAIN[domains[i]], false).save(format!("{prefix}-domain.png")).context("writing the domain picture")?;
    eprintln!("wrote {prefix}-class.png and {prefix}-domain.png");
    Ok(())
}

/// Points on a dark 640x640 canvas; with `legend`, a digit-coloured key along the top.
fn draw(emb: &[f32], colour: impl Fn(usize) -> [u8; 3], legend: bool) -> RgbImage {
    let (size, margin) = (640u32, 24u32);
    let mut img = RgbImage::from_pixel(size, size, Rgb([28, 28, 32]));
    let (xs, ys): (Vec<f32>, Vec<f32>) = emb.chunks(2).map(|p| (p[0], p[1])).unzip();
    let range = |v: &[f32]| v.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    let ((x0, x1), (y0, y1)) = (range(&xs), range(&ys));
    let span = (size - 2 * margin) as f32;
    for i in 0..xs.len() {
        let px = margin + ((xs[i] - x0) / (x1 - x0).max(1e-6) * span) as u32;
        let py = margin + ((ys[i] - y0) / (y1 - y0).max(1e-6) * span) as u32;
        let c = Rgb(colour(i));
        for dy in 0..3 {
            for dx in 0..3 {
                if px + dx < size && py + dy < size {
                    img.put_pixel(px + dx, py + dy, c);
                }
            }
        }
    }
    if legend {
        for (d, c) in CLASS.iter().enumerate() {
            let x = 8 + d as u32 * 30;
            for yy in 6..14 {
                for xx in x..x + 8 {
                    img.put_pixel(xx, yy, Rgb(*c));
                }
            }
            gradekit::pictures::draw_text(&mut img, &d.to_string(), x + 11, 6, 2);
        }
    }
    img
}
