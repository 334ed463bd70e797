//! Every training command runs a few steps on small fixture data, writes its checkpoint, curves and
//! samples, resumes exactly, and exports a model that passes `grade check` (cargo feature `train`).
#![cfg(feature = "train")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gradekit::checkpoint::safetensors::Checkpoint;

fn train(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_train")).args(args).env("RAYON_NUM_THREADS", "2").output().unwrap();
    out
}

fn ok(args: &[&str]) {
    let out = train(args);
    assert!(out.status.success(), "train {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// 12 face-like 64x64 images (smooth gradients plus a dark ellipse), enough to run GAN steps.
fn face_folder(dir: &Path) -> PathBuf {
    let d = dir.join("faces");
    std::fs::create_dir_all(&d).unwrap();
    for k in 0..12u32 {
        let img = image::RgbImage::from_fn(64, 64, |x, y| {
            let (dx, dy) = (x as f32 - 32.0, y as f32 - 30.0 - k as f32 * 0.3);
            let face = (dx * dx) / 300.0 + (dy * dy) / 500.0 < 1.0;
            let base = (x * 3 + y * 2 + k * 9) as u8;
            if face {
                image::Rgb([200, 160, 130 + k as u8])
            } else {
                image::Rgb([base, 255 - base, 90])
            }
        });
        img.save(d.join(format!("{k:05}.png"))).unwrap();
    }
    d
}

fn grade_check(model: &Path, kind: &str) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_grade")).arg("check").arg(model).args(["--kind", kind, "--backend", "tract"]).output().unwrap();
    assert!(out.status.success(), "grade check {kind}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// The loss log has `want` finite rows for `series`.
fn losses(run: &Path, series: &str) -> Vec<f64> {
    let csv = std::fs::read_to_string(run.join("losses.csv")).unwrap();
    let v: Vec<f64> =
        csv.lines().filter(|l| l.starts_with(&format!("{series},"))).map(|l| l.rsplit(',').next().unwrap().parse().unwrap()).collect();
    assert!(v.iter().all(|x| x.is_finite()), "{series}: non-finite values {v:?}");
    v
}

fn assert_same_tensors(a: &Path, b: &Path, prefix_filter: impl Fn(&str) -> bool) {
    let (a, b) = (Checkpoint::read(a).unwrap(), Checkpoint::read(b).unwrap());
    let mut n = 0;
    for (k, t) in a.tensors.iter().filter(|(k, _)| prefix_filter(k)) {
        let u = &b.tensors[k];
        assert_eq!(t.shape, u.shape, "{k}");
        let max = t.data.iter().zip(&u.data).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(max == 0.0, "{k}: resumed run differs by {max}");
        n += 1;
    }
    assert!(n > 0, "no tensors compared");
}

#[test]
fn dcgan_trains_resumes_exactly_and_exports_a_generator() {
    let dir = tempfile::tempdir().unwrap();
    let faces = face_folder(dir.path());
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let common = ["--data", p(&faces), "--width", "8", "--batch", "4", "--seed", "3", "--save-every", "2"];
    ok(&[&["dcgan", "--out", p(&a), "--steps", "4"][..], &common].concat());
    assert_eq!(losses(&a, "loss_d").len(), 4);
    assert_eq!(losses(&a, "loss_g").len(), 4);
    for f in ["checkpoint.safetensors", "losses.svg", "samples.png", "samples/step_0000002.png", "samples/step_0000004.png"] {
        assert!(a.join(f).is_file(), "{f} missing");
    }
    // Two steps, then resume for two more: the same weights, BatchNorm statistics and Adam moments.
    ok(&[&["dcgan", "--out", p(&b), "--steps", "4", "--stop-at", "2"][..], &common].concat());
    let ck = b.join("checkpoint.safetensors");
    ok(&[&["dcgan", "--out", p(&b), "--steps", "4", "--resume", p(&ck)][..], &common].concat());
    assert_same_tensors(&a.join("checkpoint.safetensors"), &ck, |_| true);
    assert_eq!(Checkpoint::read(&ck).unwrap().meta("step"), Some("4"));
    let model = dir.path().join("g.onnx");
    ok(&["export", "dcgan", p(&ck), "-o", p(&model)]);
    grade_check(&model, "generator");
}

#[test]
fn wgan_gp_trains_with_critic_steps_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let faces = face_folder(dir.path());
    let run = dir.path().join("w");
    ok(&["wgan-gp", "--data", p(&faces), "--out", p(&run), "--width", "8", "--batch", "4", "--steps", "2", "--critic-steps", "2"]);
    assert_eq!(losses(&run, "gp").len(), 2);
    let ck = run.join("checkpoint.safetensors");
    let c = Checkpoint::read(&ck).unwrap();
    // The critic took 2 optimiser steps per generator step; its Adam step count says so.
    assert_eq!(c.tensors["optim.d.step"].data, vec![4.0]);
    assert_eq!(c.tensors["optim.g.step"].data, vec![2.0]);
    assert!(!c.tensors.keys().any(|k| k.starts_with("discriminator.") && k.contains("running")), "the critic has no batch norm");
    let model = dir.path().join("g.onnx");
    ok(&["export", "wgan-gp", p(&ck), "-o", p(&model)]);
    grade_check(&model, "generator");
}

#[test]
fn ddpm_trains_keeps_ema_weights_and_exports_a_noise_model() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("d");
    let data = common::fixture("digits/mnistm");
    ok(&[
        "ddpm",
        "--data",
        p(&data),
        "--out",
        p(&run),
        "--width",
        "8",
        "--batch",
        "8",
        "--steps",
        "3",
        "--sample-steps",
        "2",
        "--save-every",
        "3",
    ]);
    assert_eq!(losses(&run, "mse").len(), 3);
    assert!(run.join("samples.png").is_file());
    let ck = run.join("checkpoint.safetensors");
    let c = Checkpoint::read(&ck).unwrap();
    assert!(c.tensors.contains_key("ema.init_conv.conv.0.weight") && c.tensors.contains_key("label_emb.weight"));
    let model = dir.path().join("unet.onnx");
    ok(&["export", "ddpm", p(&ck), "-o", p(&model), "--meta", "guidance_scale=2"]);
    grade_check(&model, "noise");
    let f = gradekit::onnx::ModelFile::open(&model, &Default::default()).unwrap();
    let meta = format!("{:?}", f.metadata);
    assert!(meta.contains("guidance_scale") && meta.contains("\"2\"") && meta.contains("null_label"), "{meta}");

    // The course's output folder, sampled by libtorch from the EMA weights, is gradable as is.
    let samples = dir.path().join("samples");
    let grid = dir.path().join("grid.png");
    ok(&["sample", p(&ck), "--out", p(&samples), "--grid", p(&grid), "--per-class", "2", "--steps", "2", "--batch", "7"]);
    let mut names: Vec<String> = std::fs::read_dir(&samples).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names.len(), 20, "{names:?}");
    assert_eq!((names[0].as_str(), names[1].as_str(), names[19].as_str()), ("0_001.png", "0_002.png", "9_002.png"));
    assert!(grid.is_file(), "the grid where asked");
    let out = Command::new(env!("CARGO_BIN_EXE_grade"))
        .arg("digits")
        .arg(&samples)
        .arg("--classifier")
        .arg(common::fixture("models/lenet-random.onnx"))
        .args(["--backend", "tract", "--out"])
        .arg(dir.path().join("graded"))
        .output()
        .unwrap();
    assert!(matches!(out.status.code(), Some(0) | Some(1)), "grade digits: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn ddpm_resumes_exactly() {
    // N steps then --resume for M more equals N + M straight, bit for bit: the UNet's weights, its EMA
    // copy and AdamW's moments and step count (label dropout and timesteps are drawn per step).
    let dir = tempfile::tempdir().unwrap();
    let data = common::fixture("digits/mnistm");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let common =
        ["--data", p(&data), "--width", "8", "--batch", "6", "--seed", "5", "--sample-steps", "2", "--save-every", "2", "--ema", "0.9"];
    ok(&[&["ddpm", "--out", p(&a), "--steps", "5"][..], &common].concat());
    ok(&[&["ddpm", "--out", p(&b), "--steps", "5", "--stop-at", "2"][..], &common].concat());
    let ck = b.join("checkpoint.safetensors");
    assert_eq!(Checkpoint::read(&ck).unwrap().meta("step"), Some("2"));
    ok(&[&["ddpm", "--out", p(&b), "--steps", "5", "--resume", p(&ck)][..], &common].concat());
    let straight = Checkpoint::read(&a.join("checkpoint.safetensors")).unwrap();
    assert!(straight.tensors.keys().any(|k| k.starts_with("ema.")) && straight.tensors.keys().any(|k| k.starts_with("optim.")));
    assert_same_tensors(&a.join("checkpoint.safetensors"), &ck, |_| true);
    assert_eq!(Checkpoint::read(&ck).unwrap().meta("step"), Some("5"));
    // The resumed run's losses continue the straight run's.
    assert_eq!(losses(&a, "mse")[2..], losses(&b, "mse")[..], "resumed losses differ");
}

#[test]
fn max_time_stops_with_a_checkpoint_that_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::fixture("digits/mnistm");
    let run = dir.path().join("c");
    ok(&[
        "classifier",
        "--data",
        p(&data),
        "--out",
        p(&run),
        "--steps",
        "1000000",
        "--batch",
        "8",
        "--max-time",
        "1s",
        "--eval-every",
        "1000000",
    ]);
    let ck = run.join("checkpoint.safetensors");
    let step: i64 = Checkpoint::read(&ck).unwrap().meta("step").unwrap().parse().unwrap();
    assert!(step > 0 && step < 1_000_000, "stopped at step {step}");
}

