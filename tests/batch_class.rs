//! `grade batch` on a generated class of fixture submissions, some broken on purpose (bad ONNX, a
//! model too slow to finish, a memory hog, a missing file, a symlink): one run, resume, shards merged
//! equal to the unsharded run, and the scoreboard files.

mod common;

use std::path::{Path, PathBuf};

use common::{copy_dir, fixture, grade, read_json};
use gradekit::onnx::writer::{self, Attr, Dim, Elem, GraphBuilder};

fn classifier_input(g: &mut GraphBuilder) -> String {
    g.input("image", Elem::F32, &[Dim::Symbol("N"), Dim::Fixed(3), Dim::Fixed(28), Dim::Fixed(28)])
}

/// 150 64-channel 3x3 convolutions at 28x28: about a minute for the 100 fixture digits, in modest memory.
fn slow_model(p: &Path) {
    writer::save(&common::slow_classifier(150, 64), p).unwrap();
}

/// A 1 GiB constant tensor (ConstantOfShape) in a classifier.
fn hog_model(p: &Path) {
    writer::save(&common::memory_hog_classifier(1 << 28), p).unwrap();
}

/// The class: who handed in what.
fn make_class(root: &Path) -> PathBuf {
    let class = root.join("class");
    let put = |student: &str, name: &str, from: &Path| {
        std::fs::create_dir_all(class.join(student)).unwrap();
        std::fs::copy(from, class.join(student).join(name)).unwrap();
    };
    let template = fixture("models/digit-template.onnx");
    let oracle = fixture("models/noise-oracle.onnx");
    // alice: both graders, working models.
    put("alice", "ddpm.onnx", &oracle);
    put("alice", "dann-usps.onnx", &template);
    // bob: DANN as a prediction CSV (every label right), no diffusion model.
    std::fs::create_dir_all(class.join("bob")).unwrap();
    let labels = std::fs::read_to_string(fixture("digits/usps/val.csv")).unwrap();
    std::fs::write(class.join("bob/dann-usps.csv"), labels).unwrap();
    // carol: not an ONNX file at all.
    std::fs::create_dir_all(class.join("carol")).unwrap();
    std::fs::write(class.join("carol/dann-usps.onnx"), b"this is not a model").unwrap();
    put("carol", "ddpm.onnx", &oracle);
    // dave: a model that never finishes in time.
    std::fs::create_dir_all(class.join("dave")).unwrap();
    slow_model(&class.join("dave/dann-usps.onnx"));
    // erin: a model that wants 1 GiB (the limit here is 600 MiB).
    std::fs::create_dir_all(class.join("erin")).unwrap();
    hog_model(&class.join("erin/dann-usps.onnx"));
    // fay: a model that asks for 13 GiB at once when it runs on 100 images (past the data-segment cap
    // of 4 x 600 MiB; sized by the batch, so no check of what the file declares can refuse it).
    std::fs::create_dir_all(class.join("fay")).unwrap();
    writer::save(&common::batch_sized_memory_hog_classifier(1 << 25), &class.join("fay/dann-usps.onnx")).unwrap();
    // frank: forgot his files.
    std::fs::create_dir_all(class.join("frank")).unwrap();
    std::fs::write(class.join("frank/README.txt"), b"sorry").unwrap();
    // gus: a link pointing out of the submission.
    std::fs::create_dir_all(class.join("gus")).unwrap();
    std::os::unix::fs::symlink(&template, class.join("gus/dann-usps.onnx")).unwrap();
    // A roster next to the folders is ignored.
    std::fs::write(class.join("roster.csv"), b"id\nalice\n").unwrap();
    class
}

fn batch(dir: &Path, out: &str, extra: &[&str]) -> std::process::Output {
    grade(dir)
        .args(["batch", "class", "--out", out, "--data", "data", "--grader-arg", "all=--backend=tract"])
        .args(["--grader-arg", "ddpm=--steps=5", "--grader-arg"])
        .arg(format!("ddpm=--classifier={}", fixture("models/digit-template.onnx").display()))
        .args(["--student-memory", "600M", "--timeout", "15s"])
        .args(extra)
        .output()
        .unwrap()
}

use common::class_results_without_time as results_without_time;

