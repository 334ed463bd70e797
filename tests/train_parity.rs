//! Every architecture's export matches libtorch: the `train` binary (tch) writes seeded weights and
//! its outputs on seeded inputs; the weights go through the exporter (`grade convert`, tch-free) and
//! both tract and ONNX Runtime must reproduce tch's outputs within 1e-4; every contract model passes
//! `grade check`. Needs the cargo feature `train` (libtorch from scripts/install-libtorch.sh).
#![cfg(feature = "train")]

mod common;

use std::process::Command;

use gradekit::checkpoint::safetensors::Checkpoint;
use gradekit::onnx::{ModelFile, ModelLimits};
use gradekit::runtime::{self, BackendChoice, Input, RuntimeOptions};
use gradekit::tasks::convert::{convert, ConvertKind, ConvertOptions};

fn train_bin() -> &'static str {
    env!("CARGO_BIN_EXE_train")
}

/// Runs `train parity`, exports, and compares; returns the largest difference seen.
fn parity(
    kind: &str,
    convert_kind: ConvertKind,
    width: usize,
    batches: &[usize],
    input: &str,
    output: &str,
    contract: Option<&str>,
) -> f32 {
    common::ort_library();
    let dir = tempfile::tempdir().unwrap();
    let b: Vec<String> = batches.iter().map(|b| b.to_string()).collect();
    let st = Command::new(train_bin())
        .args(["parity", kind, "--out"])
        .arg(dir.path())
        .args(["--width", &width.to_string(), "--batches", &b.join(","), "--seed", "11"])
        .status()
        .unwrap();
    assert!(st.success(), "train parity {kind} failed");
    let onnx = dir.path().join("model.onnx");
    convert(convert_kind, &dir.path().join("weights.safetensors"), &onnx, &ConvertOptions::default()).unwrap();
    let io = Checkpoint::read(&dir.path().join("io.safetensors")).unwrap();
    let file = ModelFile::open(&onnx, &ModelLimits::default()).unwrap();
    let mut worst = 0f32;
    for backend in [BackendChoice::Tract, BackendChoice::Ort] {
        let mut e = runtime::open(&file, &RuntimeOptions { backend, ..Default::default() }).unwrap();
        for &n in batches {
            let x = &io.tensors[&format!("b{n}.x")];
            let want = &io.tensors[&format!("b{n}.out")];
            let t: Vec<i64> = io.tensors[&format!("b{n}.t")].data.iter().map(|&v| v as i64).collect();
            let l: Vec<i64> = io.tensors[&format!("b{n}.label")].data.iter().map(|&v| v as i64).collect();
            let mut inputs = vec![Input::f32(input, &x.shape, &x.data)];
            if convert_kind == ConvertKind::Unet {
                inputs.push(Input::i64("t", &[n], &t));
                inputs.push(Input::i64("label", &[n], &l));
            }
            let got = e.run(&inputs, output).unwrap();
            assert_eq!(got.shape, want.shape, "{kind} {backend:?} batch {n}: output shape");
            let max = got.data.iter().zip(&want.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            let scale = want.data.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(scale > 1e-3, "{kind}: tch output is all zeros, the comparison would prove nothing");
            assert!(max <= 1e-4, "{kind} {backend:?} batch {n}: max |onnx - tch| = {max} (largest output {scale})");
            eprintln!("{kind} width {width} {backend:?} batch {n}: max |diff| {max:.2e}, largest output {scale:.3}");
            worst = worst.max(max);
        }
    }
    if let Some(c) = contract {
        let out = Command::new(env!("CARGO_BIN_EXE_grade"))
            .args(["check"])
            .arg(&onnx)
            .args(["--kind", c, "--backend", "tract"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "grade check {kind}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    worst
}

#[test]
fn classifier_export_matches_tch() {
    parity("classifier", ConvertKind::Classifier, 16, &[1, 5], "image", "logits", Some("classifier"));
}

#[test]
fn dann_export_matches_tch() {
    parity("dann", ConvertKind::Dann, 16, &[1, 5], "image", "logits", Some("classifier"));
}

#[test]
fn generator_export_matches_tch() {
    parity("generator", ConvertKind::Generator, 16, &[1, 5], "z", "image", Some("generator"));
}

#[test]
fn discriminator_and_critic_exports_match_tch() {
    parity("discriminator", ConvertKind::Discriminator, 16, &[1, 5], "image", "score", None);
    parity("critic", ConvertKind::Critic, 16, &[1, 5], "image", "score", None);
}

#[test]
fn unet_export_matches_tch_at_batch_1_and_7_with_mixed_timesteps_and_labels() {
    parity("unet", ConvertKind::Unet, 16, &[1, 7], "x", "eps", Some("noise"));
}

#[test]
fn seed_width_unet_export_matches_tch() {
    parity("unet", ConvertKind::Unet, 64, &[1, 7], "x", "eps", Some("noise"));
}