#[test]
fn dann_modes_train_report_accuracy_and_export_a_gradable_classifier() {
    let dir = tempfile::tempdir().unwrap();
    let root = common::fixture("digits");
    for mode in ["dann", "source-only", "target-only"] {
        let run = dir.path().join(mode);
        ok(&[
            "dann",
            "--pair",
            "mnistm-usps",
            "--mode",
            mode,
            "--data",
            p(&root),
            "--out",
            p(&run),
            "--batch",
            "16",
            "--steps",
            "3",
            "--eval-every",
            "3",
        ]);
        let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap()).unwrap();
        let acc = r["accuracy"]["target_val_acc"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{mode}: {r}");
        assert_eq!(!losses(&run, "domain_loss").is_empty(), mode == "dann");
    }
    let ck = dir.path().join("dann/checkpoint.safetensors");
    let model = dir.path().join("dann.onnx");
    ok(&["export", "dann", p(&ck), "-o", p(&model)]);
    grade_check(&model, "classifier");
    let out = Command::new(env!("CARGO_BIN_EXE_grade"))
        .args(["dann", "--pair", "mnistm-usps", "--backend", "tract", "--model"])
        .arg(&model)
        .arg("--data")
        .arg(root.join("usps"))
        .arg("--out")
        .arg(dir.path().join("graded"))
        .output()
        .unwrap();
    assert!(matches!(out.status.code(), Some(0) | Some(1)), "grade dann: {}", String::from_utf8_lossy(&out.stderr));
}

