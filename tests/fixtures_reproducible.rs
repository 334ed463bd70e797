//! The committed fixtures are exactly what `grade make-fixtures` writes.

mod common;

use std::path::Path;

fn files(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = walk(root).into_iter().map(|p| p.strip_prefix(root).unwrap().display().to_string()).collect();
    v.sort();
    v
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap().path();
        if e.is_dir() {
            out.extend(walk(&e));
        } else {
            out.push(e);
        }
    }
    out
}

#[test]
fn fixtures_regenerate_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    gradekit::fixtures::make_all(tmp.path()).unwrap();
    let made = files(tmp.path());
    assert!(made.len() > 400, "only {} files made", made.len());
    for rel in &made {
        let committed = common::fixture(rel);
        assert!(committed.is_file(), "fixtures/{rel} is not committed: run `cargo run -- make-fixtures`");
        assert!(
            std::fs::read(&committed).unwrap() == std::fs::read(tmp.path().join(rel)).unwrap(),
            "fixtures/{rel} differs from what make-fixtures writes"
        );
    }
}
