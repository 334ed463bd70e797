//! Replays the fuzzers' findings and corpus through the same checks the fuzz targets run
//! (fuzz/src/checks.rs): every input must give a clean `Result` (an error naming the file, or an `Ok`
//! that keeps its promises) and never a panic.
//!
//! - `fuzz/regressions/<target>/*`: every input that once crashed, hung or blew memory (all replayed).
//! - `fuzz/corpus/<target>/*`: the minimised corpus; an evenly spaced sample of at most
//!   `FUZZ_CORPUS_SAMPLE` files (default 100) per target, all of them with `FUZZ_CORPUS_SAMPLE=all`.
//!
//! See SECURITY.md for the figures and fuzz/README.md for running the fuzzers.

#[path = "../fuzz/src/checks.rs"]
mod checks;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use checks::Outcome;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    let mut v: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    v.sort();
    v
}

fn sample(mut v: Vec<PathBuf>) -> Vec<PathBuf> {
    let max = match std::env::var("FUZZ_CORPUS_SAMPLE").as_deref() {
        Ok("all") => usize::MAX,
        Ok(n) => n.parse().expect("FUZZ_CORPUS_SAMPLE: a number or `all`"),
        Err(_) => 100,
    };
    if v.len() > max {
        let step = v.len() as f64 / max as f64;
        v = (0..max).map(|i| v[(i as f64 * step) as usize].clone()).collect();
    }
    v
}

/// Runs every regression input and a corpus sample of `target` through `check`; returns
/// (regressions, corpus files) run.
fn replay(target: &str, check: fn(&[u8]) -> Outcome) -> (usize, usize) {
    checks::install_panic_hook();
    let regressions = files(&fuzz_dir().join("regressions").join(target));
    let corpus = sample(files(&fuzz_dir().join("corpus").join(target)));
    assert!(!corpus.is_empty(), "no corpus for {target} in fuzz/corpus/{target}");
    let mut accepted = 0;
    for p in regressions.iter().chain(corpus.iter()) {
        let bytes = std::fs::read(p).unwrap();
        let started = Instant::now();
        // A panic here fails the test; the message names the input through this context line.
        eprintln!("{target}: {}", p.strip_prefix(fuzz_dir()).unwrap().display());
        if check(&bytes) == Outcome::Accepted {
            accepted += 1;
        }
        let took = started.elapsed();
        assert!(took < Duration::from_secs(60), "{target}: {} took {took:?}", p.display());
    }
    eprintln!("{target}: {} regression inputs, {} corpus inputs, {accepted} accepted", regressions.len(), corpus.len());
    (regressions.len(), corpus.len())
}

#[test]
fn model_contract_inputs_never_panic() {
    replay("model_contract", checks::check_model);
}

#[test]
fn label_csv_inputs_never_panic() {
    replay("label_csv", checks::check_label_csv);
}

#[test]
fn image_decode_inputs_never_panic() {
    replay("image_decode", checks::check_image);
}

/// Found while writing the label_csv target (too slow for the fuzzer's small inputs to reach): line
/// numbers were counted from the start of the file for every record, so parsing was quadratic; a
/// 700 KB file with 50,000 rows took over 9 minutes in the fuzz build, and a 64 MB prediction CSV (the
/// size limit) would hang the grader. Now linear: 200,000 rows must parse in seconds even unoptimised.
#[test]
fn label_csv_parsing_is_linear_in_rows() {
    let rows = 200_000;
    let mut text = String::from("image_name,label\r\n");
    for i in 0..rows {
        text.push_str(&format!("{i:07}.png,{}\r\n", i % 10));
    }
    let started = Instant::now();
    let parsed = gradekit::data::labels::parse_label_csv(text.as_bytes(), 10).unwrap();
    let took = started.elapsed();
    assert_eq!(parsed.len(), rows);
    assert_eq!(parsed.last().unwrap().line, rows as u64 + 1);
    assert!(took < Duration::from_secs(30), "{rows} rows took {took:?}");
}

