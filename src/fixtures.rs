//! Fixtures the project makes itself: synthetic digit folders in the homework's layout and small ONNX
//! models written by the ONNX writer. `grade make-fixtures` writes the committed copies in
//! `fixtures/`; a test regenerates them and checks they are byte-identical.

use std::path::Path;

use anyhow::Result;
use image::{GrayImage, Luma, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use tract_onnx::pb::ModelProto;

use crate::onnx::writer::{Attr, Dim, Elem, GraphBuilder};
use crate::report::write_atomic;

/// 5x7 bitmaps of the digits 0-9.
const FONT: [[&str; 7]; 10] = [
    [".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."],
    ["..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."],
    [".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"],
    ["####.", "....#", "....#", ".###.", "....#", "....#", "####."],
    ["...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."],
    ["#####", "#....", "####.", "....#", "....#", "#...#", ".###."],
    [".###.", "#....", "#....", "####.", "#...#", "#...#", ".###."],
    ["#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."],
    [".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."],
    [".###.", "#...#", "#...#", ".####", "....#", "....#", ".###."],
];

/// Stroke intensity in [0,1] of digit `d` drawn 3x scaled at offset (ox, oy) on a 28x28 canvas.
fn stroke(d: u8, ox: i32, oy: i32) -> Vec<f32> {
    let mut m = vec![0f32; 28 * 28];
    for (r, row) in FONT[d as usize].iter().enumerate() {
        for (c, ch) in row.bytes().enumerate() {
            if ch != b'#' {
                continue;
            }
            for dy in 0..3 {
                for dx in 0..3 {
                    let (x, y) = (ox + c as i32 * 3 + dx, oy + r as i32 * 3 + dy);
                    if (0..28).contains(&x) && (0..28).contains(&y) {
                        m[(y * 28 + x) as usize] = 1.0;
                    }
                }
            }
        }
    }
    m
}

/// The look of a synthetic digit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigitStyle {
    /// White digits on black, one channel (like USPS).
    Grey,
    /// Coloured digits on coloured, noisy backgrounds (like MNIST-M); the stroke is always brighter.
    Colour,
}

pub enum DigitImage {
    Grey(GrayImage),
    Colour(RgbImage),
}

impl DigitImage {
    pub fn to_rgb(&self) -> RgbImage {
        match self {
            DigitImage::Grey(g) => image::DynamicImage::ImageLuma8(g.clone()).to_rgb8(),
            DigitImage::Colour(c) => c.clone(),
        }
    }
}

pub fn synthetic_digit(d: u8, style: DigitStyle, rng: &mut ChaCha8Rng) -> DigitImage {
    let (ox, oy) = (rng.random_range(5..=8), rng.random_range(2..=5));
    let m = stroke(d, ox, oy);
    let noise = |rng: &mut ChaCha8Rng, s: f32| -> f32 {
        let z: f32 = StandardNormal.sample(rng);
        s * z
    };
    let to_u8 = |v: f32| (v.clamp(0.0, 1.0) * 255.0).round() as u8;
    match style {
        DigitStyle::Grey => {
            let mut g = GrayImage::new(28, 28);
            for (i, p) in g.pixels_mut().enumerate() {
                let n = noise(rng, 0.08);
                *p = Luma([to_u8(m[i] * 0.9 + 0.05 + n)]);
            }
            DigitImage::Grey(g)
        }
        DigitStyle::Colour => {
            let bg: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.0..0.45));
            let fg: [f32; 3] = std::array::from_fn(|_| rng.random_range(0.6..1.0));
            let mut img = RgbImage::new(28, 28);
            for (i, p) in img.pixels_mut().enumerate() {
                let n = noise(rng, 0.06);
                *p = Rgb(std::array::from_fn(|c| to_u8(bg[c] + (fg[c] - bg[c]) * m[i] + n)));
            }
            DigitImage::Colour(img)
        }
    }
}

fn png_bytes(img: &DigitImage) -> Result<Vec<u8>> {
    let mut buf = std::io::Cursor::new(Vec::new());
    match img {
        DigitImage::Grey(g) => g.write_to(&mut buf, image::ImageFormat::Png)?,
        DigitImage::Colour(c) => c.write_to(&mut buf, image::ImageFormat::Png)?,
    }
    Ok(buf.into_inner())
}