/// `--augment` changes what is trained, is recorded in the checkpoint, resumes exactly, and a resume
/// under the other recipe is refused.
#[test]
fn dann_augmentation_resumes_exactly_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let root = common::fixture("digits");
    let (a, b, plain) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("plain"));
    let common =
        ["dann", "--pair", "mnistm-usps", "--data", p(&root), "--batch", "16", "--steps", "4", "--eval-every", "2", "--save-every", "2"];
    ok(&[&common[..], &["--augment", "colour,zoom", "--out", p(&a)]].concat());
    ok(&[&common[..], &["--out", p(&plain)]].concat());
    ok(&[&common[..], &["--augment", "colour,zoom", "--out", p(&b), "--stop-at", "2"]].concat());
    let ck = b.join("checkpoint.safetensors");
    let refused = train(&[&common[..], &["--out", p(&b), "--resume", p(&ck)]].concat());
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--augment"), "{}", String::from_utf8_lossy(&refused.stderr));
    ok(&[&common[..], &["--augment", "colour,zoom", "--out", p(&b), "--resume", p(&ck)]].concat());
    let a_ck = a.join("checkpoint.safetensors");
    assert_same_tensors(&a_ck, &ck, |_| true);
    assert_eq!(Checkpoint::read(&a_ck).unwrap().meta("augment"), Some("colour,zoom"));
    assert_eq!(Checkpoint::read(&plain.join("checkpoint.safetensors")).unwrap().meta("augment"), Some("none"));
    let (x, y) = (Checkpoint::read(&a_ck).unwrap(), Checkpoint::read(&plain.join("checkpoint.safetensors")).unwrap());
    let w = "feature.f_conv1.weight";
    assert!(x.tensors[w].data != y.tensors[w].data, "--augment trained the same weights as without it");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(a.join("results.json")).unwrap()).unwrap();
    assert_eq!(r["augment"], serde_json::json!("colour,zoom"));
    let pic = image::open(a.join("samples/augmented.png")).unwrap();
    assert!(pic.width() > 100 && pic.height() > 2 * pic.width() / 16, "{}x{}", pic.width(), pic.height());
    assert!(!plain.join("samples/augmented.png").exists());
}

