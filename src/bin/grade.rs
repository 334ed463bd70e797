//! `grade`: the grading command line. Exit codes: 0 passed, 1 graded but failed (below the simple
//! baseline or over budget), 2 error (bad input, bad model, bad usage).

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use gradekit::cli::{Cli, Command, OutputArgs, RuntimeArgs};
use gradekit::report::ExtraReports;
use gradekit::runtime::RuntimeOptions;
use gradekit::spec::GraderSpec;
use gradekit::tasks::{self, RunOptions};

fn run_options(rt: Option<&RuntimeArgs>, out: &OutputArgs) -> Result<RunOptions> {
    Ok(RunOptions {
        runtime: rt
            .map(|r| RuntimeOptions { backend: r.backend, device: r.device, threads: r.threads, ort_opt: r.ort_opt })
            .unwrap_or_default(),
        batch: rt.and_then(|r| r.batch).unwrap_or(0),
        out: out.out.clone(),
        force: out.force,
        extra: ExtraReports { json: out.json.clone(), junit: out.junit.clone(), markdown: out.markdown.clone() },
        meta: tasks::parse_meta(rt.map(|r| r.meta.as_slice()).unwrap_or(&[]))?,
        budget: out.budget,
        quiet: out.quiet,
    })
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Dann { pair, model, data, split, resize, runtime, output } => {
            let opts = run_options(Some(&runtime), &output)?;
            let args = tasks::dann::DannArgs { pair, model, data, split, resize, spec: output.spec.clone() };
            Ok(tasks::dann::run(&args, &opts)?.exit_code())
        }
        Command::Ddpm {
            model,
            classifier,
            sampler,
            steps,
            guidance,
            eta,
            clip,
            no_clip,
            seed,
            keep_going,
            reference,
            train,
            runtime,
            output,
        } => {
            let opts = run_options(Some(&runtime), &output)?;
            let clip = if no_clip {
                Some(false)
            } else if clip {
                Some(true)
            } else {
                None
            };
            let args = tasks::ddpm::DdpmArgs {
                model,
                classifier,
                sampler,
                steps,
                guidance,
                eta,
                clip,
                seed,
                keep_going,
                spec: output.spec.clone(),
                reference,
                train,
            };
            Ok(tasks::ddpm::run(&args, &opts)?.exit_code())
        }
        Command::Gan { model, reference, inception, seed, train, detector, runtime, output } => {
            let opts = run_options(Some(&runtime), &output)?;
            let args = tasks::gan::GanArgs { model, reference, inception, seed, train, detector, spec: output.spec.clone() };
            Ok(tasks::gan::run(&args, &opts)?.exit_code())
        }
        Command::Fid { a, b, inception, json, runtime } => {
            let rt =
                RuntimeOptions { backend: runtime.backend, device: runtime.device, threads: runtime.threads, ort_opt: runtime.ort_opt };
            let v = tasks::gan::fid_folders(&a, &b, &inception, &rt, false)?;
            // Say what was compared, as every grader's summary does.
            println!("compared {} ({} images) with {} ({} images)", a.display(), v["n_a"], b.display(), v["n_b"]);
            println!("inception: {}, backend: {}", v["inception"].as_str().unwrap_or("?"), v["backend"].as_str().unwrap_or("?"));
            println!("FID: {}", v["fid"]);
            if !v["kid"].is_null() {
                println!("KID: {} (std {})", v["kid"], v["kid_std"]);
            }
            if let Some(p) = json {
                gradekit::report::write_atomic(&p, serde_json::to_string_pretty(&v)?.as_bytes())?;
            }
            Ok(0)
        }
        Command::FidStats { dir, output, inception, runtime } => {
            let rt =
                RuntimeOptions { backend: runtime.backend, device: runtime.device, threads: runtime.threads, ort_opt: runtime.ort_opt };
            let s = tasks::gan::fid_stats(&dir, &output, &inception, &rt, false)?;
            println!("wrote {} (statistics of {} images)", output.display(), s.n);
            Ok(0)
        }
        Command::Faces { dir, detector, json } => {
            let files = gradekit::data::images::list_images(&dir)?;
            if files.is_empty() {
                anyhow::bail!("{} holds no images", dir.display());
            }
            let mut det = gradekit::metrics::faces::make_detector(detector)?;
            let r = {
                let _faces = gradekit::memory::activity(format!("detecting faces in {}", dir.display()));
                gradekit::metrics::faces::face_accuracy(&files, det.as_mut(), true)
            };
            println!(
                "face accuracy {:.4}: {} of {} loaded images have exactly one face ({} none, {} several, {} unreadable) [{}]",
                r.accuracy,
                r.exactly_one,
                r.loaded,
                r.zero,
                r.multiple,
                r.unreadable.len(),
                r.detector
            );
            if let Some(p) = json {
                gradekit::report::write_atomic(&p, serde_json::to_string_pretty(&r)?.as_bytes())?;
            }
            Ok(0)
        }
        Command::Digits { dir, classifier, resize, runtime, output } => {
            let opts = run_options(Some(&runtime), &output)?;
            let bundled = classifier.is_none();
            let classifier = classifier.unwrap_or_else(|| tasks::rel_or_root(tasks::digits::DEFAULT_JUDGE));
            Ok(tasks::digits::run(&dir, &classifier, bundled, resize, &opts)?.exit_code())
        }
        Command::Csv { predictions, labels, grader, output } => {
            let opts = run_options(None, &output)?;
            let args = tasks::csv_grade::CsvArgs { predictions, labels, grader, spec: output.spec.clone() };
            Ok(tasks::csv_grade::run(&args, &opts)?.exit_code())
        }
        Command::Check { model, kind, runtime, json, timeout } => {
            let opts =
                RuntimeOptions { backend: runtime.backend, device: runtime.device, threads: runtime.threads, ort_opt: runtime.ort_opt };
            let meta = tasks::parse_meta(&runtime.meta)?;
            let report = tasks::check::run_bounded(&model, kind, &meta, &opts, timeout)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", gradekit::report::sanitize::text(&report.to_text()));
            }
            Ok(if report.ok { 0 } else { 2 })
        }
        Command::Convert { kind, pth, output, key, prefix, meta } => {
            let meta = tasks::parse_meta(&meta)?.into_iter().collect();
            let opts = tasks::convert::ConvertOptions { key: key.as_deref(), prefix: prefix.as_deref(), meta };
            let unused = tasks::convert::convert(kind, &pth, &output, &opts)?;
            println!("wrote {}", output.display());
            if !unused.is_empty() {
                println!(
                    "note: {} tensor(s) of the checkpoint are not part of the model: {}",
                    unused.len(),
                    gradekit::report::sanitize::line(&unused.join(", "))
                );
            }
            Ok(0)
        }
        Command::Batch {
            submissions,
            out,
            force,
            shard,
            graders,
            data,
            grader_args,
            student_memory,
            grace,
            timeout,
            jobs,
            inception,
            quiet,
        } => {
            let args = tasks::batch::BatchArgs {
                submissions,
                out,
                force,
                shard,
                graders,
                data,
                grader_args,
                student_memory,
                grace,
                timeout,
                jobs,
                inception,
                quiet,
            };
            let report = tasks::batch::run(&args)?;
            let (_, failed, errors) = report.counts();
            Ok(if failed + errors == 0 { 0 } else { 1 })
        }
        Command::Merge { inputs, out, force } => {
            let m = tasks::batch::merge::merge(&inputs, &out, force)?;
            let (p, f, e) = m.report.counts();
            println!(
                "merged {} reports: {} students ({p} passed, {f} failed, {e} with errors) into {}",
                inputs.len(),
                m.report.students.len(),
                out.display()
            );
            if !m.missing_shards.is_empty() {
                eprintln!(
                    "error: shards {:?} of {} are missing: the scoreboard covers only part of the class",
                    m.missing_shards, m.report.shards[0].count
                );
                return Ok(2);
            }
            Ok(if f + e == 0 { 0 } else { 1 })
        }
        Command::Fingerprint { model, kind, val, output, runtime } => {
            let opts = RunOptions {
                runtime: RuntimeOptions {
                    backend: runtime.backend,
                    device: runtime.device,
                    threads: runtime.threads,
                    ort_opt: runtime.ort_opt,
                },
                meta: tasks::parse_meta(&runtime.meta)?,
                quiet: true,
                ..Default::default()
            };
            let fp = tasks::batch::similarity::fingerprint(&model, kind, val.as_deref(), &opts)?;
            gradekit::report::write_atomic(&output, serde_json::to_string(&fp)?.as_bytes())?;
            Ok(0)
        }
        Command::Plant { what, input, base, rows, fraction, noise, opset, seed, output } => {
            let model = if what == "memoriser" {
                let files = gradekit::metrics::inception::fid_image_files(&input)?;
                let limits = gradekit::data::images::ImageLimits::default();
                let table: Vec<image::RgbImage> =
                    files.iter().take(rows).map(|p| gradekit::data::images::load_rgb(p, &limits)).collect::<Result<_>>()?;
                match base {
                    Some(b) => {
                        let proto = gradekit::onnx::ModelFile::open(&b, &gradekit::onnx::ModelLimits::default())?.proto;
                        gradekit::planted::partly_memorising_generator(&proto, &table, fraction.unwrap_or(0.1), seed)?
                    }
                    None => gradekit::planted::memorising_generator(&table, 100, seed)?,
                }
            } else {
                let proto = gradekit::onnx::ModelFile::open(&input, &gradekit::onnx::ModelLimits::default())?.proto;
                gradekit::planted::reexport(&proto, &gradekit::planted::Reexport { noise, opset, fold_constant: true, seed })?
            };
            gradekit::onnx::writer::save(&model, &output)?;
            Ok(0)
        }
        Command::Graders => {
            for name in GraderSpec::names() {
                let s = GraderSpec::builtin(name)?;
                let b: Vec<String> = s
                    .baselines
                    .iter()
                    .map(|b| match b.strong {
                        Some(st) => format!("{} simple {} strong {}", b.metric, b.simple, st),
                        None => format!("{} simple {}", b.metric, b.simple),
                    })
                    .collect();
                println!("{name:<18} budget {:>5.0}s  {}  ({})", s.budget.seconds, b.join("; "), s.title);
            }
            Ok(0)
        }
        Command::MakeFixtures { out } => {
            gradekit::fixtures::make_all(&out)?;
            println!("wrote fixtures under {}", out.display());
            Ok(0)
        }
    }
}

#[global_allocator]
static ALLOC: gradekit::memory::GuardedAlloc = gradekit::memory::GuardedAlloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    gradekit::run_status::init_from_env();
    gradekit::memory::start_watchdog(cli.memory_limit);
    match run(cli) {
        Ok(code) => {
            gradekit::run_status::record(gradekit::run_status::Outcome::Finished, code, None);
            ExitCode::from(code as u8)
        }
        Err(e) => {
            let msg = format!("{e:#}");
            // The message may quote a submission (port names, metadata): no control characters reach the terminal.
            eprintln!("error: {}", gradekit::report::sanitize::text(&msg));
            gradekit::run_status::record(gradekit::run_status::Outcome::Error, 2, Some(&msg));
            ExitCode::from(2)
        }
    }
}
