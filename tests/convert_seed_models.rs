//! `grade convert unet` of a .pth that PyTorch wrote once (fixtures/pth/seed_unet_w8.pth, made by
//! scripts/reference/seed_models.py with PyTorch 2.11: the seed UNet at width 8, PyTorch's own
//! attention, norms and align-corners upsampling) reproduces PyTorch's outputs, stored beside it, in
//! both runtimes, without Python. (tests/torch_parity.rs repeats this against live PyTorch.)

mod common;

use gradekit::onnx::ModelFile;
use gradekit::runtime::{self, BackendChoice, Input, RuntimeOptions};

#[test]
fn committed_pytorch_unet_checkpoint_converts_and_matches_pytorch() {
    common::ort_library();
    let tmp = tempfile::tempdir().unwrap();
    let onnx = tmp.path().join("unet.onnx");
    common::grade(tmp.path())
        .args(["convert", "unet"])
        .arg(common::fixture("pth/seed_unet_w8.pth"))
        .arg("-o")
        .arg(&onnx)
        .assert()
        .success();
    let r = common::read_json(&common::fixture("pth/seed_unet_w8.json"));
    let b = &r["batches"]["3"];
    let f = |k: &str| -> Vec<f32> { b[k].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect() };
    let i = |k: &str| -> Vec<i64> { b[k].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect() };
    let (x, t, l, want) = (f("x"), i("t"), i("label"), f("out"));
    assert_eq!(l[2], 10, "the fixture exercises the null label");
    let file = ModelFile::open(&onnx, &Default::default()).unwrap();
    assert!(file.metadata.iter().any(|(k, v)| k == "width" && v == "8"), "width read off the weights: {:?}", file.metadata);
    for backend in [BackendChoice::Tract, BackendChoice::Ort] {
        let mut e = runtime::open(&file, &RuntimeOptions { backend, ..Default::default() }).unwrap();
        let got = e.run(&[Input::f32("x", &[3, 3, 28, 28], &x), Input::i64("t", &[3], &t), Input::i64("label", &[3], &l)], "eps").unwrap();
        let max = got.data.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(max <= 1e-4, "{backend:?}: differs from PyTorch by {max}");
    }
}
