//! Short training runs on the real homework data (data/hw2_data, unpacked by scripts/setup.sh from
//! ../shared/data; not committed). Ignored by default; `.ci/run` runs them with `--ignored` when the
//! data is there. Thresholds sit well below what these settings reached when measured (README), so
//! they catch a broken trainer, not noise.
#![cfg(feature = "train")]

mod common;

use std::process::Command;

fn accuracy(run: &std::path::Path, key: &str) -> f64 {
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap()).unwrap();
    r["accuracy"][key].as_f64().unwrap()
}

fn train(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_train")).current_dir(common::root()).args(args).output().unwrap();
    assert!(out.status.success(), "train {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
#[ignore = "needs the real digits in data/ (not committed); .ci/run unpacks ../shared/data and runs these with --ignored"]
fn lenet_trained_briefly_on_real_mnistm_classifies_its_validation_split() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("lenet");
    train(&["classifier", "--out", run.to_str().unwrap(), "--steps", "1500", "--eval-every", "1500", "--seed", "0"]);
    let acc = accuracy(&run, "val_acc");
    eprintln!("LeNet, 1500 steps on MNIST-M train: val accuracy {acc:.4}");
    assert!(acc >= 0.85, "val accuracy {acc}");
}

#[test]
#[ignore = "needs the real digits in data/ (not committed); .ci/run unpacks ../shared/data and runs these with --ignored"]
fn dann_trained_briefly_on_real_mnistm_to_usps_and_graded_by_grade_dann_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("dann");
    train(&[
        "dann",
        "--pair",
        "mnistm-usps",
        "--mode",
        "dann",
        "--out",
        run.to_str().unwrap(),
        "--steps",
        "1000",
        "--eval-every",
        "1000",
        "--seed",
        "0",
    ]);
    let acc = accuracy(&run, "target_val_acc");
    eprintln!("DANN MNIST-M -> USPS, 1000 steps: USPS val accuracy {acc:.4}");
    assert!(acc >= 0.45, "USPS val accuracy {acc}");
    // The exported model, graded by `grade dann` (ONNX, tract) on the same split, gives the same number.
    let onnx = dir.path().join("dann.onnx");
    train(&["export", "dann", run.join("checkpoint.safetensors").to_str().unwrap(), "-o", onnx.to_str().unwrap()]);
    let json = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_grade"))
        .current_dir(common::root())
        .args(["dann", "--pair", "mnistm-usps", "--backend", "tract", "--model"])
        .arg(&onnx)
        .arg("--out")
        .arg(dir.path().join("graded"))
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(matches!(out.status.code(), Some(0) | Some(1)), "grade dann: {}", String::from_utf8_lossy(&out.stderr));
    let r = common::read_json(&json);
    let graded = r["metrics"][0]["value"].as_f64().unwrap();
    assert!((graded - acc).abs() < 1.5 / 1458.0, "grade dann says {graded}, the trainer said {acc}");
}
