//! The properties the fuzz targets check, shared with `tests/fuzz_regressions.rs` (which includes this
//! file with `#[path]`), so a committed crash input is replayed through exactly the code that found it.
//!
//! Every check feeds hostile bytes to a public entry point and asserts: no panic (the fuzzer turns a
//! panic into a crash; the test harness into a failure), a clean `Result` (an error is a non-empty
//! message that names the file), and the invariants an `Ok` promises.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once, OnceLock};

use gradekit::data::images::{decode_rgb, fit_size, to_chw, ImageLimits};
use gradekit::data::labels::{check_image_name, parse_label_csv, write_label_csv};
use gradekit::onnx::{Contract, ModelFile, ModelKind, ModelLimits};
use gradekit::runtime::tract_backend::TractEngine;

/// The name hostile bytes go by in error messages.
pub const MODEL_PATH: &str = "fuzz-model.onnx";
pub const IMAGE_PATH: &str = "fuzz-image.png";

thread_local! {
    /// Set while tract runs inside `TractEngine::open`, which turns tract panics into errors.
    static IN_TRACT: Cell<bool> = const { Cell::new(false) };
    /// The input being checked, kept only when `GRADEKIT_FUZZ_CONTAINED_DIR` is set.
    static CURRENT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Where to save an input that made tract panic (contained, so libFuzzer does not save it):
/// `GRADEKIT_FUZZ_CONTAINED_DIR=fuzz/artifacts/contained cargo fuzz run model_contract`.
fn contained_dir() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| std::env::var_os("GRADEKIT_FUZZ_CONTAINED_DIR").map(PathBuf::from)).as_deref()
}

static HOOK: Once = Once::new();
static TRACT_PANICS: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Installs a panic hook that stays quiet for panics raised inside tract while `TractEngine::open`
/// runs (they are caught there and become errors; each new location is logged once), and defers to
/// the previous hook otherwise. Under libFuzzer the previous hook aborts, so any other panic is a crash.
pub fn install_panic_hook() {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if IN_TRACT.with(|f| f.get()) {
                let loc = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
                if TRACT_PANICS.lock().map(|mut s| s.insert(loc.clone())).unwrap_or(false) {
                    eprintln!("[caught tract panic, contained by TractEngine::open] {loc}: {}", payload(info.payload()));
                    if let Some(dir) = contained_dir() {
                        let name: String = loc.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' }).collect();
                        let _ = std::fs::create_dir_all(dir);
                        let _ = CURRENT.with(|c| std::fs::write(dir.join(format!("contained-{name}")), &*c.borrow()));
                    }
                }
                return;
            }
            previous(info)
        }));
    });
}

fn payload(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default()
}

fn assert_clean_error(e: &impl std::fmt::Display, name: &str, what: &str) {
    let msg = format!("{e:#}");
    assert!(!msg.trim().is_empty(), "{what}: empty error message");
    assert!(msg.contains(name), "{what}: the error does not name the file {name}: {msg}");
}

/// What happened to one input, for the regression test's summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Rejected,
    Accepted,
}

