//! Parity with PyTorch itself (installed by scripts/setup.sh): pytorch-fid's InceptionV3 features and
//! FID against `grade convert inception` + `grade fid`, and the course's LeNet read from a .pth.

mod common;

use common::{blob_images, fixture, grade, read_json, torch_python};
use gradekit::metrics::inception::InceptionNet;
use gradekit::runtime::{BackendChoice, RuntimeOptions};

fn json_matrix(p: &std::path::Path) -> Vec<Vec<f32>> {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn inception_features_and_fid_match_pytorch_fid() {
    common::ort_library();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, refdir) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("ref"));
    blob_images(&a, 20, 1);
    blob_images(&b, 24, 2);
    let out = std::process::Command::new(torch_python())
        .arg(common::root().join("scripts/reference/fid_parity.py"))
        .args([&a, &b, &refdir])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let torch_fid = read_json(&refdir.join("result.json"))["fid"].as_f64().unwrap();

    // Convert the .pth the way a user converts the official weights file.
    let onnx = tmp.path().join("inception.onnx");
    grade(tmp.path()).arg("convert").arg("inception").arg(refdir.join("inception.pth")).arg("-o").arg(&onnx).assert().success();

    let want = json_matrix(&refdir.join("features_a.json"));
    let imgs: Vec<image::RgbImage> =
        gradekit::metrics::inception::fid_image_files(&a).unwrap().iter().map(|p| image::open(p).unwrap().to_rgb8()).collect();
    for backend in [BackendChoice::Tract, BackendChoice::Ort] {
        let mut net = InceptionNet::open(&onnx, &RuntimeOptions { backend, ..Default::default() }, 8).unwrap();
        let got = net.features(&imgs).unwrap();
        let mut max = 0f32;
        let mut scale = 0f32;
        for (row, w) in got.chunks(2048).zip(&want) {
            for (g, t) in row.iter().zip(w) {
                max = max.max((g - t).abs());
                scale = scale.max(t.abs());
            }
        }
        eprintln!("{backend:?}: max |pool3 - pytorch-fid| = {max:e} (largest feature {scale})");
        assert!(scale > 1e-2, "features are all near zero: the comparison would prove nothing");
        assert!(max <= 1e-3, "{backend:?}: pool3 features differ from pytorch-fid by {max} (largest feature {scale})");
    }

    grade(tmp.path())
        .arg("fid")
        .args([&a, &b])
        .arg("--inception")
        .arg(&onnx)
        .args(["--backend", "ort", "--json", "fid.json"])
        .assert()
        .success();
    let ours = read_json(&tmp.path().join("fid.json"))["fid"].as_f64().unwrap();
    let rel = (ours - torch_fid).abs() / torch_fid.abs().max(1e-12);
    eprintln!("FID gradekit {ours} vs pytorch-fid {torch_fid}: relative difference {rel:e}");
    assert!(torch_fid > 0.0 && rel <= 1e-4, "FID {ours} vs pytorch-fid {torch_fid} (relative {rel:e})");
}

