//! One student's grading: each grader in a child process of its own (the submission's data paths from
//! `--data`, time and memory limits), its report read back for the scoreboard, and the fingerprint run
//! for copy detection.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::layout::{self, Student, Submission};
use super::{child, similarity, student_status, BatchArgs, GradeStatus, GraderResult, MetricSummary, StudentResult, StudentStatus};
use crate::graders::Grader;
use crate::report::{write_atomic, MetricRow, OutputDir, Status};
use crate::spec::GraderSpec;

/// Grades one student (or loads the result of an earlier run); `true` when resumed.
pub(super) fn grade_student(
    args: &BatchArgs,
    out: &OutputDir,
    s: &Student,
    graders: &[Grader],
    extra: &[(String, String)],
    gan_reference: Option<&(PathBuf, Option<PathBuf>)>,
) -> Result<(StudentResult, bool)> {
    let started = Instant::now();
    if let Some(why) = &s.refused {
        let gs = graders
            .iter()
            .map(|g| GraderResult {
                grader: *g,
                submission: None,
                status: GradeStatus::Refused,
                exit_code: None,
                seconds: 0.0,
                error: Some(why.clone()),
                metrics: vec![],
                grid: None,
            })
            .collect();
        return Ok((
            StudentResult {
                id: s.id.clone(),
                status: StudentStatus::Error,
                seconds: 0.0,
                graders: gs,
                error: Some(why.clone()),
                similar_to: vec![],
            },
            false,
        ));
    }
    let dir_rel = format!("students/{}", s.id);
    let result_file = out.path(&format!("{dir_rel}/result.json"))?;
    if !args.force {
        if let Ok(bytes) = std::fs::read(&result_file) {
            if let Ok(r) = serde_json::from_slice::<StudentResult>(&bytes) {
                let covered = graders.iter().all(|g| r.graders.iter().any(|x| &x.grader == g));
                if covered {
                    let mut r = r;
                    r.graders.retain(|x| graders.contains(&x.grader));
                    r.status = student_status(&r.graders);
                    return Ok((r, true));
                }
            }
        }
    }
    out.subdir(&dir_rel)?;
    let mut results = vec![];
    for g in graders {
        let Some((_, sub)) = s.submissions.iter().find(|(sg, _)| sg == g) else {
            results.push(GraderResult {
                grader: *g,
                submission: None,
                status: GradeStatus::Missing,
                exit_code: None,
                seconds: 0.0,
                error: Some(format!("no {} in {}", layout::expected_files(*g), s.dir.display())),
                metrics: vec![],
                grid: None,
            });
            continue;
        };
        results.push(run_grader(args, out, &dir_rel, *g, sub, extra, gan_reference)?);
    }
    let r = StudentResult {
        id: s.id.clone(),
        status: student_status(&results),
        seconds: started.elapsed().as_secs_f64(),
        graders: results,
        error: None,
        similar_to: vec![],
    };
    write_atomic(&result_file, serde_json::to_string_pretty(&r)?.as_bytes())?;
    Ok((r, false))
}