/// Writes a digit folder in the homework's layout: `data/*.png`, `train.csv`, `val.csv`.
pub fn write_digit_folder(dir: &Path, style: DigitStyle, train_per_class: usize, val_per_class: usize, seed: u64) -> Result<()> {
    std::fs::create_dir_all(dir.join("data"))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut idx = 0;
    for (split, per_class) in [("train", train_per_class), ("val", val_per_class)] {
        let mut csv = String::from("image_name,label\n");
        for k in 0..per_class * 10 {
            let d = (k % 10) as u8;
            let name = format!("{idx:05}.png");
            idx += 1;
            let img = synthetic_digit(d, style, &mut rng);
            write_atomic(&dir.join("data").join(&name), &png_bytes(&img)?)?;
            csv.push_str(&format!("{name},{d}\n"));
        }
        write_atomic(&dir.join(format!("{split}.csv")), csv.as_bytes())?;
    }
    Ok(())
}

fn gaussian(rng: &mut ChaCha8Rng, n: usize, std: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let z: f32 = StandardNormal.sample(rng);
            std * z
        })
        .collect()
}

/// The course's LeNet digit classifier (digit_classifier.py) with seeded random weights, exported to
/// the classifier contract from the one definition in `nn::lenet`.
pub fn lenet_random(seed: u64) -> ModelProto {
    crate::nn::lenet::to_onnx(&mut crate::nn::weights::SeededInit::new(seed)).expect("seeded weights always fit")
}

/// A nearest-centroid classifier that really works on the synthetic digits: grey = mean of channels,
/// minus its own mean (so background colour does not matter), then a linear layer whose rows are the
/// class centroids of `train` (argmax of x.c - |c|^2/2 is the nearest centroid).
pub fn template_classifier(train: &[(RgbImage, u8)]) -> ModelProto {
    let feature = |img: &RgbImage| -> Vec<f32> {
        let grey: Vec<f32> = img.pixels().map(|p| p.0.iter().map(|&v| (v as f32 / 255.0 - 0.5) / 0.5).sum::<f32>() / 3.0).collect();
        let mean = grey.iter().sum::<f32>() / grey.len() as f32;
        let centred: Vec<f32> = grey.iter().map(|v| v - mean).collect();
        // Same 5x5 box blur as the graph's AveragePool (zero padding counted).
        (0..784)
            .map(|i| {
                let (y, x) = ((i / 28), (i % 28));
                let mut sum = 0.0;
                for dy in -2..=2 {
                    for dx in -2..=2 {
                        let (yy, xx) = (y + dy, x + dx);
                        if (0..28).contains(&yy) && (0..28).contains(&xx) {
                            sum += centred[(yy * 28 + xx) as usize];
                        }
                    }
                }
                sum / 25.0
            })
            .collect()
    };
    let mut centroids = vec![vec![0f32; 784]; 10];
    let mut counts = [0usize; 10];
    for (img, d) in train {
        for (c, v) in centroids[*d as usize].iter_mut().zip(feature(img)) {
            *c += v;
        }
        counts[*d as usize] += 1;
    }
    let mut w = vec![];
    let mut b = vec![];
    for (c, n) in centroids.iter_mut().zip(counts) {
        c.iter_mut().for_each(|v| *v /= n.max(1) as f32);
        b.push(-0.5 * c.iter().map(|v| v * v).sum::<f32>());
        w.extend_from_slice(c);
    }
    let mut g = GraphBuilder::new("template_classifier");
    let x = g.input("image", Elem::F32, &[Dim::Symbol("N"), Dim::Fixed(3), Dim::Fixed(28), Dim::Fixed(28)]);
    let gw = g.weight("grey.weight", &[1, 3, 1, 1], &[1.0 / 3.0; 3]);
    let grey = g.node("Conv", &[&x, &gw], &[Attr::Ints("kernel_shape", vec![1, 1])]);
    let mean = g.node("ReduceMean", &[&grey], &[Attr::Ints("axes", vec![2, 3]), Attr::Int("keepdims", 1)]);
    let centred = g.node("Sub", &[&grey, &mean], &[]);
    // A 5x5 blur makes the templates tolerant of the digits' few pixels of jitter.
    let blurred = g.node(
        "AveragePool",
        &[&centred],
        &[Attr::Ints("kernel_shape", vec![5, 5]), Attr::Ints("pads", vec![2, 2, 2, 2]), Attr::Int("count_include_pad", 1)],
    );
    let flat = g.node("Flatten", &[&blurred], &[Attr::Int("axis", 1)]);
    let fw = g.weight("fc.weight", &[10, 784], &w);
    let fb = g.weight("fc.bias", &[10], &b);
    let y = g.node("Gemm", &[&flat, &fw, &fb], &[Attr::Int("transB", 1)]);
    g.output("logits", &y, Elem::F32, &[Dim::Symbol("N"), Dim::Fixed(10)]);
    g.metadata("kind", "classifier");
    g.metadata("input_mean", "0.5,0.5,0.5");
    g.metadata("input_std", "0.5,0.5,0.5");
    g.metadata("description", "nearest-centroid classifier for the synthetic fixture digits");
    g.build()
}