/// Inputs on which tract panicked inside `TractEngine::open` (contained by its catch_unwind, but the
/// grader printed "panicked at tract-onnx/..."): `ModelFile` now refuses them first, with a message.
#[test]
fn models_that_made_tract_panic_are_refused_by_model_file() {
    let dir = fuzz_dir().join("regressions/model_contract");
    for (file, want) in [
        ("tract-panic-graph-output-not-produced.onnx", "graph output 'nowhere' is not produced"),
        ("tract-panic-raw-data-string-tensor.onnx", "stores raw bytes for element type string"),
        ("tract-panic-zero-sized-tensor-huge-dims.onnx", "even without its zero dimensions"),
    ] {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let err = gradekit::onnx::ModelFile::from_bytes(Path::new(file), bytes, &Default::default()).err().unwrap();
        let msg = format!("{err:#}");
        assert!(msg.contains(want) && msg.contains(file), "{file}: {msg}");
    }
}

/// The label CSV findings: a quoted name with a comma was accepted but could not be written back
/// (pred.csv rows are `name,label`, unquoted); such names are now refused with the line number.
#[test]
fn label_csv_refuses_names_that_cannot_be_written_back() {
    let bytes = std::fs::read(fuzz_dir().join("regressions/label_csv/comma-in-quoted-name-breaks-pred-csv.csv")).unwrap();
    let msg = format!("{:#}", gradekit::data::labels::parse_label_csv(&bytes, 10).unwrap_err());
    assert!(msg.contains("line 2") && msg.contains("comma or a quote"), "{msg}");
    let msg = format!("{:#}", gradekit::data::labels::parse_label_csv(b"image_name,label\n\"\"\"a.png\",1\n", 10).unwrap_err());
    assert!(msg.contains("comma or a quote"), "{msg}");
}

/// Issue 25, classes 1 to 3 as regression inputs of the `model_contract` target: parts of a file the
/// walker used to skip, sizes that fold at load, and numbers that sized buffers unchecked.
#[test]
fn issue25_models_are_refused_before_any_runtime_sees_them() {
    use gradekit::onnx::{Contract, ModelFile, ModelKind};
    let dir = fuzz_dir().join("regressions/model_contract");
    for (file, want) in [
        ("issue25-function-external-data.onnx", "external file"),
        ("issue25-sparse-constant-1.5GiB.onnx", "sparse tensor"),
        ("issue25-constant-folds-to-2GiB.onnx", "from constants alone"),
    ] {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let err = ModelFile::from_bytes(Path::new(file), bytes, &Default::default()).err().unwrap();
        let msg = format!("{err:#}");
        assert!(msg.contains(want) && msg.contains(file), "{file}: {msg}");
    }
    let file = "issue25-fixed-batch-and-metadata-out-of-bounds.onnx";
    let m = ModelFile::from_bytes(Path::new(file), std::fs::read(dir.join(file)).unwrap(), &Default::default()).unwrap();
    let c = Contract::resolve(&m, ModelKind::Classifier, &Default::default());
    let msg = format!("{:#}", c.ensure_ok(&m).unwrap_err());
    assert!(msg.contains(file) && msg.contains("26000000") && msg.contains("limit of 1024"), "{msg}");
    assert!(msg.contains("timesteps") && msg.contains("1..=100000") && msg.contains("latent_dim"), "{msg}");
    assert_eq!(c.fixed_batch, None);
    assert!(c.meta_i64("timesteps").is_err() && c.meta_i64("latent_dim").is_err());
}

#[path = "../fuzz/src/mutate.rs"]
mod mutate;

/// The `model_contract` target's structure-aware mutator (issue 25): every corpus model (a sample),
/// changed in the ways that used to slip through, goes through the same checks as the fuzzer's
/// inputs. The mutations must reach the new refusals, not only decode errors.
#[test]
fn structure_aware_mutations_never_panic_and_reach_the_new_checks() {
    checks::install_panic_hook();
    let corpus = sample(files(&fuzz_dir().join("corpus/model_contract")));
    let mut seeds = files(&fuzz_dir().join("regressions/model_contract"));
    seeds.extend(corpus.into_iter().take(30));
    let (mut mutated, mut rejected) = (0, 0);
    for p in &seeds {
        let bytes = std::fs::read(p).unwrap();
        for seed in 0..20u32 {
            let Some(m) = mutate::mutate_model(&bytes, seed) else { continue };
            mutated += 1;
            if checks::check_model(&m) == Outcome::Rejected {
                rejected += 1;
            }
        }
    }
    eprintln!("{mutated} structural mutations, {rejected} rejected");
    assert!(mutated >= 100, "only {mutated} inputs decoded as models");
    assert!(rejected * 2 >= mutated, "{rejected} of {mutated} mutations rejected: the mutator does not reach the checks");
}
