//! `grade merge`: combines the class reports of shard runs (`grade batch --shard I/N`, spread over a
//! CI matrix or a Slurm array) into one report and scoreboard, equal to an unsharded run's.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use super::{ClassReport, Shard};
use crate::report::OutputDir;

/// A batch folder or its class.json.
fn class_file(p: &Path) -> PathBuf {
    if p.is_dir() {
        p.join("class.json")
    } else {
        p.to_path_buf()
    }
}

pub struct MergeOutcome {
    pub report: ClassReport,
    /// Shards of 1..N that none of the inputs covered.
    pub missing_shards: Vec<usize>,
}

pub fn merge(inputs: &[PathBuf], out: &Path, force: bool) -> Result<MergeOutcome> {
    ensure!(!inputs.is_empty(), "grade merge needs at least one batch folder or class.json");
    let mut reports = vec![];
    for p in inputs {
        let f = class_file(p);
        let bytes = crate::safe_fs::read_regular(&f, 1 << 30, "class report")
            .with_context(|| format!("cannot read {} (give the --out folders of `grade batch` runs)", f.display()))?;
        let r: ClassReport = serde_json::from_slice(&bytes).with_context(|| format!("{} is not a gradekit class report", f.display()))?;
        reports.push((f.parent().map(Path::to_path_buf).unwrap_or_default(), r));
    }
    let graders = reports[0].1.graders.clone();
    let mut shards: Vec<Shard> = vec![];
    for (dir, r) in &reports {
        if r.graders != graders {
            bail!(
                "{} graded {:?} but {} graded {:?}: shards of one class must run the same graders (pass --graders)",
                dir.display(),
                r.graders,
                reports[0].0.display(),
                graders
            );
        }
        for s in &r.shards {
            if shards.iter().any(|x| x.index == s.index) {
                bail!("shard {}/{} appears twice (again in {})", s.index, s.count, dir.display());
            }
            shards.push(*s);
        }
    }
    let counts: Vec<usize> = shards.iter().map(|s| s.count).collect();
    if counts.iter().any(|&c| c != counts[0]) {
        bail!("the inputs are shards of different splits ({counts:?} shards): merge shards of one --shard I/N run");
    }
    if !shards.is_empty() && shards.len() != reports.iter().map(|(_, r)| r.shards.len()).sum::<usize>() {
        bail!("mixing sharded and unsharded reports");
    }
    let missing_shards = match counts.first() {
        Some(&n) => (1..=n).filter(|i| !shards.iter().any(|s| s.index == *i)).collect(),
        None => vec![],
    };
    let dest = OutputDir::create(out, force)?;
    let mut students = vec![];
    for (dir, r) in reports {
        for s in r.students {
            if students.iter().any(|x: &super::StudentResult| x.id == s.id) {
                bail!("student {} appears in more than one input (again in {})", s.id, dir.display());
            }
            // Bring the pictures and the copy-detection fingerprints along so the merged folder stands
            // alone (pairs between shards are found from the fingerprints when it is written).
            for g in &s.graders {
                let fp = super::similarity::fingerprint_rel(&s.id, g.grader.name());
                for rel in g.grid.iter().chain(std::iter::once(&fp)) {
                    if let Ok(bytes) = std::fs::read(dir.join(rel)) {
                        dest.write(rel, &bytes)?;
                    }
                }
            }
            students.push(s);
        }
    }
    students.sort_by(|a, b| a.id.cmp(&b.id));
    shards.sort_by_key(|s| s.index);
    let mut report = ClassReport { tool: "gradekit".into(), tool_version: env!("CARGO_PKG_VERSION").into(), graders, shards, students };
    super::write_class(&dest, &mut report)?;
    Ok(MergeOutcome { report, missing_shards })
}