fn csv_without_time(p: &Path) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(p).unwrap();
    let h = r.headers().unwrap().clone();
    let t = h.iter().position(|c| c == "seconds").unwrap();
    let mut rows = vec![h.iter().map(String::from).collect::<Vec<_>>()];
    for rec in r.records() {
        rows.push(rec.unwrap().iter().map(String::from).collect());
    }
    for row in &mut rows {
        row.remove(t);
    }
    rows
}

#[test]
fn a_class_with_broken_submissions_grades_in_one_run_and_in_shards_alike() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_class(d);
    copy_dir(&fixture("digits/usps"), &d.join("data/digits/usps"));

    let t = std::time::Instant::now();
    let out = batch(d, "full", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stdout.contains("8 students"), "{stdout}");
    let class = read_json(&d.join("full/class.json"));
    assert_eq!(class["graders"], serde_json::json!(["ddpm", "dann-mnistm-usps"]));
    let st = |id: &str| class["students"].as_array().unwrap().iter().find(|s| s["id"] == id).unwrap().clone();
    let grader = |id: &str, g: &str| st(id)["graders"].as_array().unwrap().iter().find(|x| x["grader"] == g).unwrap().clone();

    assert_eq!(st("alice")["status"], "passed");
    let acc = &grader("alice", "dann-mnistm-usps")["metrics"][0];
    assert_eq!(acc["name"], "accuracy");
    assert!(acc["lo"].as_f64().unwrap() < acc["value"].as_f64().unwrap() && acc["value"].as_f64().unwrap() <= acc["hi"].as_f64().unwrap());
    assert_eq!(grader("alice", "ddpm")["grid"], "students/alice/ddpm/grid.png");
    assert!(d.join("full/students/alice/ddpm/grid.png").is_file());

    // bob: the CSV is graded; no diffusion model is "missing", so bob fails overall.
    assert_eq!(grader("bob", "dann-mnistm-usps")["status"], "passed");
    assert_eq!(grader("bob", "dann-mnistm-usps")["submission"], "dann-usps.csv");
    assert_eq!(grader("bob", "ddpm")["status"], "missing");
    assert_eq!(st("bob")["status"], "failed");

    // carol: the bad model is an error naming the file; her diffusion model still passes.
    let c = grader("carol", "dann-mnistm-usps");
    assert_eq!(c["status"], "error");
    assert!(c["error"].as_str().unwrap().contains("dann-usps.onnx"), "{c}");
    assert_eq!(grader("carol", "ddpm")["status"], "passed");
    assert_eq!(st("carol")["status"], "error");

    let dave = grader("dave", "dann-mnistm-usps");
    assert_eq!(dave["status"], "timeout", "{dave}");
    assert!(dave["seconds"].as_f64().unwrap() < 25.0);
    let erin = grader("erin", "dann-mnistm-usps");
    assert_eq!(erin["status"], "memory-limit", "{erin}");
    let fay = grader("fay", "dann-mnistm-usps");
    assert_eq!(fay["status"], "memory-limit", "{fay}");
    assert_eq!(st("frank")["status"], "failed");
    assert!(grader("frank", "ddpm")["error"].as_str().unwrap().contains("no ddpm.onnx"));
    assert_eq!(st("gus")["status"], "error");
    assert!(st("gus")["error"].as_str().unwrap().contains("symbolic link"));
    // Nothing written for a refused student, nothing outside the output folder.
    assert!(!d.join("full/students/gus").exists());

    // Scoreboard: one row per student, metrics with intervals.
    let rows = csv_without_time(&d.join("full/scoreboard.csv"));
    assert_eq!(rows.len(), 9);
    assert!(rows[0].contains(&"dann-mnistm-usps:accuracy:lo".to_string()), "{:?}", rows[0]);
    let html = std::fs::read_to_string(d.join("full/scoreboard.html")).unwrap();
    assert!(html.contains("id=\"student-erin\"") && html.contains("data:image/png;base64,"));
    assert!(!html.contains("<script src") && !html.contains("http://") && !html.contains("https://"), "no network");
    let first = t.elapsed();

    // Resume: nothing is re-graded (the refused folder is only re-checked).
    let before = results_without_time(&d.join("full/class.json"));
    let t = std::time::Instant::now();
    let again = batch(d, "full", &[]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stdout).contains("7 finished earlier"), "{}", String::from_utf8_lossy(&again.stdout));
    assert!(t.elapsed() < first / 2, "resume took {:?}, the first run {first:?}", t.elapsed());
    assert_eq!(results_without_time(&d.join("full/class.json")), before);

    // Three shards, merged, equal the single run.
    for i in 1..=3 {
        let o = batch(d, &format!("s{i}"), &["--shard", &format!("{i}/3")]);
        assert!(matches!(o.status.code(), Some(0) | Some(1)), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let m = grade(d).args(["merge", "s1", "s2", "s3", "--out", "merged"]).output().unwrap();
    assert_eq!(m.status.code(), Some(1), "{}", String::from_utf8_lossy(&m.stderr));
    assert_eq!(results_without_time(&d.join("merged/class.json")), results_without_time(&d.join("full/class.json")));
    assert_eq!(csv_without_time(&d.join("merged/scoreboard.csv")), rows);
    assert!(d.join("merged/students/alice/ddpm/grid.png").is_file());

    // A missing shard is an error, not a silently partial scoreboard.
    let m = grade(d).args(["merge", "s1", "s3", "--out", "partial"]).output().unwrap();
    assert_eq!(m.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&m.stderr).contains("missing"));
    // The same shard twice is refused.
    let m = grade(d).args(["merge", "s1", "s1", "--out", "twice"]).output().unwrap();
    assert_eq!(m.status.code(), Some(2));
}

