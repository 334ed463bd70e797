//! Corrupted variants of the real fixtures must give `Ok` or `Err`, never a panic (a panic fails
//! the test), and never hang. Mutations are deterministic (fixed-seed xorshift).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use gradekit::checkpoint::pickle::{unpickle, PickleLimits};
use gradekit::checkpoint::pth::{load, LoadOptions};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pth").join(name)
}

/// `PTH_FUZZ_SCALE=50 cargo test --release --test corrupt_inputs` for a longer run.
fn scale() -> usize {
    std::env::var("PTH_FUZZ_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One random edit: overwrite a byte, truncate, insert a byte, or delete a byte.
fn mutate(rng: &mut Rng, src: &[u8]) -> Vec<u8> {
    let mut v = src.to_vec();
    if v.is_empty() {
        v.push(rng.next() as u8);
        return v;
    }
    for _ in 0..1 + rng.below(3) {
        let i = rng.below(v.len());
        match rng.below(4) {
            0 => v[i] = rng.next() as u8,
            1 => v.truncate(i),
            2 => v.insert(i, rng.next() as u8),
            _ => {
                if !v.is_empty() {
                    v.remove(i);
                }
            }
        }
        if v.is_empty() {
            break;
        }
    }
    v
}

fn zip_records(name: &str) -> Vec<(String, Vec<u8>)> {
    let mut za = zip::ZipArchive::new(std::fs::File::open(fixture(name)).unwrap()).unwrap();
    (0..za.len())
        .map(|i| {
            let mut f = za.by_index(i).unwrap();
            let mut b = Vec::new();
            f.read_to_end(&mut b).unwrap();
            (f.name().unwrap().into_owned(), b)
        })
        .collect()
}

fn write_zip(path: &Path, records: &[(String, Vec<u8>)]) {
    let mut w = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (n, b) in records {
        w.start_file(n.as_str(), opts).unwrap();
        w.write_all(b).unwrap();
    }
    w.finish().unwrap();
}

/// A directory per test: tests run in parallel and each removes its own at the end.
fn scratch_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("pth-corrupt-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn mutated_pickles_never_panic() {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let (mut ok, mut err) = (0, 0);
    for name in ["tiny_views.pth", "dataparallel_checkpoint.pth", "tiny_bn_proto4.pth"] {
        let pkl = zip_records(name).into_iter().find(|(n, _)| n.ends_with("data.pkl")).unwrap().1;
        assert!(unpickle(&pkl, &PickleLimits::default()).is_ok(), "{name}: unmodified pickle must parse");
        for _ in 0..2000 * scale() {
            match unpickle(&mutate(&mut rng, &pkl), &PickleLimits::default()) {
                Ok(_) => ok += 1,
                Err(_) => err += 1,
            }
        }
    }
    // Both outcomes occur: the mutations reach the interpreter and are not all trivially rejected.
    assert!(ok > 0 && err > 1000 * scale(), "ok {ok}, err {err}");
}

#[test]
fn mutated_zip_checkpoints_never_panic() {
    let dir = scratch_dir("zip");
    let records = zip_records("tiny_views.pth");
    let mut rng = Rng(12345);
    let (mut ok, mut err) = (0, 0);
    for i in 0..500 * scale() {
        let mut r = records.clone();
        // Mutate data.pkl most of the time, else one storage record (changes its length).
        let target = if i % 4 == 0 { rng.below(r.len()) } else { r.iter().position(|(n, _)| n.ends_with("data.pkl")).unwrap() };
        r[target].1 = mutate(&mut rng, &r[target].1);
        let p = dir.join("m.pth");
        write_zip(&p, &r);
        match load(&p, &LoadOptions::default()) {
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    assert!(ok > 0 && err > 100 * scale(), "ok {ok}, err {err}");
}

#[test]
fn truncated_and_mutated_legacy_files_never_panic() {
    let dir = scratch_dir("legacy");
    let whole = std::fs::read(fixture("tiny_views_legacy.pth")).unwrap();
    let p = dir.join("l.pth");
    // Every truncation point: the legacy format has no checksum, so each cut reaches the parser.
    for cut in 0..whole.len() {
        std::fs::write(&p, &whole[..cut]).unwrap();
        assert!(load(&p, &LoadOptions::default()).is_err(), "a legacy file cut at {cut} bytes must fail");
    }
    let mut rng = Rng(777);
    let (mut ok, mut err) = (0, 0);
    for _ in 0..800 * scale() {
        std::fs::write(&p, mutate(&mut rng, &whole)).unwrap();
        match load(&p, &LoadOptions::default()) {
            Ok(_) => ok += 1,
            Err(_) => err += 1,
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    assert!(ok > 0 && err > 100 * scale(), "ok {ok}, err {err}");
}
