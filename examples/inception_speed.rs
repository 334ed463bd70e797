//! Inception features per second on this machine, tract and ONNX Runtime side by side, on the
//! installed FID model (scripts/install-fid-weights.sh). The pytorch-fid figure comes from
//! `python scripts/reference/fid/fid_archive.py bench .mldeps/fid/default_1.pt N`.
//!
//! usage: cargo run --release --example inception_speed -- [IMAGES (default 100)] [MODEL]

use std::time::Instant;

use anyhow::{Context, Result};
use gradekit::metrics::inception::{find_default_inception, InceptionNet, INSTALL_HELP};
use gradekit::runtime::{BackendChoice, RuntimeOptions};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map(|s| s.parse()).transpose().context("IMAGES must be a number")?.unwrap_or(100);
    let model = match args.next() {
        Some(p) => p.into(),
        None => find_default_inception().with_context(|| INSTALL_HELP.to_string())?,
    };
    // 64x64 faces-sized images; the resize to 299 is part of the timed work, as in `grade gan`.
    let imgs: Vec<image::RgbImage> =
        (0..n).map(|i| image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, (i * 7 % 256) as u8]))).collect();
    for backend in [BackendChoice::Tract, BackendChoice::Ort] {
        let mut net = InceptionNet::open(&model, &RuntimeOptions { backend, ..Default::default() }, 50)?;
        net.features(&imgs[..2.min(n)])?; // warm-up: plan building and first allocations
        let t = Instant::now();
        net.features(&imgs)?;
        let s = t.elapsed().as_secs_f64();
        println!("{:<40} {n} images in {s:.1} s: {:.2} images/s", net.engine_info().to_string(), n as f64 / s);
    }
    Ok(())
}
