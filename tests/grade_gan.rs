//! `grade gan`, `grade fid`, `grade fid-stats` and `grade faces` end to end on the fixture generator,
//! with an Inception network of seeded random weights (the real weights cannot be downloaded here).

mod common;

use std::path::{Path, PathBuf};

use common::{blob_images, fixture, grade, read_json};
use predicates::str::contains;

fn small_spec(dir: &Path, images: usize) -> PathBuf {
    let text =
        std::fs::read_to_string(common::root().join("graders/gan.toml")).unwrap().replace("images = 1000", &format!("images = {images}"));
    let p = dir.join("gan-small.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn random_inception(dir: &Path) -> PathBuf {
    let p = dir.join("inception-random.onnx");
    let m = gradekit::nn::inception::to_onnx(&mut gradekit::nn::weights::SeededInit::new(3)).unwrap();
    gradekit::onnx::writer::save(&m, &p).unwrap();
    p
}

#[test]
fn gan_without_inception_reports_fid_not_computed_and_why() {
    let tmp = tempfile::tempdir().unwrap();
    // `off` stands in for a machine without the installed model (whose message metrics::inception's
    // unit tests check): the report goes on without FID.
    let out = grade(tmp.path())
        .env("GRADEKIT_INCEPTION", "off")
        .arg("gan")
        .arg("--model")
        .arg(fixture("models/dcgan-w8.onnx"))
        .arg("--spec")
        .arg(small_spec(tmp.path(), 30))
        .args(["--backend", "tract", "--reference", "nowhere", "--out", "o"])
        .output()
        .unwrap();
    // FID was not computed, so the run cannot pass.
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let r = read_json(&tmp.path().join("o/report.json"));
    assert_eq!(r["counts"]["images"], 30);
    assert!(r["metrics"][0]["value"].is_null());
    assert_eq!(r["metrics"][0]["verdict"], "not-computed");
    assert!(r["notes"].to_string().contains("FID and KID not computed: GRADEKIT_INCEPTION=off"), "{}", r["notes"]);
    // Face accuracy is computed on the saved images (a random generator draws no faces).
    assert_eq!(r["metrics"][1]["name"], "face_accuracy");
    assert!(r["metrics"][1]["value"].as_f64().unwrap() <= 0.1);
    let names: Vec<String> =
        std::fs::read_dir(tmp.path().join("o/images")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert_eq!(names.len(), 30);
    assert!(names.contains(&"0000.png".to_string()) && names.contains(&"0029.png".to_string()));
    assert_eq!(image::open(tmp.path().join("o/images/0007.png")).unwrap().to_rgb8().dimensions(), (64, 64));
    assert!(tmp.path().join("o/grid.png").is_file());
}

#[test]
fn gan_fid_kid_and_cached_reference_statistics() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let inception = random_inception(d);
    blob_images(&d.join("ref"), 24, 5);
    let spec = small_spec(d, 20);
    let run = |reference: &str, out: &str| {
        grade(d)
            .arg("gan")
            .arg("--model")
            .arg(fixture("models/dcgan-w8.onnx"))
            .arg("--spec")
            .arg(&spec)
            .arg("--inception")
            .arg(&inception)
            .args(["--backend", "tract", "--seed", "3", "--reference", reference, "--out", out])
            .assert()
            .code(predicates::function::function(|c: &i32| *c == 0 || *c == 1));
        read_json(&d.join(out).join("report.json"))
    };
    let r = run("ref", "folder");
    let fid = r["metrics"][0]["value"].as_f64().unwrap();
    assert!(fid.is_finite() && fid > 0.0, "{fid}");
    assert!(r["metrics"][2]["value"].as_f64().is_some(), "KID missing: {}", r["metrics"]);
    assert_eq!(r["metrics"][2]["name"], "kid");
    assert_eq!(r["metrics"][2]["higher_is_better"], false, "KID is a distance: lower is better");
    assert!(
        r["notes"].to_string().contains("samples for 2048 dimensions"),
        "expected a warning about fewer samples than dimensions: {}",
        r["notes"]
    );

    // Statistics computed once and reused give the same FID; KID then needs the images.
    grade(d)
        .arg("fid-stats")
        .arg("ref")
        .arg("-o")
        .arg("ref.npz")
        .arg("--inception")
        .arg(&inception)
        .args(["--backend", "tract"])
        .assert()
        .success();
    let r2 = run("ref.npz", "stats");
    let fid2 = r2["metrics"][0]["value"].as_f64().unwrap();
    assert!((fid - fid2).abs() <= 1e-9 * fid.abs().max(1.0), "{fid} vs {fid2}");
    assert!(r2["metrics"][2]["value"].is_null());

    // Same seed -> same images; the folder tool agrees with itself: FID(A, A) = 0.
    grade(d)
        .arg("fid")
        .arg("folder/images")
        .arg("stats/images")
        .arg("--inception")
        .arg(&inception)
        .args(["--backend", "tract", "--json", "same.json"])
        .assert()
        .success();
    let same = read_json(&d.join("same.json"))["fid"].as_f64().unwrap();
    assert!(same.abs() < 1e-6, "identical image sets give FID {same}");
}

#[test]
fn faces_folder_tool_counts_and_drops_unreadable_files() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("faces");
    blob_images(&d, 5, 9);
    std::fs::write(d.join("broken.png"), b"\x89PNG\r\n\x1a\n garbage").unwrap();
    grade(tmp.path()).arg("faces").arg(&d).args(["--json", "faces.json"]).assert().success().stdout(contains("face accuracy"));
    let r = read_json(&tmp.path().join("faces.json"));
    assert_eq!(r["total"], 6);
    assert_eq!(r["loaded"], 5, "the unreadable file leaves the denominator");
    assert_eq!(r["unreadable"].as_array().unwrap().len(), 1);
}