#[test]
fn lenet_from_pth_matches_pytorch_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let pth = fixture("pth/lenet_classifier.pth");
    let out = std::process::Command::new(torch_python())
        .arg(common::root().join("scripts/reference/lenet_logits.py"))
        .arg(&pth)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let x: Vec<f32> = r["input"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let want: Vec<f32> = r["logits"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let onnx = tmp.path().join("classifier.onnx");
    grade(tmp.path()).arg("convert").arg("classifier").arg(&pth).arg("-o").arg(&onnx).assert().success();
    let file = gradekit::onnx::ModelFile::open(&onnx, &Default::default()).unwrap();
    for backend in [BackendChoice::Tract, BackendChoice::Ort] {
        let mut e = gradekit::runtime::open(&file, &RuntimeOptions { backend, ..Default::default() }).unwrap();
        let got = e.run(&[gradekit::runtime::Input::f32("image", &[4, 3, 28, 28], &x)], "logits").unwrap();
        let max = got.data.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
        eprintln!("{backend:?}: max |logits - PyTorch| = {max:e}");
        assert!(max <= 1e-4, "{backend:?}: logits differ from PyTorch by {max}");
    }
}

#[test]
fn dcgan_generator_from_pth_matches_pytorch() {
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(torch_python())
        .arg(common::root().join("scripts/reference/dcgan_generator.py"))
        .arg(tmp.path())
        .arg("16")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = read_json(&tmp.path().join("reference.json"));
    let z: Vec<f32> = r["z"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let want: Vec<f32> = r["image"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let onnx = tmp.path().join("g.onnx");
    grade(tmp.path()).arg("convert").arg("generator").arg(tmp.path().join("generator.pth")).arg("-o").arg(&onnx).assert().success();
    grade(tmp.path()).args(["check", "--kind", "generator", "--backend", "tract"]).arg(&onnx).assert().success();
    let file = gradekit::onnx::ModelFile::open(&onnx, &Default::default()).unwrap();
    for backend in [BackendChoice::Tract, BackendChoice::Ort] {
        let mut e = gradekit::runtime::open(&file, &RuntimeOptions { backend, ..Default::default() }).unwrap();
        let got = e.run(&[gradekit::runtime::Input::f32("z", &[3, 100, 1, 1], &z)], "image").unwrap();
        assert_eq!(got.shape, vec![3, 3, 64, 64]);
        let max = got.data.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0f32, f32::max);
        eprintln!("{backend:?}: max |generator - PyTorch| = {max:e}");
        assert!(max <= 1e-4, "{backend:?}: generator output differs from PyTorch by {max}");
    }
}

/// The seed's UNet and DANN written in PyTorch (scripts/reference/seed_models.py, PyTorch's own
/// MultiheadAttention, GroupNorm, align-corners Upsample, ...), saved with torch.save, converted by
/// `grade convert` without Python, must reproduce PyTorch's outputs in both runtimes.
fn seed_model_from_pth_matches_pytorch(kind: &str, width: usize) {
    use gradekit::runtime::{self, Input};
    common::ort_library();
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(torch_python())
        .arg(common::root().join("scripts/reference/seed_models.py"))
        .arg(tmp.path())
        .args([kind, &width.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let onnx = tmp.path().join("model.onnx");
    grade(tmp.path()).args(["convert", kind]).arg(tmp.path().join("model.pth")).arg("-o").arg(&onnx).assert().success();
    let reference = read_json(&tmp.path().join("reference.json"));
    let file = gradekit::onnx::ModelFile::open(&onnx, &Default::default()).unwrap();
    for backend in [BackendChoice::Tract, BackendChoice::Ort] {
        let mut e = runtime::open(&file, &RuntimeOptions { backend, ..Default::default() }).unwrap();
        for n in [1usize, 7] {
            let b = &reference["batches"][n.to_string()];
            let f = |k: &str| -> Vec<f32> { b[k].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect() };
            let i = |k: &str| -> Vec<i64> { b[k].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect() };
            let (x, t, l, want) = (f("x"), i("t"), i("label"), f("out"));
            let got = if kind == "unet" {
                e.run(&[Input::f32("x", &[n, 3, 28, 28], &x), Input::i64("t", &[n], &t), Input::i64("label", &[n], &l)], "eps").unwrap()
            } else {
                e.run(&[Input::f32("image", &[n, 3, 28, 28], &x)], "logits").unwrap()
            };
            assert_eq!(got.data.len(), want.len());
            let max = got.data.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            eprintln!("{kind} width {width} {backend:?} batch {n}: max |gradekit - pytorch| = {max:.2e} (largest output {scale:.3})");
            assert!(scale > 1e-2, "PyTorch's outputs are all near zero: the comparison would prove nothing");
            assert!(max <= 1e-4, "{kind} {backend:?} batch {n}: differs from PyTorch by {max}");
        }
    }
}

#[test]
fn seed_unet_from_pth_matches_pytorch() {
    seed_model_from_pth_matches_pytorch("unet", 16);
}

#[test]
fn seed_width_unet_from_pth_matches_pytorch() {
    seed_model_from_pth_matches_pytorch("unet", 64);
}

#[test]
fn dann_from_pth_matches_pytorch() {
    seed_model_from_pth_matches_pytorch("dann", 0);
}