/// Target `model_contract`: read the model, check it against every kind, hand it to tract.
pub fn check_model(data: &[u8]) -> Outcome {
    let path = Path::new(MODEL_PATH);
    let file = match ModelFile::from_bytes(path, data.to_vec(), &ModelLimits::default()) {
        Ok(f) => f,
        Err(e) => {
            assert_clean_error(&e, MODEL_PATH, "ModelFile::from_bytes");
            return Outcome::Rejected;
        }
    };
    // What runtimes get is what was walked: re-encoded, it reads back to the same model.
    let again = ModelFile::from_bytes(path, file.runtime_bytes(), &ModelLimits::default())
        .expect("the re-encoded model of an accepted file must be accepted too");
    assert_eq!(again.ops, file.ops, "re-encoding changed the operators");
    let overrides = BTreeMap::new();
    for kind in [ModelKind::Classifier, ModelKind::Generator, ModelKind::Noise] {
        let c = Contract::resolve(&file, kind, &overrides);
        match c.ensure_ok(&file) {
            Ok(()) => {
                // A contract that passes names real ports.
                assert!(c.inputs.iter().all(|n| file.input(n).is_some()), "{kind:?}: resolved input missing");
                assert!(file.output(&c.output).is_some(), "{kind:?}: resolved output missing");
                // Numbers that size buffers are within their bounds.
                assert!(
                    c.fixed_batch.is_none_or(|b| b <= gradekit::onnx::contract::MAX_FIXED_BATCH),
                    "{kind:?}: fixed batch over the bound"
                );
                for (key, lo, hi) in gradekit::onnx::contract::INT_METADATA_BOUNDS {
                    if let Ok(v) = c.meta_i64(key) {
                        assert!((*lo..=*hi).contains(&v), "{kind:?}: {key} = {v} accepted outside its bound");
                    }
                }
            }
            Err(e) => assert_clean_error(&e, MODEL_PATH, "Contract::ensure_ok"),
        }
        // Metadata parsing helpers see the student's strings.
        for key in c.metadata.keys() {
            let _ = c.meta_f64(key);
            let _ = c.meta_i64(key);
            let _ = c.meta_f32_list(key, 3);
        }
        let _ = c.meta("no-such-key");
    }
    if contained_dir().is_some() {
        CURRENT.with(|c| *c.borrow_mut() = data.to_vec());
    }
    IN_TRACT.with(|f| f.set(true));
    let opened = panic::catch_unwind(AssertUnwindSafe(|| TractEngine::open(&file, Some(1)).map(|_| ())));
    IN_TRACT.with(|f| f.set(false));
    match opened {
        Ok(Ok(())) => Outcome::Accepted,
        Ok(Err(e)) => {
            assert_clean_error(&e, MODEL_PATH, "TractEngine::open");
            Outcome::Rejected
        }
        Err(p) => panic!("a panic escaped TractEngine::open: {}", payload(&*p)),
    }
}

/// Target `label_csv`: parse as a 10-class label file; an accepted file must hold what it promises
/// and read back identically after `write_label_csv`.
pub fn check_label_csv(data: &[u8]) -> Outcome {
    let rows = match parse_label_csv(data, 10) {
        Ok(rows) => rows,
        Err(e) => {
            assert!(!format!("{e:#}").trim().is_empty(), "parse_label_csv: empty error message");
            return Outcome::Rejected;
        }
    };
    let mut names = HashSet::new();
    let mut last_line = 0;
    for r in &rows {
        assert!(r.label < 10, "label {} accepted", r.label);
        assert!(check_image_name(&r.image).is_ok(), "name {:?} accepted", r.image);
        assert!(names.insert(r.image.clone()), "duplicate {:?} accepted", r.image);
        // Non-decreasing, not increasing: lines are counted by '\n' and a lone '\r' also ends a record.
        assert!(r.line >= last_line, "line numbers going back: {} after {last_line}", r.line);
        last_line = r.line;
    }
    let pairs: Vec<(String, u8)> = rows.iter().map(|r| (r.image.clone(), r.label)).collect();
    let back = parse_label_csv(&write_label_csv(&pairs), 10)
        .unwrap_or_else(|e| panic!("write_label_csv output does not read back: {e:#} (rows {pairs:?})"));
    let back: Vec<(String, u8)> = back.into_iter().map(|r| (r.image, r.label)).collect();
    assert_eq!(back, pairs, "write_label_csv output reads back differently");
    Outcome::Accepted
}

/// Target `image_decode`: decode under the default limits; an accepted image respects them and goes
/// through the grading pipeline (resize to 28x28, CHW floats).
pub fn check_image(data: &[u8]) -> Outcome {
    let limits = ImageLimits::default();
    let path = Path::new(IMAGE_PATH);
    let img = match decode_rgb(data, path, &limits) {
        Ok(img) => img,
        Err(e) => {
            assert_clean_error(&e, IMAGE_PATH, "decode_rgb");
            return Outcome::Rejected;
        }
    };
    let (w, h) = img.dimensions();
    assert!(w <= limits.max_width && h <= limits.max_height, "{w}x{h} accepted");
    assert_eq!(img.as_raw().len(), w as usize * h as usize * 3);
    match fit_size(img, 28, 28, true, path) {
        Ok(small) => {
            assert_eq!(small.dimensions(), (28, 28));
            let mut out = vec![0f32; 3 * 28 * 28];
            to_chw(&small, &[0.5; 3], &[0.5; 3], &mut out);
            assert!(out.iter().all(|v| v.is_finite()));
        }
        Err(e) => assert_clean_error(&e, IMAGE_PATH, "fit_size"),
    }
    Outcome::Accepted
}