/// Writes every committed fixture under `root` (normally `fixtures/`).
pub fn make_all(root: &Path) -> Result<()> {
    write_digit_folder(&root.join("digits/usps"), DigitStyle::Grey, 10, 20, 1)?;
    write_digit_folder(&root.join("digits/mnistm"), DigitStyle::Colour, 10, 20, 2)?;
    std::fs::create_dir_all(root.join("models"))?;
    crate::onnx::writer::save(&lenet_random(7), &root.join("models/lenet-random.onnx"))?;
    // The template model learns from a separate seeded draw of both styles, never from the val images.
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let mut train = vec![];
    for k in 0..400 {
        let style = if k % 2 == 0 { DigitStyle::Grey } else { DigitStyle::Colour };
        let d = (k / 2 % 10) as u8;
        train.push((synthetic_digit(d, style, &mut rng).to_rgb(), d));
    }
    crate::onnx::writer::save(&template_classifier(&train), &root.join("models/digit-template.onnx"))?;
    crate::onnx::writer::save(&oracle_noise_model(&oracle_targets()), &root.join("models/noise-oracle.onnx"))?;
    crate::onnx::writer::save(&conv_noise_model(5, 16), &root.join("models/noise-conv.onnx"))?;
    // The seed's DCGAN generator at width 8 (the report's is 64) with seeded weights.
    let g = crate::nn::dcgan::to_onnx(&mut crate::nn::weights::SeededInit::new(11), 8)?;
    crate::onnx::writer::save(&g, &root.join("models/dcgan-w8.onnx"))?;
    Ok(())
}

/// The schedule every fixture noise model declares (the seed's: linear 1e-4..0.02, T = 1000).
pub const T: usize = 1000;

fn linear_alpha_bars() -> Vec<f64> {
    let mut ab = 1.0f64;
    (0..T)
        .map(|i| {
            let beta = 1e-4 + (0.02 - 1e-4) * i as f64 / (T - 1) as f64;
            ab *= 1.0 - beta;
            ab
        })
        .collect()
}

fn noise_ports(g: &mut GraphBuilder) -> (String, String, String) {
    let n = Dim::Symbol("N");
    let x = g.input("x", Elem::F32, &[n.clone(), Dim::Fixed(3), Dim::Fixed(28), Dim::Fixed(28)]);
    let t = g.input("t", Elem::I64, std::slice::from_ref(&n));
    let l = g.input("label", Elem::I64, &[n]);
    (x, t, l)
}

fn noise_metadata(g: &mut GraphBuilder) {
    g.metadata("kind", "noise");
    g.metadata("schedule", "linear");
    g.metadata("beta_start", "0.0001");
    g.metadata("beta_end", "0.02");
    g.metadata("timesteps", T);
    g.metadata("num_classes", 10);
    g.metadata("null_label", 10);
    g.metadata("guidance_scale", 1);
}

