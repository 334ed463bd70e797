//! scoreboard.html opened in a real headless browser (Debian's chromium, scripts/install-chromium.sh):
//! the rows render, the embedded sample grids decode, and sorting by a column (through the URL hash
//! the column headers set) orders the rows. Ignored by default: `.ci/run` installs chromium and runs
//! it with `--ignored`.

use std::path::Path;
use std::process::Command;

use gradekit::report::OutputDir;
use gradekit::tasks::batch::{self, ClassReport, GradeStatus, GraderResult, MetricSummary, StudentResult, StudentStatus};

fn student(id: &str, acc: Option<f64>, grid: bool) -> StudentResult {
    let metrics = acc
        .map(|v| {
            vec![MetricSummary {
                name: "accuracy".into(),
                value: Some(v),
                lo: Some(v - 0.02),
                hi: Some((v + 0.02).min(1.0)),
                simple: Some(0.8),
                strong: Some(0.88),
                higher_is_better: true,
                verdict: Some(if v >= 0.8 { "simple" } else { "below" }.into()),
                within_noise_of: if (v - 0.8).abs() <= 0.02 { vec!["simple".into()] } else { vec![] },
            }]
        })
        .unwrap_or_default();
    let status = if acc.is_some() { GradeStatus::Passed } else { GradeStatus::Timeout };
    StudentResult {
        id: id.into(),
        status: if acc.is_some() { StudentStatus::Passed } else { StudentStatus::Error },
        seconds: 1.0,
        graders: vec![GraderResult {
            grader: gradekit::graders::Grader::Ddpm,
            submission: Some("ddpm.onnx".into()),
            status,
            exit_code: None,
            seconds: 1.0,
            error: acc.is_none().then(|| "killed after 15 s <script>alert(1)</script>".into()),
            metrics,
            grid: grid.then(|| format!("students/{id}/ddpm/grid.png")),
        }],
        error: None,
        similar_to: vec![],
    }
}

fn chromium() -> String {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return c.into();
        }
    }
    panic!("no headless browser found: run `bash scripts/install-chromium.sh` (Debian's chromium) first");
}

fn dump_dom(browser: &str, file: &Path, hash: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        // Nothing may come from the network: a page that tried would show up as missing content.
        .arg("--host-resolver-rules=MAP * ~NOTFOUND")
        .arg("--virtual-time-budget=3000")
        .arg("--dump-dom")
        .arg(format!("file://{}{hash}", file.display()))
        .output()
        .expect("chromium runs");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn row_order(dom: &str) -> Vec<String> {
    dom.split("id=\"student-").skip(1).map(|s| s[..s.find('"').unwrap()].to_string()).collect()
}

#[test]
#[ignore = "needs chromium: scripts/install-chromium.sh; .ci/run runs it"]
fn browser_renders_the_scoreboard_and_sorts_it() {
    let browser = chromium();
    let tmp = tempfile::tempdir().unwrap();
    let out = OutputDir::create(&tmp.path().join("batch"), false).unwrap();
    let png =
        gradekit::pictures::png_bytes(&image::RgbImage::from_fn(28, 28, |x, y| image::Rgb([(x * 9) as u8, (y * 9) as u8, 128]))).unwrap();
    for id in ["ann", "ben", "cat"] {
        out.write(&format!("students/{id}/ddpm/grid.png"), &png).unwrap();
    }
    let mut report = ClassReport {
        tool: "gradekit".into(),
        tool_version: "test".into(),
        graders: vec![gradekit::graders::Grader::Ddpm],
        shards: vec![],
        students: vec![
            student("ann", Some(0.81), true),
            student("ben", Some(0.95), true),
            student("cat", Some(0.62), true),
            student("dan", None, false),
        ],
    };
    batch::write_class(&out, &mut report).unwrap();
    let file = out.root().join("scoreboard.html");

    let dom = dump_dom(&browser, &file, "");
    assert!(dom.contains("data-ready=\"1\""), "the page script did not run: {dom}");
    assert_eq!(row_order(&dom), ["ann", "ben", "cat", "dan"]);
    assert!(dom.contains("data-images-ok=\"3/3\""), "the embedded grids did not all decode");
    assert!(dom.contains("within noise of simple"));
    // The error text is shown as text, never run as markup.
    assert!(dom.contains("&lt;script&gt;alert(1)&lt;/script&gt;") && !dom.contains("<script>alert(1)"));

    // Best first by accuracy; the student without a score goes last either way.
    let dom = dump_dom(&browser, &file, "#sort=ddpm:accuracy:desc");
    assert!(dom.contains("data-sorted=\"ddpm:accuracy:desc\""), "sorting did not run");
    assert_eq!(row_order(&dom), ["ben", "ann", "cat", "dan"]);
    let dom = dump_dom(&browser, &file, "#sort=ddpm:accuracy:asc");
    assert_eq!(row_order(&dom), ["cat", "ann", "ben", "dan"]);
    let dom = dump_dom(&browser, &file, "#sort=status:asc");
    assert_eq!(row_order(&dom)[0], "dan", "error sorts before passed");
}
