//! `grade batch`: every applicable grader for every student of a class, each run isolated in a
//! child process with time and memory limits; resumable, shardable (`--shard I/N`, merged with
//! `grade merge`), ending in a scoreboard (CSV + static HTML). Layout: docs/batch.md.

pub mod child;
pub mod layout;
pub mod merge;
pub mod scoreboard;
pub mod similarity;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::report::{write_atomic, OutputDir};
use crate::spec::GraderSpec;
use layout::{Student, Submission};

/// `--shard I/N`: this run grades the students whose id hashes to I (1-based) of N.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (i, n) = s.split_once('/').ok_or_else(|| format!("--shard {s:?}: expected I/N, e.g. 2/8"))?;
        let (index, count): (usize, usize) = (
            i.trim().parse().map_err(|_| format!("--shard {s:?}: I is not a number"))?,
            n.trim().parse().map_err(|_| format!("--shard {s:?}: N is not a number"))?,
        );
        if count == 0 || index == 0 || index > count {
            return Err(format!("--shard {s:?}: need 1 <= I <= N"));
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// Stable across machines, runs and class sizes: a student's shard depends on the id alone.
    pub fn holds(&self, id: &str) -> bool {
        use sha2::{Digest, Sha256};
        let h = Sha256::digest(id.as_bytes());
        let v = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
        (v % self.count as u64) as usize == self.index - 1
    }
}

/// How one grader's run for one student ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GradeStatus {
    Passed,
    /// Graded, below a baseline.
    Failed,
    OverBudget,
    /// The grader refused the submission (bad model, wrong shapes, bad CSV...): see `error`.
    Error,
    /// Killed at the wall-clock limit (budget + grace).
    Timeout,
    MemoryLimit,
    /// Died of a signal.
    Crashed,
    /// No file for this grader in the student's folder.
    Missing,
    /// The student's folder was refused (a symlink, an unusable name).
    Refused,
}

impl GradeStatus {
    pub fn label(&self) -> &'static str {
        match self {
            GradeStatus::Passed => "passed",
            GradeStatus::Failed => "failed",
            GradeStatus::OverBudget => "over-budget",
            GradeStatus::Error => "error",
            GradeStatus::Timeout => "timeout",
            GradeStatus::MemoryLimit => "memory-limit",
            GradeStatus::Crashed => "crashed",
            GradeStatus::Missing => "missing",
            GradeStatus::Refused => "refused",
        }
    }
}