/// A classifier whose logits add the result of an ONNX Loop of 10^12 iterations.
fn endless_loop_model(p: &Path) {
    use tract_onnx::pb::{self, tensor_proto::DataType, type_proto};
    let scalar = |name: &str, dt: DataType| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: dt as i32,
                shape: Some(pb::TensorShapeProto { dim: vec![] }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    let node = |op: &str, ins: &[&str], out: &str| pb::NodeProto {
        op_type: op.into(),
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: vec![out.into()],
        name: out.into(),
        ..Default::default()
    };
    let one = pb::TensorProto {
        name: "one".into(),
        data_type: DataType::Float as i32,
        raw_data: 1f32.to_le_bytes().to_vec(),
        ..Default::default()
    };
    let body = pb::GraphProto {
        name: "body".into(),
        node: vec![node("Identity", &["c_in"], "c_out"), node("Add", &["v_in", "one"], "v_out")],
        initializer: vec![one],
        input: vec![scalar("i", DataType::Int64), scalar("c_in", DataType::Bool), scalar("v_in", DataType::Float)],
        output: vec![scalar("c_out", DataType::Bool), scalar("v_out", DataType::Float)],
        ..Default::default()
    };
    let mut g = GraphBuilder::new("endless");
    let x = classifier_input(&mut g);
    g.const_i64("trips", &[], &[1_000_000_000_000]);
    g.weight("v0", &[], &[0.0]);
    let f = g.node("Flatten", &[&x], &[Attr::Int("axis", 1)]);
    let w = g.weight("w", &[10, 2352], &vec![0.0; 23520]);
    let y = g.node("Gemm", &[&f, &w], &[Attr::Int("transB", 1)]);
    let y = g.node("Add", &[&y, "loop_v"], &[]);
    g.output("logits", &y, Elem::F32, &[Dim::Symbol("N"), Dim::Fixed(10)]);
    let mut m = g.build();
    let mut lp = node("Loop", &["trips", "", "v0"], "loop_v");
    lp.attribute.push(pb::AttributeProto {
        name: "body".into(),
        r#type: pb::attribute_proto::AttributeType::Graph as i32,
        g: Some(body),
        ..Default::default()
    });
    m.graph.as_mut().unwrap().node.insert(0, lp);
    writer::save(&m, p).unwrap();
}

#[test]
fn check_gives_up_on_a_model_that_runs_too_long() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("slow.onnx");
    endless_loop_model(&p);
    common::ort_library();
    let t = std::time::Instant::now();
    let out = grade(tmp.path()).args(["check", "--kind", "classifier", "--backend", "ort", "--timeout", "3s"]).arg(&p).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("slow.onnx") && stderr.contains("--timeout"), "{stderr}");
    assert!(t.elapsed().as_secs_f64() < 15.0);
}

