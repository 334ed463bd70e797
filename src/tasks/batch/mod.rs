//! `grade batch`: every applicable grader for every student of a class, each run isolated in a
//! child process with time and memory limits; resumable, shardable (`--shard I/N`, merged with
//! `grade merge`), ending in a scoreboard (CSV + static HTML). Layout: docs/batch.md.

pub mod child;
mod grading;
pub mod layout;
pub mod merge;
mod results;
pub mod scoreboard;
pub mod similarity;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::graders::Grader;
use crate::report::{write_atomic, OutputDir};
use grading::grade_student;
use layout::Student;
pub use results::*;

/// `grade batch`'s flags.
#[derive(clap::Args, Debug, Clone)]
pub struct BatchArgs {
    /// The class folder: one sub-folder per student (gan.onnx, ddpm.onnx, dann-usps.onnx|csv, dann-svhn.onnx|csv).
    pub submissions: PathBuf,
    /// The batch folder (reused to resume: finished students are skipped).
    #[arg(long)]
    pub out: PathBuf,
    /// Re-grade students that finished in an earlier run (and reuse a non-batch --out folder).
    #[arg(long)]
    pub force: bool,
    /// Grade only shard I of N (1-based; stable by student id), e.g. for a CI matrix or a Slurm array; combine with `grade merge`.
    #[arg(long)]
    pub shard: Option<crate::tasks::batch::Shard>,
    /// Graders to run, comma-separated (default: every grader some student handed in a file for).
    #[arg(long, value_delimiter = ',')]
    pub graders: Vec<String>,
    /// The homework data root (hw2_data layout: digits/usps, digits/svhn, face/val).
    #[arg(long, default_value = "data/hw2_data")]
    pub data: PathBuf,
    /// Extra argument for one grader's runs, GRADER=ARG (GRADER `all`: every model grader), e.g. ddpm=--steps=20; repeatable.
    #[arg(long = "grader-arg", value_name = "GRADER=ARG")]
    pub grader_args: Vec<String>,
    /// Memory limit of each student's grading process.
    #[arg(long, default_value = "8G", value_parser = crate::memory::parse_size)]
    pub student_memory: u64,
    /// Time allowed past a grader's budget (start-up, scoring) before its process is killed.
    #[arg(long, default_value = "300s", value_parser = crate::budget::parse_budget)]
    pub grace: std::time::Duration,
    /// Wall-clock limit of each grading run (default: the grader's budget plus --grace).
    #[arg(long, value_parser = crate::budget::parse_budget)]
    pub timeout: Option<std::time::Duration>,
    /// Students graded at once (each grading process uses all cores by default).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// The FID Inception model (default as for `grade gan`).
    #[arg(long)]
    pub inception: Option<PathBuf>,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
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
    let graders: Vec<Grader> = if args.graders.is_empty() {
        // From the whole class, not the shard, so every shard grades (and reports) the same set.
        layout::GRADERS.iter().map(|g| g.grader).filter(|g| all.iter().any(|s| s.submissions.iter().any(|(sg, _)| sg == g))).collect()
    } else {
        let mut v = vec![];
        for g in &args.graders {
            match Grader::from_name(g) {
                Some(id) => v.push(id),
                None => bail!("--graders {g}: unknown; known: {}", Grader::known()),
            }
        }
        v
    };
    if graders.is_empty() {
        bail!("no student in {} handed in a file any grader reads (docs/batch.md lists them)", args.submissions.display());
    }
    let extra = parse_grader_args(&args.grader_args, &graders)?;
    let students: Vec<Student> = all.into_iter().filter(|s| args.shard.is_none_or(|sh| sh.holds(&s.id))).collect();
    let out = open_out(&args.out, args.force)?;
    out.subdir("students")?;

    let any_gan = graders.contains(&Grader::Gan) && students.iter().any(|s| s.submissions.iter().any(|(g, _)| *g == Grader::Gan));
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
fn parse_grader_args(pairs: &[String], graders: &[Grader]) -> Result<Vec<(String, String)>> {
    let mut v = vec![];
    for p in pairs {
        let Some((g, a)) = p.split_once('=') else {
            bail!("--grader-arg {p:?}: expected GRADER=ARG, e.g. ddpm=--steps=10 or all=--backend=tract")
        };
        if g != "all" && Grader::from_name(g).is_none() {
            bail!("--grader-arg {p:?}: no grader named {g}");
        }
        if g != "all" && !graders.iter().any(|k| k.name() == g) {
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