/// One metric as the scoreboard shows it (from the grader's report.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSummary {
    pub name: String,
    pub value: Option<f64>,
    pub lo: Option<f64>,
    pub hi: Option<f64>,
    pub simple: Option<f64>,
    pub strong: Option<f64>,
    pub higher_is_better: bool,
    pub verdict: Option<String>,
    #[serde(default)]
    pub within_noise_of: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraderResult {
    pub grader: String,
    /// The file graded (name inside the student's folder).
    pub submission: Option<String>,
    pub status: GradeStatus,
    pub exit_code: Option<i32>,
    pub seconds: f64,
    pub error: Option<String>,
    pub metrics: Vec<MetricSummary>,
    /// The sample grid, relative to the batch folder.
    pub grid: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StudentStatus {
    /// Every grader passed.
    Passed,
    /// Graded, but something is below a baseline, over budget or missing.
    Failed,
    /// A submission could not be graded (refused, crashed, timed out, over memory, bad model).
    Error,
}

impl StudentStatus {
    pub fn label(&self) -> &'static str {
        match self {
            StudentStatus::Passed => "passed",
            StudentStatus::Failed => "failed",
            StudentStatus::Error => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudentResult {
    pub id: String,
    pub status: StudentStatus,
    pub seconds: f64,
    pub graders: Vec<GraderResult>,
    pub error: Option<String>,
    /// Students whose models are near-identical to this student's, with the evidence (filled from the
    /// fingerprints when the class report is written; similarity.rs). Never changes a status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub similar_to: Vec<String>,
}

/// `class.json`: one batch run (or a merge of shards).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassReport {
    pub tool: String,
    pub tool_version: String,
    pub graders: Vec<String>,
    /// The shards this report covers (one for a shard run, all for a merge); empty: unsharded.
    #[serde(default)]
    pub shards: Vec<Shard>,
    pub students: Vec<StudentResult>,
}

impl ClassReport {
    pub fn counts(&self) -> (usize, usize, usize) {
        let n = |s| self.students.iter().filter(|r| r.status == s).count();
        (n(StudentStatus::Passed), n(StudentStatus::Failed), n(StudentStatus::Error))
    }
}

pub struct BatchArgs {
    pub submissions: PathBuf,
    pub out: PathBuf,
    pub force: bool,
    pub shard: Option<Shard>,
    /// Graders to run; empty: every grader some student of the class submitted for.
    pub graders: Vec<String>,
    /// The homework data root (hw2_data layout).
    pub data: PathBuf,
    /// `GRADER=ARG` or `all=ARG`: extra arguments for the grader runs.
    pub grader_args: Vec<String>,
    pub student_memory: u64,
    pub grace: Duration,
    /// Overrides budget + grace as the wall-clock limit of each grading run.
    pub timeout: Option<Duration>,
    pub jobs: usize,
    pub inception: Option<PathBuf>,
    pub quiet: bool,
}

fn student_status(graders: &[GraderResult]) -> StudentStatus {
    use GradeStatus::*;
    if graders.iter().any(|g| matches!(g.status, Error | Timeout | MemoryLimit | Crashed | Refused)) {
        StudentStatus::Error
    } else if graders.iter().all(|g| g.status == Passed) {
        StudentStatus::Passed
    } else {
        StudentStatus::Failed
    }
}

/// The batch folder is reused to resume; any other non-empty folder needs --force.
fn open_out(out: &Path, force: bool) -> Result<OutputDir> {
    let looks_like_batch = out.join("students").is_dir() || out.join("class.json").is_file();
    OutputDir::create(out, force || looks_like_batch)
}

pub fn run(args: &BatchArgs) -> Result<ClassReport> {
    let all = layout::discover(&args.submissions)?;
    if all.is_empty() {
        bail!("{} holds no student folders (one sub-folder per student, see docs/batch.md)", args.submissions.display());
    }
    let graders: Vec<String> = if args.graders.is_empty() {
        // From the whole class, not the shard, so every shard grades (and reports) the same set.
        layout::GRADERS
            .iter()
            .map(|g| g.grader.to_string())
            .filter(|g| all.iter().any(|s| s.submissions.iter().any(|(sg, _)| sg == g)))
            .collect()
    } else {
        for g in &args.graders {
            if !layout::GRADERS.iter().any(|k| k.grader == g) {
                bail!("--graders {g}: unknown; known: {}", layout::GRADERS.iter().map(|k| k.grader).collect::<Vec<_>>().join(", "));
            }
        }
        args.graders.clone()
    };
    if graders.is_empty() {
        bail!("no student in {} handed in a file any grader reads (docs/batch.md lists them)", args.submissions.display());
    }
    let extra = parse_grader_args(&args.grader_args, &graders)?;
    let students: Vec<Student> = all.into_iter().filter(|s| args.shard.is_none_or(|sh| sh.holds(&s.id))).collect();
    let out = open_out(&args.out, args.force)?;
    out.subdir("students")?;

    let any_gan = graders.iter().any(|g| g == "gan") && students.iter().any(|s| s.submissions.iter().any(|(g, _)| *g == "gan"));
    let gan_reference = if any_gan { gan_reference_cache(args, &out)? } else { None };
    let gan_train = if any_gan { gan_train_cache(args, &out)? } else { None };
    let gan_reference = gan_reference.map(|r| (r, gan_train));

    let started = Instant::now();
    let pb = crate::progress::bar(students.len() as u64, "students");
    if args.quiet {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<StudentResult>> = Mutex::new(vec![]);
    let tally = Mutex::new((0usize, 0usize, 0usize)); // done, failed, resumed
    let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..args.jobs.max(1) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(s) = students.get(i) else { break };
                match grade_student(args, &out, s, &graders, &extra, gan_reference.as_ref()) {
                    Ok((r, resumed)) => {
                        let mut t = tally.lock().unwrap();
                        t.0 += 1;
                        t.1 += (r.status != StudentStatus::Passed) as usize;
                        t.2 += resumed as usize;
                        pb.set_message(format!("{} not passed", t.1));
                        if !args.quiet && !resumed {
                            let line = format!(
                                "[{}/{}] {:<16} {:<7} {:>6.1}s  {}",
                                t.0,
                                students.len(),
                                r.id,
                                status_word(r.status),
                                r.seconds,
                                grader_line(&r)
                            );
                            // Errors quote submissions (names, metadata): no control characters on the terminal.
                            let line = crate::report::sanitize::line(&line).into_owned();
                            // A bar that is not drawn (stderr is a CI log, not a terminal) prints nothing.
                            if pb.is_hidden() {
                                println!("{line}");
                            } else {
                                pb.println(line);
                            }
                        }
                        pb.inc(1);
                        results.lock().unwrap().push(r);
                    }
                    Err(e) => {
                        // Only the batch's own trouble (a full disk) lands here: stop.
                        failure.lock().unwrap().get_or_insert(e.context(format!("grading student {}", s.id)));
                        next.store(students.len(), Ordering::SeqCst);
                    }
                }
            });
        }
    });
    pb.finish_and_clear();
    if let Some(e) = failure.into_inner().unwrap() {
        return Err(e);
    }
    let mut students = results.into_inner().unwrap();
    students.sort_by(|a, b| a.id.cmp(&b.id));
    let resumed = tally.into_inner().unwrap().2;
    let mut report = ClassReport {
        tool: "gradekit".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        graders,
        shards: args.shard.into_iter().collect(),
        students,
    };
    write_class(&out, &mut report)?;
    if !args.quiet {
        let (p, f, e) = report.counts();
        println!(
            "{} students in {:.0} s: {p} passed, {f} failed, {e} with errors{}",
            report.students.len(),
            started.elapsed().as_secs_f64(),
            if resumed > 0 { format!(" ({resumed} finished earlier, not re-graded: --force re-grades them)") } else { String::new() }
        );
        println!("wrote {} (class.json, scoreboard.csv, scoreboard.html, students/<id>/...)", out.root().display());
    }
    Ok(report)
}

