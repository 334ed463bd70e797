//! Noise-model evaluations per second, side by side: tract, ONNX Runtime (basic and all graph
//! optimisations) and PyTorch eager on the same architecture (scripts/reference/bench_unet.py, when
//! the test venv .mldeps/torch exists). One "evaluation" is one image through the UNet once.
//!
//!   cargo run --release --example bench_noise -- MODEL.onnx [IMAGES_PER_CALL (default 100)] [CALLS (default 4)]
//!
//! IMAGES_PER_CALL is the rows of one model call: `grade ddpm` with guidance sends 2 x --batch rows.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use gradekit::onnx::{Contract, ModelFile, ModelKind, ModelLimits};
use gradekit::runtime::{self, BackendChoice, Input, OrtOpt, RuntimeOptions};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args.first().context("usage: bench_noise MODEL.onnx [IMAGES_PER_CALL] [CALLS]")?;
    let rows: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(100);
    let calls: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(4);
    let file = ModelFile::open(Path::new(model), &ModelLimits::default())?;
    let contract = Contract::resolve(&file, ModelKind::Noise, &Default::default());
    contract.ensure_ok(&file)?;
    let width = contract.meta("width").unwrap_or("64").to_string();
    let [c, h, w] = [3usize, 28, 28];
    // Inputs like a mid-run sampling call: noise, one timestep, labels with the null label mixed in.
    let x: Vec<f32> = (0..rows * c * h * w).map(|k| ((k as f32) * 0.618).sin()).collect();
    let t = vec![500i64; rows];
    let labels: Vec<i64> = (0..rows as i64).map(|i| i % 11).collect();
    println!("model {model} (width {width}), {rows} images per call, {calls} timed calls after one warm-up call");
    let mut table = vec![];
    let cases: Vec<(&str, RuntimeOptions)> = vec![
        ("tract", RuntimeOptions { backend: BackendChoice::Tract, ..Default::default() }),
        ("ort (basic)", RuntimeOptions { backend: BackendChoice::Ort, ort_opt: Some(OrtOpt::Basic), ..Default::default() }),
        ("ort (all)", RuntimeOptions { backend: BackendChoice::Ort, ort_opt: Some(OrtOpt::All), ..Default::default() }),
    ];
    for (name, opts) in cases {
        let mut e = match runtime::open(&file, &opts) {
            Ok(e) => e,
            Err(err) => {
                println!("{name:<16} skipped: {err:#}");
                continue;
            }
        };
        let inputs = [
            Input::f32(&contract.inputs[0], &[rows, c, h, w], &x),
            Input::i64(&contract.inputs[1], &[rows], &t),
            Input::i64(&contract.inputs[2], &[rows], &labels),
        ];
        e.run(&inputs, &contract.output)?;
        let t0 = Instant::now();
        for _ in 0..calls {
            e.run(&inputs, &contract.output)?;
        }
        let eps = (rows * calls) as f64 / t0.elapsed().as_secs_f64();
        println!("{name:<16} {eps:7.1} evaluations/s");
        table.push((name.to_string(), eps));
    }
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join(".mldeps/torch/bin/python");
    if py.is_file() {
        let out = std::process::Command::new(&py)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/reference/bench_unet.py"))
            .args([&width, &rows.to_string(), &calls.to_string()])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        match text.trim().parse::<f64>() {
            Ok(eps) if out.status.success() => {
                println!("{:<16} {eps:7.1} evaluations/s", "pytorch eager");
                table.push(("pytorch eager".into(), eps));
            }
            _ => println!("pytorch eager    failed: {}", String::from_utf8_lossy(&out.stderr)),
        }
    } else {
        println!("pytorch eager    skipped: no .mldeps/torch (bash scripts/install-torch.sh)");
    }
    println!("\n| runtime | evaluations/s |\n|---|---|");
    for (name, eps) in table {
        println!("| {name} | {eps:.1} |");
    }
    Ok(())
}