/// The "oracle" noise model: for label `l` it knows a target image `x0[l]` and returns the exact noise
/// `(x - sqrt(ab_t) x0[l]) / sqrt(1 - ab_t)`. A deterministic DDIM run (eta = 0) must therefore land on
/// the targets: a closed-form check of the samplers through a real ONNX graph. The null label (10)
/// targets the mean of the ten images.
pub fn oracle_noise_model(targets: &[Vec<f32>]) -> ModelProto {
    assert_eq!(targets.len(), 10);
    let ab = linear_alpha_bars();
    let sqrt_ab: Vec<f32> = ab.iter().map(|a| a.sqrt() as f32).collect();
    let sqrt_1mab: Vec<f32> = ab.iter().map(|a| (1.0 - a).sqrt() as f32).collect();
    let mut table: Vec<f32> = targets.concat();
    let mean: Vec<f32> = (0..3 * 784).map(|i| targets.iter().map(|t| t[i]).sum::<f32>() / 10.0).collect();
    table.extend(mean);
    let mut g = GraphBuilder::new("oracle_noise");
    let (x, t, l) = noise_ports(&mut g);
    let sa = g.weight("sqrt_alpha_bar", &[T], &sqrt_ab);
    let s1 = g.weight("sqrt_one_minus_alpha_bar", &[T], &sqrt_1mab);
    let x0 = g.weight("targets", &[11, 3, 28, 28], &table);
    let shape = g.const_i64("bcast_shape", &[4], &[-1, 1, 1, 1]);
    let a = g.node("Gather", &[&sa, &t], &[Attr::Int("axis", 0)]);
    let a = g.node("Reshape", &[&a, &shape], &[]);
    let b = g.node("Gather", &[&s1, &t], &[Attr::Int("axis", 0)]);
    let b = g.node("Reshape", &[&b, &shape], &[]);
    let target = g.node("Gather", &[&x0, &l], &[Attr::Int("axis", 0)]);
    let scaled = g.node("Mul", &[&a, &target], &[]);
    let diff = g.node("Sub", &[&x, &scaled], &[]);
    let eps = g.node("Div", &[&diff, &b], &[]);
    g.output("eps", &eps, Elem::F32, &[Dim::Symbol("N"), Dim::Fixed(3), Dim::Fixed(28), Dim::Fixed(28)]);
    noise_metadata(&mut g);
    g.metadata("description", "oracle noise model: returns the exact noise towards fixed digit images");
    g.build()
}

/// A small convolutional noise model with seeded random weights and time/label embeddings: the
/// shape of real work (convolutions at 28x28 for every sample and step) for timing and budget tests.
pub fn conv_noise_model(seed: u64, width: usize) -> ModelProto {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut g = GraphBuilder::new("conv_noise");
    let (x, t, l) = noise_ports(&mut g);
    let c = width;
    let t_emb = g.weight("time_emb.weight", &[T, c], &gaussian(&mut rng, T * c, 0.1));
    let l_emb = g.weight("label_emb.weight", &[11, c], &gaussian(&mut rng, 11 * c, 0.1));
    let shape = g.const_i64("emb_shape", &[4], &[-1, c as i64, 1, 1]);
    let te = g.node("Gather", &[&t_emb, &t], &[Attr::Int("axis", 0)]);
    let le = g.node("Gather", &[&l_emb, &l], &[Attr::Int("axis", 0)]);
    let emb = g.node("Add", &[&te, &le], &[]);
    let emb = g.node("Reshape", &[&emb, &shape], &[]);
    let mut conv = |g: &mut GraphBuilder, x: &str, name: &str, cin: usize, cout: usize| {
        let w =
            g.weight(&format!("{name}.weight"), &[cout, cin, 3, 3], &gaussian(&mut rng, cout * cin * 9, (1.0 / (cin * 9) as f32).sqrt()));
        let b = g.weight(&format!("{name}.bias"), &[cout], &vec![0.0; cout]);
        g.node("Conv", &[x, &w, &b], &[Attr::Ints("kernel_shape", vec![3, 3]), Attr::Ints("pads", vec![1, 1, 1, 1])])
    };
    let h = conv(&mut g, &x, "conv_in", 3, c);
    let h = g.node("Add", &[&h, &emb], &[]);
    let h = g.node("Relu", &[&h], &[]);
    let h = conv(&mut g, &h, "conv_mid", c, c);
    let h = g.node("Relu", &[&h], &[]);
    let h = conv(&mut g, &h, "conv_out", c, 3);
    g.output("eps", &h, Elem::F32, &[Dim::Symbol("N"), Dim::Fixed(3), Dim::Fixed(28), Dim::Fixed(28)]);
    noise_metadata(&mut g);
    g.build()
}

/// The ten target images of the oracle (one colour digit per class), in [-1, 1] CHW.
pub fn oracle_targets() -> Vec<Vec<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(2024);
    (0..10u8)
        .map(|d| {
            let img = synthetic_digit(d, DigitStyle::Colour, &mut rng).to_rgb();
            let mut v = vec![0f32; 3 * 784];
            crate::data::images::to_chw(&img, &[0.5; 3], &[0.5; 3], &mut v);
            v
        })
        .collect()
}