/// class.json, scoreboard.csv, scoreboard.html and similar-pairs.csv (pairs of students found from
/// the fingerprints under the folder, which also fill each student's `similar_to`).
pub fn write_class(out: &OutputDir, report: &mut ClassReport) -> Result<()> {
    let pairs = similarity::annotate(out.root(), report)?;
    out.write("similar-pairs.csv", pairs.as_bytes())?;
    let report = &*report;
    out.write("class.json", serde_json::to_string_pretty(report)?.as_bytes())?;
    out.write("scoreboard.csv", scoreboard::csv(report)?.as_bytes())?;
    out.write("scoreboard.html", scoreboard::html(report, out.root())?.as_bytes())?;
    Ok(())
}

/// The terminal line's word: upper case when something needs a look.
fn status_word(s: StudentStatus) -> String {
    match s {
        StudentStatus::Passed => s.label().to_string(),
        _ => s.label().to_uppercase(),
    }
}

fn grader_line(r: &StudentResult) -> String {
    if let Some(e) = &r.error {
        return e.clone();
    }
    r.graders
        .iter()
        .map(|g| {
            let m: Vec<String> = g.metrics.iter().filter_map(|m| m.value.map(|v| format!("{} {v:.4}", m.name))).collect();
            match (&g.error, m.is_empty()) {
                (Some(e), true) if g.status != GradeStatus::Missing => {
                    let short: String = e.chars().take(100).collect();
                    format!("{}: {} ({short}{})", g.grader, g.status.label(), if e.chars().count() > 100 { "..." } else { "" })
                }
                (_, true) => format!("{}: {}", g.grader, g.status.label()),
                _ => format!("{}: {} ({})", g.grader, g.status.label(), m.join(", ")),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `GRADER=ARG` pairs, checked against the graders of this run.
fn parse_grader_args(pairs: &[String], graders: &[String]) -> Result<Vec<(String, String)>> {
    let mut v = vec![];
    for p in pairs {
        let Some((g, a)) = p.split_once('=') else {
            bail!("--grader-arg {p:?}: expected GRADER=ARG, e.g. ddpm=--steps=10 or all=--backend=tract")
        };
        if g != "all" && !layout::GRADERS.iter().any(|k| k.grader == g) {
            bail!("--grader-arg {p:?}: no grader named {g}");
        }
        if g != "all" && !graders.iter().any(|k| k == g) {
            eprintln!("note: --grader-arg {p:?}: grader {g} is not part of this run");
        }
        v.push((g.to_string(), a.to_string()));
    }
    Ok(v)
}

/// Inception features of the reference faces, computed once per batch folder and handed to every
/// `grade gan` run as a .npz (statistics and features, so KID still works).
fn gan_reference_cache(args: &BatchArgs, out: &OutputDir) -> Result<Option<PathBuf>> {
    let reference = args.data.join("face/val");
    if !reference.is_dir() {
        return Ok(None); // each gan run reports the missing reference itself
    }
    let inception = match crate::metrics::inception::locate_inception(&args.inception)? {
        Ok(p) => p,
        Err(_) => return Ok(None),
    };
    let cache = out.path("cache/gan-reference.npz")?;
    // The Inception file by path, size and modification time: locate_inception has just checked the
    // installed model's SHA-256, so hashing its ~100 MB again would only repeat that read.
    let im = std::fs::metadata(&inception).with_context(|| format!("cannot read {}", inception.display()))?;
    let modified = im.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
    let key = format!(
        "{}\n{} {} {modified}\n",
        std::fs::canonicalize(&reference)?.display(),
        std::fs::canonicalize(&inception)?.display(),
        im.len()
    );
    let key_file = out.path("cache/gan-reference.key")?;
    if cache.is_file() && std::fs::read_to_string(&key_file).ok().as_deref() == Some(key.as_str()) {
        return Ok(Some(cache));
    }
    out.subdir("cache")?;
    if !args.quiet {
        eprintln!("computing the reference faces' Inception features once for the whole batch ({})", reference.display());
    }
    let rt = crate::runtime::RuntimeOptions::default();
    let mut net = crate::metrics::inception::InceptionNet::open(&inception, &rt, 50)?;
    let (f, n) = crate::tasks::gan::folder_features(&reference, &mut net, args.quiet)?;
    let stats = crate::metrics::fid::stats_from_features(&f, n, 2048)?;
    crate::metrics::npz::write_stats_npz_with_features(&cache, &stats, Some((&f, n)))?;
    write_atomic(&key_file, key.as_bytes())?;
    Ok(Some(cache))
}

/// Inception features of the training faces (memorisation check), computed once per batch into
/// `cache/` and handed to every `grade gan` run; `None` when there are no training faces or no Inception.
fn gan_train_cache(args: &BatchArgs, out: &OutputDir) -> Result<Option<PathBuf>> {
    let train = args.data.join("face/train");
    if !train.is_dir() {
        return Ok(None);
    }
    let inception = match crate::metrics::inception::locate_inception(&args.inception)? {
        Ok(p) => p,
        Err(_) => return Ok(None),
    };
    out.subdir("cache")?;
    let cache = out.path("cache")?;
    let rt = crate::runtime::RuntimeOptions::default();
    let mut net = crate::metrics::inception::InceptionNet::open(&inception, &rt, 50)?;
    let (t, _) = crate::tasks::integrity::face_train_features(&train, &inception, &mut net, Some(&cache), args.quiet)?;
    Ok(Some(crate::metrics::memorisation::cache_file(&cache, crate::tasks::integrity::FACE_TRAIN, &t.key)))
}

/// Grades one student (or loads the result of an earlier run); `true` when resumed.
fn grade_student(
    args: &BatchArgs,
    out: &OutputDir,
    s: &Student,
    graders: &[String],
    extra: &[(String, String)],
    gan_reference: Option<&(PathBuf, Option<PathBuf>)>,
) -> Result<(StudentResult, bool)> {
    let started = Instant::now();
    if let Some(why) = &s.refused {
        let gs = graders
            .iter()
            .map(|g| GraderResult {
                grader: g.clone(),
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
                grader: g.clone(),
                submission: None,
                status: GradeStatus::Missing,
                exit_code: None,
                seconds: 0.0,
                error: Some(format!("no {} in {}", layout::expected_files(g), s.dir.display())),
                metrics: vec![],
                grid: None,
            });
            continue;
        };
        results.push(run_grader(args, out, &dir_rel, g, sub, extra, gan_reference)?);
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
    grader: &str,
    sub: &Submission,
    extra: &[(String, String)],
    gan_reference: Option<&(PathBuf, Option<PathBuf>)>,
) -> Result<GraderResult> {
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
    let data_dir = |key: &str| -> Result<PathBuf> {
        let d = spec.data_str(key)?;
        // The spec names data/hw2_data/...; --data replaces the data/hw2_data part.
        Ok(args.data.join(Path::new(d).strip_prefix("data/hw2_data").unwrap_or(Path::new(d))))
    };
    match (grader, sub) {
        ("gan", Submission::Onnx(p)) => {
            cmd.arg("gan").arg("--model").arg(p).arg("--reference");
            match gan_reference {
                Some((r, _)) => cmd.arg(r),
                None => cmd.arg(data_dir("reference")?),
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
        ("ddpm", Submission::Onnx(p)) => {
            cmd.arg("ddpm").arg("--model").arg(p);
            // The real digits (judge FID reference, memorisation's training digits) come from --data like
            // every other grader's data, never from the folder the batch was started in; absent: `off`,
            // so the report says the check was skipped instead of looking elsewhere.
            for (flag, dir) in [
                ("--reference", spec.quality.as_ref().and_then(|q| q.reference.clone())),
                ("--train", spec.data_str("train").ok().map(String::from)),
            ] {
                let dir = dir.map(|d| args.data.join(Path::new(&d).strip_prefix("data/hw2_data").unwrap_or(Path::new(&d))));
                match dir.filter(|d| d.is_dir()) {
                    Some(d) => cmd.arg(flag).arg(d),
                    None => cmd.arg(flag).arg("off"),
                };
            }
        }
        (g, Submission::Onnx(p)) => {
            let pair = g.strip_prefix("dann-").context("unknown grader")?;
            cmd.args(["dann", "--pair", pair, "--model"]).arg(p).arg("--data").arg(data_dir("dir")?);
        }
        (g, Submission::Csv(p)) => {
            let split = spec.data_str("split").unwrap_or("val");
            cmd.arg("csv").arg(p).arg("--labels").arg(data_dir("dir")?.join(format!("{split}.csv"))).args(["--grader", g]);
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
        grader: grader.into(),
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
                let v: serde_json::Value = serde_json::from_slice(&crate::safe_fs::read_regular(&report, 64 << 20, "grader report")?)?;
                r.status = match v["status"].as_str() {
                    Some("passed") => GradeStatus::Passed,
                    Some("over-budget") => GradeStatus::OverBudget,
                    _ => GradeStatus::Failed,
                };
                r.metrics = metrics_of(&v);
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
        fingerprint_run(args, out, dir_rel, grader, p, extra, &data_dir, limits)?;
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
    grader: &str,
    model: &Path,
    extra: &[(String, String)],
    data_dir: &dyn Fn(&str) -> Result<PathBuf>,
    limits: child::Limits,
) -> Result<()> {
    let kind = match grader {
        "gan" => "generator",
        "ddpm" => "noise",
        _ => "classifier",
    };
    let exe = std::env::current_exe().context("cannot find the grade binary to run")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--memory-limit").arg(args.student_memory.to_string());
    cmd.args(["fingerprint", "--kind", kind])
        .arg(model)
        .arg("--output")
        .arg(out.path(&similarity::fingerprint_rel(dir_rel.trim_start_matches("students/"), grader))?);
    if kind == "classifier" {
        if let Ok(d) = data_dir("dir") {
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

fn metrics_of(report: &serde_json::Value) -> Vec<MetricSummary> {
    let Some(ms) = report["metrics"].as_array() else { return vec![] };
    ms.iter()
        .map(|m| MetricSummary {
            name: m["name"].as_str().unwrap_or("?").to_string(),
            value: m["value"].as_f64(),
            lo: m["interval"]["lo"].as_f64(),
            hi: m["interval"]["hi"].as_f64(),
            simple: m["simple"].as_f64(),
            strong: m["strong"].as_f64(),
            higher_is_better: m["higher_is_better"].as_bool().unwrap_or(true),
            verdict: m["verdict"].as_str().map(String::from),
            within_noise_of: m["within_noise_of"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
                .unwrap_or_default(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_class_stably() {
        let ids: Vec<String> = (0..500).map(|i| format!("student{i:03}")).collect();
        let shards: Vec<Shard> = (1..=4).map(|i| format!("{i}/4").parse().unwrap()).collect();
        let mut sizes = [0; 4];
        for id in &ids {
            let owners: Vec<usize> = (0..4).filter(|&k| shards[k].holds(id)).collect();
            assert_eq!(owners.len(), 1, "{id} in shards {owners:?}");
            sizes[owners[0]] += 1;
        }
        assert!(sizes.iter().all(|&n| n > 90), "{sizes:?}");
        assert!("0/4".parse::<Shard>().is_err() && "5/4".parse::<Shard>().is_err() && "x".parse::<Shard>().is_err());
        // The shard of a student is a fixed function of the id (recorded so a change is noticed).
        let s: Shard = "1/1".parse().unwrap();
        assert!(s.holds("anyone"));
    }
}