#[test]
fn dlib_detector_without_the_feature_says_how_to_get_it() {
    if cfg!(feature = "dlib") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    blob_images(&tmp.path().join("f"), 2, 1);
    let out = grade(tmp.path()).args(["faces", "f", "--detector", "dlib"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--features dlib"));
}

#[test]
fn gan_without_model_grades_the_specs_bundled_model_or_says_to_pass_one() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // A spec naming the fixture generator as its bundled model: `--model` may be left out.
    let text = std::fs::read_to_string(small_spec(d, 12)).unwrap();
    let text: String = text.lines().filter(|l| !l.trim_start().starts_with("model =")).collect::<Vec<_>>().join("\n");
    let with = d.join("with-model.toml");
    std::fs::write(
        &with,
        text.replacen("[data]", &format!("[data]\nmodel = {:?}", fixture("models/dcgan-w8.onnx").display().to_string()), 1),
    )
    .unwrap();
    grade(d)
        .env("GRADEKIT_INCEPTION", "off")
        .arg("gan")
        .arg("--spec")
        .arg(&with)
        .args(["--backend", "tract", "--reference", "nowhere", "--out", "o"])
        .assert()
        .code(1);
    let r = read_json(&d.join("o/report.json"));
    assert_eq!(r["counts"]["images"], 12);
    let model = r["inputs"]["model"].as_str().unwrap();
    assert!(model.ends_with("dcgan-w8.onnx (bundled default)"), "{model}");

    // Without a bundled model the error names the fix; nothing is generated.
    let without = d.join("without-model.toml");
    std::fs::write(&without, text).unwrap();
    let out = grade(d).env("GRADEKIT_INCEPTION", "off").arg("gan").arg("--spec").arg(&without).args(["--out", "n"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --model G.onnx"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!d.join("n/images").exists());
}

/// The bold numbers of a model card's `| measured |` row in models/README.md, in order.
fn card_numbers(file: &str) -> Vec<f64> {
    let cards = std::fs::read_to_string(common::root().join("models/README.md")).unwrap();
    let card = cards.split("\n## ").find(|c| c.starts_with(&format!("`{file}`"))).unwrap_or_else(|| panic!("no card for {file}"));
    let row = card.lines().find(|l| l.starts_with("| measured |")).unwrap_or_else(|| panic!("{file}: no measured row"));
    row.split("**").skip(1).step_by(2).map(|v| v.parse().unwrap_or_else(|_| panic!("{file}: {v:?} is not a number"))).collect()
}

/// The bundled face generator, graded by default (real FID Inception, the 2,000 real val faces), scores
/// what its model card says: FID, then face accuracy (a model swapped without its card fails here).
#[test]
#[ignore = "needs the real faces in data/ and the FID Inception (scripts/setup.sh); .ci/run runs these with --ignored"]
fn the_bundled_face_gan_scores_its_model_card_on_the_real_val_faces() {
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("gan.json");
    // A generous budget: the check is the numbers, not this machine's speed.
    grade(&common::root())
        .args(["gan", "--quiet", "--budget", "1h", "--out"])
        .arg(tmp.path().join("gan"))
        .arg("--json")
        .arg(&json)
        .assert()
        .code(predicates::function::function(|c: &i32| *c == 0 || *c == 1));
    let r = read_json(&json);
    assert!(r["inputs"]["model"].as_str().unwrap().contains("(bundled default)"), "{}", r["inputs"]);
    assert_eq!(r["counts"]["images"], 1000);
    let card = card_numbers("dcgan-faces-w32.onnx");
    let (fid, faces) = (r["metrics"][0]["value"].as_f64().unwrap(), r["metrics"][1]["value"].as_f64().unwrap());
    eprintln!("bundled face GAN: FID {fid:.3}, face accuracy {faces:.3} (card {card:?})");
    // Runtimes may round a generated pixel differently (PNG quantisation); beyond that the numbers are the card's.
    assert!((fid - card[0]).abs() < 0.05, "graded FID {fid}, the model card says {}", card[0]);
    assert!((faces - card[1]).abs() <= 0.003, "graded face accuracy {faces}, the model card says {}", card[1]);
}
