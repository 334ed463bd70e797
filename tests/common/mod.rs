//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(rel: &str) -> PathBuf {
    root().join("fixtures").join(rel)
}

/// The `grade` binary, run from `dir`.
pub fn grade(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("grade").unwrap();
    c.current_dir(dir);
    c
}

/// The ONNX Runtime library the install script puts in .mldeps; tests that compare backends need it.
pub fn ort_library() -> PathBuf {
    gradekit::runtime::ort_backend::find_library()
        .expect("ONNX Runtime library not found: run `bash scripts/setup.sh` first (the README's test command does)")
}

/// The reference Python (onnx, numpy, scipy) installed by scripts/install-python-tools.sh.
pub fn python() -> PathBuf {
    let p = root().join(".mldeps/py/bin/python");
    assert!(p.is_file(), "{} missing: run `bash scripts/setup.sh` first (the README's test command does)", p.display());
    p
}

/// Copies a fixture digit folder so a test can damage it.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

pub fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}