fn run_grader(
    args: &BatchArgs,
    out: &OutputDir,
    dir_rel: &str,
    id: Grader,
    sub: &Submission,
    extra: &[(String, String)],
    gan_reference: Option<&(PathBuf, Option<PathBuf>)>,
) -> Result<GraderResult> {
    let grader = id.name();
    let spec = GraderSpec::builtin(grader)?;
    let rel = format!("{dir_rel}/{grader}");
    let gdir = out.path(&rel)?;
    if gdir.exists() {
        std::fs::remove_dir_all(&gdir).with_context(|| format!("cannot clear {}", gdir.display()))?;
    }
    std::fs::create_dir_all(&gdir)?;
    let exe = std::env::current_exe().context("cannot find the grade binary to run")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--memory-limit").arg(args.student_memory.to_string());
    // The spec names data/hw2_data/...; --data replaces the data/hw2_data part.
    let under_data = |d: &str| args.data.join(Path::new(d).strip_prefix("data/hw2_data").unwrap_or(Path::new(d)));
    let data_dir = |key: &str, value: &Option<String>| -> Result<PathBuf> { Ok(under_data(spec.data_str(key, value)?)) };
    match (id, sub) {
        (Grader::Gan, Submission::Onnx(p)) => {
            cmd.arg(id.info().subcommand).arg("--model").arg(p).arg("--reference");
            match gan_reference {
                Some((r, _)) => cmd.arg(r),
                None => cmd.arg(data_dir("reference", &spec.data.reference)?),
            };
            // The training faces' features, cached once per batch, else the folder (a missing one is a note).
            cmd.arg("--train");
            match gan_reference.and_then(|(_, t)| t.as_ref()) {
                Some(t) => cmd.arg(t),
                None => cmd.arg(args.data.join("face/train")),
            };
            if let Some(i) = &args.inception {
                cmd.arg("--inception").arg(i);
            }
        }
        (Grader::Ddpm, Submission::Onnx(p)) => {
            cmd.arg(id.info().subcommand).arg("--model").arg(p);
            // The real digits (judge FID reference, memorisation's training digits) come from --data like
            // every other grader's data, never from the folder the batch was started in; absent: `off`,
            // so the report says the check was skipped instead of looking elsewhere.
            for (flag, dir) in
                [("--reference", spec.quality.as_ref().and_then(|q| q.reference.clone())), ("--train", spec.data.train.clone())]
            {
                match dir.as_deref().map(under_data).filter(|d| d.is_dir()) {
                    Some(d) => cmd.arg(flag).arg(d),
                    None => cmd.arg(flag).arg("off"),
                };
            }
        }
        (Grader::DannMnistmSvhn | Grader::DannMnistmUsps, Submission::Onnx(p)) => {
            let pair = grader.strip_prefix("dann-").context("a DANN grader's name is dann-<pair>")?;
            cmd.args([id.info().subcommand, "--pair", pair, "--model"]).arg(p).arg("--data").arg(data_dir("dir", &spec.data.dir)?);
        }
        (_, Submission::Csv(p)) => {
            let split = spec.data.split.as_deref().unwrap_or("val");
            cmd.arg("csv")
                .arg(p)
                .arg("--labels")
                .arg(data_dir("dir", &spec.data.dir)?.join(format!("{split}.csv")))
                .args(["--grader", grader]);
        }
    }
    let csv_run = matches!(sub, Submission::Csv(_));
    for (g, a) in extra {
        // Model options (backend, steps...) do not exist for CSV grading.
        if (g == "all" && !csv_run) || g == grader {
            cmd.arg(a);
        }
    }
    cmd.arg("--out").arg(&gdir).args(["--force", "--quiet"]);
    let limits = child::Limits { time: args.timeout.unwrap_or(spec.budget() + args.grace), memory: args.student_memory };
    let o =
        child::run(cmd, &out.path(&format!("{dir_rel}/{grader}.log"))?, &out.path(&format!("{dir_rel}/{grader}.status.json"))?, limits)?;
    let file_name = sub.path().file_name().map(|n| n.to_string_lossy().to_string());
    let mut r = GraderResult {
        grader: id,
        submission: file_name,
        status: GradeStatus::Error,
        exit_code: None,
        seconds: o.seconds,
        error: o.error.clone(),
        metrics: vec![],
        grid: None,
    };
    match o.ended {
        child::Ended::TimedOut => {
            r.status = GradeStatus::Timeout;
            r.error = Some(format!(
                "killed after {:.0} s: the grading run did not finish within its {:.0} s limit (the model is too slow or hangs)",
                o.seconds,
                limits.time.as_secs_f64()
            ));
        }
        child::Ended::OverMemory => {
            // A fixed text (the measured size varies run to run; the log has it).
            r.status = GradeStatus::MemoryLimit;
            r.error = Some(format!(
                "stopped over the memory limit of {:.2} GiB per grading run (--student-memory): the model needs more memory than allowed (log: {rel}.log)",
                args.student_memory as f64 / (1u64 << 30) as f64
            ));
        }
        child::Ended::Signal(sig) => {
            r.status = GradeStatus::Crashed;
            r.error = Some(format!("the grading process died of signal {sig}{}", o.error.map(|e| format!(": {e}")).unwrap_or_default()));
        }
        child::Ended::Exited(code) => {
            r.exit_code = Some(code);
            let report = gdir.join("report.json");
            if code <= 1 && report.is_file() {
                let child: ChildReport = serde_json::from_slice(&crate::safe_fs::read_regular(&report, 64 << 20, "grader report")?)
                    .with_context(|| format!("{} is not a grader report", report.display()))?;
                r.status = match child.status {
                    Status::Passed => GradeStatus::Passed,
                    Status::OverBudget => GradeStatus::OverBudget,
                    Status::Failed => GradeStatus::Failed,
                };
                r.metrics = child.metrics.into_iter().map(summary_of).collect();
                if r.status == GradeStatus::OverBudget && r.error.is_none() {
                    r.error = Some("over the time budget: the numbers cover only what was done".into());
                }
            } else if r.error.is_none() {
                r.error = Some(format!("the grader exited with code {code} (log: {rel}.log)"));
            }
        }
    }
    if gdir.join("grid.png").is_file() {
        r.grid = Some(format!("{rel}/grid.png"));
    }
    // The copy-detection fingerprint, in its own limited process (the model is untrusted), for
    // models that graded to the end.
    if let (Submission::Onnx(p), child::Ended::Exited(0 | 1)) = (sub, &o.ended) {
        fingerprint_run(args, out, dir_rel, id, p, extra, data_dir("dir", &spec.data.dir).ok(), limits)?;
    }
    Ok(r)
}

