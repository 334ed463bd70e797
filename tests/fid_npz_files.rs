//! .npz stats files: numpy-written fixtures (scripts/reference/fid/gen_npz_fixtures.py), round trips, atomicity.
#[path = "fid_support/mod.rs"]
mod common;

use std::path::Path;

use common::data_path;
use gradekit::metrics::fid::Stats;
use gradekit::metrics::npz::{read_stats_npz, write_stats_npz};

/// The fixture values: mu[i] = i / 3 - 1, sigma[i][j] = 1 / (1 + i + j).
fn expected(d: usize) -> Stats {
    let mu = (0..d).map(|i| i as f64 / 3.0 - 1.0).collect();
    let sigma = (0..d * d).map(|k| 1.0 / (1.0 + (k / d) as f64 + (k % d) as f64)).collect();
    Stats { mu, sigma, dim: d, n: 0 }
}

fn fixture(name: &str) -> std::path::PathBuf {
    data_path("npz").join(name)
}

fn read_err(name: &str) -> String {
    format!("{:#}", read_stats_npz(&fixture(name)).unwrap_err())
}

#[test]
fn reads_numpy_written_float64_files_exactly() {
    // savez_compressed is what pytorch-fid --save-stats writes; savez stores without compression.
    for name in ["savez_compressed.npz", "savez.npz", "big_endian.npz"] {
        assert_eq!(read_stats_npz(&fixture(name)).unwrap(), expected(5), "{name}");
    }
}

#[test]
fn reads_float32_files_as_their_f32_values() {
    let got = read_stats_npz(&fixture("float32.npz")).unwrap();
    let want = expected(5);
    let as_f32 = |v: &[f64]| v.iter().map(|&x| f64::from(x as f32)).collect::<Vec<_>>();
    assert_eq!(got.mu, as_f32(&want.mu));
    assert_eq!(got.sigma, as_f32(&want.sigma));
    assert_ne!(got.sigma, want.sigma, "1/3 is not an f32, so the values must differ from f64");
}

#[test]
fn rejects_unsupported_files_with_clear_errors() {
    let e = read_err("fortran.npz");
    assert!(e.contains("Fortran order"), "{e}");
    let e = read_err("int64.npz");
    assert!(e.contains("unsupported dtype '<i8'") && e.contains(": mu"), "{e}");
    let e = read_err("shape_mismatch.npz");
    assert!(e.contains("sigma has shape [4, 4] but mu has 5 values"), "{e}");
    let e = read_err("missing_sigma.npz");
    assert!(e.contains("no 'sigma' array"), "{e}");
    let e = read_err("nan.npz");
    assert!(e.contains("mu[2] is NaN"), "{e}");
    let e = read_err("not_a_zip.npz");
    assert!(e.contains("not an .npz"), "{e}");
    let e = format!("{:#}", read_stats_npz(Path::new("/nonexistent/stats.npz")).unwrap_err());
    assert!(e.contains("opening /nonexistent/stats.npz"), "{e}");
}

#[test]
fn round_trip_is_exact_and_replaces_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stats.npz");
    let mut stats = expected(7);
    stats.mu[3] = -0.0;
    stats.sigma[10] = f64::MIN_POSITIVE;
    write_stats_npz(&path, &stats).unwrap();
    let back = read_stats_npz(&path).unwrap();
    assert_eq!(back, Stats { n: 0, ..stats.clone() });
    assert!(back.mu[3].is_sign_negative());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Same mode as any newly created file (0o666 less the umask), not tempfile's 0o600.
        let plain = dir.path().join("plain");
        std::fs::File::create(&plain).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), mode(&plain));
        std::fs::remove_file(&plain).unwrap();
    }

    // Overwriting replaces the file and leaves no temporary files behind.
    let other = expected(3);
    write_stats_npz(&path, &other).unwrap();
    assert_eq!(read_stats_npz(&path).unwrap(), other);
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("stats.npz")]);

    // Invalid stats are refused before anything is written; the old file stays intact.
    let bad = Stats { mu: vec![0.0; 2], sigma: vec![0.0; 3], dim: 2, n: 0 };
    assert!(write_stats_npz(&path, &bad).is_err());
    assert_eq!(read_stats_npz(&path).unwrap(), other);
    assert!(write_stats_npz(&dir.path().join("missing/x.npz"), &other).is_err());
}

#[test]
fn written_members_are_deflated_npy_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.npz");
    write_stats_npz(&path, &expected(4)).unwrap();
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&path).unwrap()).unwrap();
    let names: Vec<_> = zip.file_names().map(|n| n.unwrap().into_owned()).collect();
    assert_eq!(names, ["mu.npy", "sigma.npy"]);
    let mut entry = zip.by_name("sigma.npy").unwrap();
    assert_eq!(entry.compression(), zip::CompressionMethod::Deflated);
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
    let header = std::str::from_utf8(&bytes[10..128]).unwrap();
    assert!(header.starts_with("{'descr': '<f8', 'fortran_order': False, 'shape': (4, 4), }"), "{header}");
    assert_eq!(bytes.len(), 128 + 16 * 8);
}

/// numpy loads what Rust writes (numpy from scripts/setup.sh's .mldeps/py).
#[test]
fn numpy_loads_rust_written_file() {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".mldeps/py/bin/python");
    assert!(python.is_file(), "{} missing: run `bash scripts/setup.sh` first", python.display());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rust.npz");
    write_stats_npz(&path, &expected(6)).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/reference/fid/check_rust_npz.py");
    let out = std::process::Command::new(python).arg(script).arg(&path).arg("6").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("ok:"), "{stdout}");
}