#[test]
fn classifier_trains_resumes_exactly_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::fixture("digits/mnistm");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let common = ["--data", p(&data), "--batch", "16", "--seed", "5", "--eval-every", "2", "--save-every", "2"];
    ok(&[&["classifier", "--out", p(&a), "--steps", "4"][..], &common].concat());
    ok(&[&["classifier", "--out", p(&b), "--steps", "4", "--stop-at", "2"][..], &common].concat());
    let ck = b.join("checkpoint.safetensors");
    ok(&[&["classifier", "--out", p(&b), "--steps", "4", "--resume", p(&ck)][..], &common].concat());
    assert_same_tensors(&a.join("checkpoint.safetensors"), &ck, |_| true);
    assert!(a.join("metrics.svg").is_file());
    let model = dir.path().join("lenet.onnx");
    ok(&["export", "classifier", p(&ck), "-o", p(&model)]);
    grade_check(&model, "classifier");
}

#[test]
fn bad_training_inputs_fail_with_the_file_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let out = train(&["classifier", "--data", "/nonexistent/digits", "--out", p(&dir.path().join("x")), "--steps", "1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/digits") && err.contains("--data"), "{err}");

    // A classifier checkpoint cannot resume a DANN run, nor be exported as a generator.
    let data = common::fixture("digits/mnistm");
    let run = dir.path().join("c");
    ok(&["classifier", "--data", p(&data), "--out", p(&run), "--steps", "1", "--batch", "8"]);
    let ck = run.join("checkpoint.safetensors");
    let out = train(&[
        "dann",
        "--pair",
        "mnistm-usps",
        "--data",
        p(&common::fixture("digits")),
        "--out",
        p(&dir.path().join("d")),
        "--steps",
        "2",
        "--resume",
        p(&ck),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot resume"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = train(&["export", "dcgan", p(&ck), "-o", p(&dir.path().join("g.onnx"))]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("net.0.weight"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!dir.path().join("g.onnx").exists());

    // A second run into a folder holding a checkpoint must say --resume or --force, and keep it.
    let before = std::fs::read(&ck).unwrap();
    let out = train(&["classifier", "--data", p(&data), "--out", p(&run), "--steps", "1", "--batch", "8"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&ck).unwrap(), before);

    // A corrupt checkpoint is refused by name.
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......").unwrap();
    let out = train(&["export", "classifier", p(&bad), "-o", p(&dir.path().join("m.onnx"))]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.safetensors"));
}
