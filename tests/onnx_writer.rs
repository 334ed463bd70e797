//! The ONNX writer's models load in tract and ONNX Runtime, agree between them, and pass onnx.checker.

mod common;

use gradekit::fixtures::lenet_random;
use gradekit::onnx::{writer, ModelFile, ModelLimits};
use gradekit::runtime::{self, BackendChoice, Input, RuntimeOptions};

fn logits(file: &ModelFile, backend: BackendChoice, x: &[f32], n: usize) -> Vec<f32> {
    let mut e = runtime::open(file, &RuntimeOptions { backend, ..Default::default() }).unwrap();
    let out = e.run(&[Input::f32("image", &[n, 3, 28, 28], x)], "logits").unwrap();
    assert_eq!(out.shape, vec![n, 10]);
    out.data
}

#[test]
fn lenet_runs_in_both_backends_with_equal_logits_at_any_batch() {
    common::ort_library();
    let bytes = writer::to_bytes(&lenet_random(3));
    let file = ModelFile::from_bytes("lenet.onnx".as_ref(), bytes, &ModelLimits::default()).unwrap();
    for n in [1usize, 5, 64] {
        let x: Vec<f32> = (0..n * 3 * 784).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let a = logits(&file, BackendChoice::Tract, &x, n);
        let b = logits(&file, BackendChoice::Ort, &x, n);
        let max = a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(max <= 1e-4, "batch {n}: tract and ort differ by {max}");
        // Rows are independent of the batch they came in: the first image's logits never change.
        let single = logits(&file, BackendChoice::Tract, &x[..3 * 784], 1);
        let max1 = single.iter().zip(&a[..10]).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(max1 <= 1e-5, "batch {n}: first row differs from batch-1 run by {max1}");
        assert!(a.iter().any(|v| v.abs() > 1e-3), "logits are all zero: the model computes nothing");
    }
}

#[test]
fn written_models_pass_onnx_checker() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("lenet.onnx");
    writer::save(&lenet_random(1), &path).unwrap();
    let fixtures = [path, common::fixture("models/lenet-random.onnx"), common::fixture("models/digit-template.onnx")];
    for p in fixtures {
        let out = std::process::Command::new(common::python())
            .args([
                "-c",
                "import onnx,sys; m=onnx.load(sys.argv[1]); onnx.checker.check_model(m, full_check=True); print(m.opset_import[0].version)",
            ])
            .arg(&p)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}: {}", p.display(), String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "17");
    }
}

#[test]
fn model_file_reports_ports_metadata_and_ops() {
    let bytes = writer::to_bytes(&lenet_random(3));
    let f = ModelFile::from_bytes("m.onnx".as_ref(), bytes, &ModelLimits::default()).unwrap();
    assert_eq!(f.inputs.len(), 1);
    assert_eq!(f.inputs[0].shape_string(), "[N, 3, 28, 28]");
    assert_eq!(f.outputs[0].name, "logits");
    assert_eq!(f.metadata["input_mean"], "0.5,0.5,0.5");
    assert!(f.ops.contains("Conv") && f.ops.contains("Gemm") && f.ops.contains("MaxPool"));
    // LeNet: 456 + 2416 + 32896 + 8256 + 650 parameters.
    assert_eq!(f.parameters, 44674);
}