/// `grade fingerprint` for one model into `students/<id>/<grader>/fingerprint.json`; a failure is
/// logged, never an error of the batch.
#[allow(clippy::too_many_arguments)]
fn fingerprint_run(
    args: &BatchArgs,
    out: &OutputDir,
    dir_rel: &str,
    id: Grader,
    model: &Path,
    extra: &[(String, String)],
    val_dir: Option<PathBuf>,
    limits: child::Limits,
) -> Result<()> {
    let (grader, kind) = (id.name(), id.info().model.name());
    let exe = std::env::current_exe().context("cannot find the grade binary to run")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--memory-limit").arg(args.student_memory.to_string());
    cmd.args(["fingerprint", "--kind", kind])
        .arg(model)
        .arg("--output")
        .arg(out.path(&similarity::fingerprint_rel(dir_rel.trim_start_matches("students/"), grader))?);
    if kind == "classifier" {
        if let Some(d) = val_dir {
            cmd.arg("--val").arg(d);
        }
    }
    // Only the runtime's options apply (backend, device, threads, metadata).
    for (g, a) in extra {
        let runtime_flag = ["--backend", "--device", "--threads", "--ort-opt", "--meta"].iter().any(|f| a.starts_with(f));
        if (g == "all" || g == grader) && runtime_flag {
            cmd.arg(a);
        }
    }
    let limits = child::Limits { time: limits.time.min(Duration::from_secs(120)), memory: limits.memory };
    child::run(
        cmd,
        &out.path(&format!("{dir_rel}/{grader}.fingerprint.log"))?,
        &out.path(&format!("{dir_rel}/{grader}.fingerprint.status.json"))?,
        limits,
    )?;
    Ok(())
}

/// What the batch reads of a child's `report.json` (the [`crate::report::Report`] it wrote).
#[derive(serde::Deserialize)]
struct ChildReport {
    status: Status,
    #[serde(default)]
    metrics: Vec<MetricRow>,
}

/// The scoreboard's view of one of a child's metrics.
fn summary_of(m: MetricRow) -> MetricSummary {
    MetricSummary {
        lo: m.interval.as_ref().map(|i| i.lo),
        hi: m.interval.as_ref().map(|i| i.hi),
        verdict: m.verdict.and_then(|v| serde_json::to_value(v).ok()).and_then(|v| v.as_str().map(String::from)),
        name: m.name,
        value: m.value,
        simple: m.simple,
        strong: m.strong,
        higher_is_better: m.higher_is_better,
        within_noise_of: m.within_noise_of,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_childs_report_reads_back_as_typed_rows() {
        let mut r = crate::report::Report::new(&GraderSpec::builtin("dann-mnistm-usps").unwrap());
        r.accuracy_metric("accuracy", 90, 100);
        r.metric("fid", None);
        r.settle();
        let child: ChildReport = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(child.status, Status::Passed);
        let m: Vec<MetricSummary> = child.metrics.into_iter().map(summary_of).collect();
        assert_eq!(
            (m[0].name.as_str(), m[0].value, m[0].simple, m[0].verdict.as_deref()),
            ("accuracy", Some(0.9), Some(0.76), Some("simple"))
        );
        assert!(m[0].lo.unwrap() < 0.9 && m[0].hi.unwrap() > 0.9, "the Wilson interval comes back");
        assert_eq!((m[1].name.as_str(), m[1].value, m[1].lo), ("fid", None, None));
        // A bound that was not finite is written as null: the row still reads, without its interval.
        let mut v = serde_json::to_value(&r).unwrap();
        v["metrics"][0]["interval"]["lo"] = serde_json::Value::Null;
        let child: ChildReport = serde_json::from_value(v).unwrap();
        assert_eq!((child.metrics[0].value, child.metrics[0].interval.is_none()), (Some(0.9), true));
    }
}
