//! tract runs a batch as one slice per core, side by side: the result must not depend on the split.

mod common;

use gradekit::onnx::{ModelFile, ModelLimits};
use gradekit::runtime::{self, BackendChoice, Input, RuntimeOptions};

fn run(model: &str, threads: usize, inputs: &[Input], output: &str) -> gradekit::runtime::Output {
    let file = ModelFile::open(&common::fixture(model), &ModelLimits::default()).unwrap();
    let opts = RuntimeOptions { backend: BackendChoice::Tract, threads: Some(threads), ..Default::default() };
    runtime::open(&file, &opts).unwrap().run(inputs, output).unwrap()
}

#[test]
fn classifier_batches_split_over_threads_equal_one_thread() {
    for n in [1usize, 2, 5, 7] {
        let x: Vec<f32> = (0..n * 3 * 28 * 28).map(|k| ((k as f32) * 0.37).sin()).collect();
        let inputs = [Input::f32("image", &[n, 3, 28, 28], &x)];
        let one = run("models/lenet-random.onnx", 1, &inputs, "logits");
        for threads in [2, 3] {
            let split = run("models/lenet-random.onnx", threads, &inputs, "logits");
            assert_eq!(split.shape, vec![n, 10], "n={n} threads={threads}");
            // tract picks its kernels per shape, so a smaller batch may round differently in the last bits.
            let d = split.data.iter().zip(&one.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(d < 1e-5, "n={n} threads={threads}: split result differs by {d}");
        }
    }
}

#[test]
fn noise_model_batches_split_over_threads_equal_one_thread() {
    let n = 5;
    let x: Vec<f32> = (0..n * 3 * 28 * 28).map(|k| ((k as f32) * 0.11).cos()).collect();
    let t: Vec<i64> = (0..n as i64).map(|i| 100 * i + 1).collect();
    let labels: Vec<i64> = (0..n as i64).collect();
    let inputs = [Input::f32("x", &[n, 3, 28, 28], &x), Input::i64("t", &[n], &t), Input::i64("label", &[n], &labels)];
    let one = run("models/noise-conv.onnx", 1, &inputs, "eps");
    let split = run("models/noise-conv.onnx", 2, &inputs, "eps");
    assert_eq!(split.shape, one.shape);
    let d = split.data.iter().zip(&one.data).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(d < 1e-5, "split result differs by {d}");
}