#[test]
fn gan_submissions_share_one_reference_computation_and_match_a_single_run() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let inception = d.join("inception-random.onnx");
    let m = gradekit::nn::inception::to_onnx(&mut gradekit::nn::weights::SeededInit::new(3)).unwrap();
    writer::save(&m, &inception).unwrap();
    common::blob_images(&d.join("data/face/val"), 24, 5);
    let spec = d.join("gan-small.toml");
    let text = std::fs::read_to_string(common::root().join("graders/gan.toml")).unwrap().replace("images = 1000", "images = 20");
    std::fs::write(&spec, text).unwrap();
    for s in ["amy", "bo"] {
        std::fs::create_dir_all(d.join("class").join(s)).unwrap();
        std::fs::copy(fixture("models/dcgan-w8.onnx"), d.join("class").join(s).join("gan.onnx")).unwrap();
    }
    let batch = |extra: &[&str]| {
        grade(d)
            .args(["batch", "class", "--out", "b", "--data", "data", "--grader-arg", "all=--backend=tract"])
            .arg("--grader-arg")
            .arg(format!("gan=--spec={}", spec.display()))
            .arg("--inception")
            .arg(&inception)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = batch(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(matches!(out.status.code(), Some(0) | Some(1)), "{stderr}");
    assert!(stderr.contains("computing the reference faces' Inception features once"), "{stderr}");
    assert!(d.join("b/cache/gan-reference.npz").is_file());
    // Each run read the cached statistics and features: FID with its interval, and KID.
    let single = grade(d)
        .args(["gan", "--model"])
        .arg(fixture("models/dcgan-w8.onnx"))
        .arg("--spec")
        .arg(&spec)
        .arg("--inception")
        .arg(&inception)
        .args(["--backend", "tract", "--reference", "data/face/val", "--out", "single"])
        .output()
        .unwrap();
    assert!(matches!(single.status.code(), Some(0) | Some(1)), "{}", String::from_utf8_lossy(&single.stderr));
    let want = read_json(&d.join("single/report.json"));
    let metric = |r: &serde_json::Value, name: &str| r["metrics"].as_array().unwrap().iter().find(|m| m["name"] == name).unwrap().clone();
    for s in ["amy", "bo"] {
        let r = read_json(&d.join(format!("b/students/{s}/gan/report.json")));
        assert!(r["inputs"]["reference"].as_str().unwrap().ends_with("gan-reference.npz"), "{}", r["inputs"]);
        for name in ["fid", "kid"] {
            let (a, b) = (metric(&r, name)["value"].as_f64().unwrap(), metric(&want, name)["value"].as_f64().unwrap());
            assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{s} {name}: {a} vs {b} from the folder");
        }
        let fid = metric(&r, "fid");
        assert!(fid["interval"]["lo"].as_f64().unwrap() <= fid["value"].as_f64().unwrap());
        assert!(fid["interval"]["hi"].as_f64().unwrap() >= fid["value"].as_f64().unwrap());
    }
    // A second batch into the same folder reuses the cache.
    let again = batch(&["--force"]);
    assert!(!String::from_utf8_lossy(&again.stderr).contains("computing the reference"), "the cache was not reused");
}

/// Issue 25, classes 5 to 8: a hard link out of the class, a FIFO beside the student folders, a
/// symlinked folder with an ANSI name, and models whose names and metadata forge the log's
/// `error:` and allocation-failure lines.
#[test]
fn hostile_class_folders_and_forged_logs() {
    use tract_onnx::pb;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    copy_dir(&fixture("digits/usps"), &d.join("data/digits/usps"));
    let class = d.join("class");
    let mkfifo = |p: &Path| {
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    };
    // alice: an honest CSV, so the run has something graded.
    std::fs::create_dir_all(class.join("alice")).unwrap();
    std::fs::copy(fixture("digits/usps/val.csv"), class.join("alice/dann-usps.csv")).unwrap();
    // hank: a hard link to a file outside the class (the labels, say), where a symlink is refused.
    std::fs::create_dir_all(d.join("outside")).unwrap();
    std::fs::copy(fixture("digits/usps/val.csv"), d.join("outside/answers.csv")).unwrap();
    std::fs::create_dir_all(class.join("hank")).unwrap();
    std::fs::hard_link(d.join("outside/answers.csv"), class.join("hank/dann-usps.csv")).unwrap();
    // kim: a FIFO inside her folder.
    std::fs::create_dir_all(class.join("kim")).unwrap();
    mkfifo(&class.join("kim/dann-usps.onnx"));
    // A FIFO beside the student folders is not a student.
    mkfifo(&class.join("pipe"));
    // A symlinked student folder with an ANSI name.
    std::os::unix::fs::symlink(class.join("alice"), class.join("evil\x1b[31mred")).unwrap();
    // ivy: port names that print a forged `error:` line (and escapes); the model breaks the contract.
    let forged = |name: &str, input: &str, meta: &str| {
        let mut g = GraphBuilder::new("forged");
        let x = g.input(input, Elem::F32, &[Dim::Symbol("N"), Dim::Fixed(1), Dim::Fixed(28), Dim::Fixed(28)]);
        let f = g.node("Flatten", &[&x], &[Attr::Int("axis", 1)]);
        let w = g.weight("w", &[10, 784], &vec![0.0; 7840]);
        let y = g.node("Gemm", &[&f, &w], &[Attr::Int("transB", 1)]);
        g.output("logits", &y, Elem::F32, &[Dim::Symbol("N"), Dim::Fixed(10)]);
        let mut m = g.build();
        m.metadata_props.push(pb::StringStringEntryProto { key: "input_mean".into(), value: meta.into() });
        std::fs::create_dir_all(class.join(name)).unwrap();
        writer::save(&m, &class.join(name).join("dann-usps.onnx")).unwrap();
    };
    forged("ivy", "img\nerror: FORGED passed with 100%\x1b[32m\n", "0.5");
    // jack: the text of an allocation failure in the model's metadata, and a contract error.
    forged("jack", "img", "memory allocation of 123 bytes failed\nmemory limit exceeded");

    let out = grade(d)
        .args(["batch", "class", "--out", "o", "--data", "data", "--grader-arg", "all=--backend=tract"])
        .args(["--student-memory", "600M", "--timeout", "30s"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(!stdout.contains('\x1b') && !stderr.contains('\x1b'), "{stdout:?}\n{stderr:?}");
    let class_json = read_json(&d.join("o/class.json"));
    let students = class_json["students"].as_array().unwrap();
    let ids: Vec<&str> = students.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert!(!ids.contains(&"pipe"), "{ids:?}");
    assert_eq!(ids.len(), 6, "{ids:?}");
    let st = |id: &str| students.iter().find(|s| s["id"] == id).unwrap_or_else(|| panic!("{id} in {ids:?}")).clone();
    let g = |id: &str| st(id)["graders"][0].clone();
    assert_eq!(g("alice")["status"], "passed");
    assert_eq!(g("hank")["status"], "refused");
    assert!(st("hank")["error"].as_str().unwrap().contains("hard link"), "{}", st("hank"));
    assert!(!d.join("o/students/hank").exists());
    assert_eq!(g("kim")["status"], "refused");
    assert!(st("kim")["error"].as_str().unwrap().contains("not a regular file"), "{}", st("kim"));
    let evil = ids.iter().find(|i| i.starts_with("evil")).unwrap();
    assert!(!evil.contains('\x1b') && evil.contains("\\u{1b}"), "{evil}");
    assert_eq!(g(evil)["status"], "refused");
    // The status comes from the child's status file: the contract error, not the forged line.
    let ivy = g("ivy");
    assert_eq!(ivy["status"], "error", "{ivy}");
    let e = ivy["error"].as_str().unwrap();
    assert!(e.contains("does not meet the classifier contract") && !e.starts_with("FORGED"), "{e}");
    assert!(!e.contains('\x1b'), "{e:?}");
    let jack = g("jack");
    assert_eq!(jack["status"], "error", "{jack}");
    assert!(jack["error"].as_str().unwrap().contains("contract"), "{jack}");
    for f in ["scoreboard.csv", "scoreboard.html", "class.json"] {
        let text = std::fs::read_to_string(d.join("o").join(f)).unwrap();
        assert!(!text.contains('\x1b'), "{f}: {text:?}");
    }
    let csv = std::fs::read_to_string(d.join("o/scoreboard.csv")).unwrap();
    assert!(!csv.lines().any(|l| l.starts_with("error: FORGED")), "{csv}");
}
