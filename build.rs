//! The runtime crates' versions, read from Cargo.lock at build time, for the reports' `versions` (they
//! were once written by hand and went stale). Then, only for the trainer (cargo feature `train`): give the `train` binary an rpath to the libtorch that
//! scripts/install-libtorch.sh found, so it runs without LD_LIBRARY_PATH, and on the CUDA route keep
//! libtorch_cuda linked (the linker's --as-needed would drop it: no symbol of it is referenced directly,
//! and then tch sees no GPU).

use std::path::PathBuf;

/// The locked version of package `name`, from Cargo.lock's `name = ".."` / `version = ".."` pairs.
fn locked_version(lock: &str, name: &str) -> Option<String> {
    let mut lines = lock.lines();
    while let Some(l) = lines.next() {
        if l.trim() == format!("name = \"{name}\"") {
            let v = lines.next()?.trim().strip_prefix("version = \"")?.strip_suffix('"')?;
            return Some(v.to_string());
        }
    }
    None
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=Cargo.lock");
    // Without a lock file (a build from a published package) the versions say so.
    let lock = std::fs::read_to_string("Cargo.lock").unwrap_or_default();
    for (name, var) in [("tract-onnx", "GRADEKIT_TRACT_VERSION"), ("ort", "GRADEKIT_ORT_VERSION")] {
        println!("cargo:rustc-env={var}={}", locked_version(&lock, name).unwrap_or_else(|| "unknown".into()));
    }
    if std::env::var_os("CARGO_FEATURE_TRAIN").is_none() {
        return;
    }
    let libtorch = std::env::var_os("LIBTORCH").map(PathBuf::from).unwrap_or_else(|| ".mldeps/libtorch".into());
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed={}", libtorch.join("route").display());
    let root = std::fs::read_to_string(libtorch.join("root")).ok();
    let route = std::fs::read_to_string(libtorch.join("route")).unwrap_or_default();
    let lib_dir = root.map(|r| r.trim().to_string()).unwrap_or_else(|| libtorch.join("lib").display().to_string());
    if !PathBuf::from(&lib_dir).exists() {
        println!(
            "cargo:warning=no libtorch at {lib_dir}: run `bash scripts/install-libtorch.sh` (cpu) or `... cuda` before building with --features train"
        );
    }
    println!("cargo:rustc-link-arg-bin=train=-Wl,-rpath,{lib_dir}");
    if route.trim() == "cuda" {
        println!("cargo:rustc-link-arg-bin=train=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
