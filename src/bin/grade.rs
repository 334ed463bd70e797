//! `grade`: the grading command line. Exit codes: 0 passed, 1 graded but failed (below the simple
//! baseline or over budget), 2 error (bad input, bad model, bad usage).

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use gradekit::cli::{run_options, Cli, Command};
use gradekit::tasks::{self, RunOptions};

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Dann { args, runtime, output } => Ok(tasks::dann::run(&args, &run_options(Some(&runtime), &output)?)?.exit_code()),
        Command::Ddpm { args, runtime, output } => Ok(tasks::ddpm::run(&args, &run_options(Some(&runtime), &output)?)?.exit_code()),
        Command::Gan { args, runtime, output } => Ok(tasks::gan::run(&args, &run_options(Some(&runtime), &output)?)?.exit_code()),
        Command::Fid { a, b, inception, json, runtime } => tasks::folders::fid(&a, &b, &inception, json.as_deref(), &runtime.options()),
        Command::FidStats { dir, output, inception, runtime } => tasks::folders::fid_stats(&dir, &output, &inception, &runtime.options()),
        Command::Faces { dir, detector, json } => tasks::folders::faces(&dir, detector, json.as_deref()),
        Command::Digits { dir, classifier, resize, runtime, output } => {
            let opts = run_options(Some(&runtime), &output)?;
            let bundled = classifier.is_none();
            let classifier = match classifier {
                Some(c) => c,
                None => tasks::digits::default_judge()?,
            };
            Ok(tasks::digits::run(&dir, &classifier, bundled, resize, &opts)?.exit_code())
        }
        Command::Csv { args, output } => Ok(tasks::csv_grade::run(&args, &run_options(None, &output)?)?.exit_code()),
        Command::Check { model, kind, runtime, json, timeout } => {
            let meta = tasks::parse_meta(&runtime.meta)?;
            let report = tasks::check::run_bounded(&model, kind, &meta, &runtime.options(), timeout)?;
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
        Command::Batch(args) => {
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
            let opts =
                RunOptions { runtime: runtime.options(), meta: tasks::parse_meta(&runtime.meta)?, quiet: true, ..Default::default() };
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
            print!("{}", gradekit::graders::listing()?);
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
