//! The graders and tools behind each `grade` subcommand, one module each.

pub mod batch;
pub mod check;
pub mod classify;
pub mod convert;
pub mod csv_grade;
pub mod dann;
pub mod ddpm;
pub mod ddpm_quality;
pub mod digits;
pub mod folders;
pub mod gan;
pub mod integrity;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::report::ExtraReports;
use crate::runtime::RuntimeOptions;

/// Options every grading run shares.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub runtime: RuntimeOptions,
    pub batch: usize,
    /// Output folder; `None`: `out/<grader>-<time>`.
    pub out: Option<PathBuf>,
    pub force: bool,
    pub extra: ExtraReports,
    /// Metadata supplied on the command line (`--meta key=value`), overriding the model's.
    pub meta: BTreeMap<String, String>,
    /// Overrides the grader's time budget.
    pub budget: Option<std::time::Duration>,
    /// `--spec FILE`: a grader spec to use instead of the built-in one.
    pub spec: Option<PathBuf>,
    pub quiet: bool,
}

impl RunOptions {
    pub fn out_dir(&self, grader: &str) -> Result<crate::report::OutputDir> {
        let path = match &self.out {
            Some(p) => p.clone(),
            None => {
                let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace(':', "-");
                PathBuf::from("out").join(format!("{grader}-{stamp}"))
            }
        };
        crate::report::OutputDir::create(&path, self.force)
    }

    /// The hard stop for the loading phase (reading the model, building the session, constant
    /// folding), armed as soon as the budget starts: a model that takes minutes to load is stopped at
    /// the same budget plus grace as one that takes minutes to run. Drop it when the run arms its own
    /// hard stop. On firing, a report saying so goes to `--out` (when given and usable), exit code 1.
    pub fn arm_load_stop(&self, deadline: crate::budget::Deadline, spec: &crate::spec::GraderSpec) -> crate::budget::HardStop {
        let mut partial = crate::report::Report::new(spec);
        let out = self.out.clone();
        let (force, extra) = (self.force, self.extra.clone());
        crate::budget::HardStop::arm(deadline, move || {
            let during = crate::memory::current_activity().unwrap_or_else(|| "loading the model".into());
            partial.status = crate::report::Status::OverBudget;
            partial.notes.push(format!(
                "stopped while {during}: loading ran past the {:.0} s budget (plus grace) before grading could start; nothing was graded",
                deadline.budget().as_secs_f64()
            ));
            if let Some(dir) = out.as_ref().and_then(|o| crate::report::OutputDir::create(o, force).ok()) {
                let _ = partial.write_all(&dir, &extra);
            }
            eprintln!("error: over budget: still {} when the time budget ran out", crate::report::sanitize::line(&during));
        })
    }
}

/// Parses `key=value` pairs from `--meta`.
pub fn parse_meta(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    let mut m = BTreeMap::new();
    for p in pairs {
        let Some((k, v)) = p.split_once('=') else { bail!("--meta {p:?}: expected KEY=VALUE") };
        if k.trim().is_empty() {
            bail!("--meta {p:?}: empty key");
        }
        m.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(m)
}

/// The model to grade: the one given, else the grader's bundled one (`[data] model` in its spec).
/// Returns the path and whether it is the bundled default (reports say so).
pub fn given_or_bundled(given: &Option<PathBuf>, spec: &crate::spec::GraderSpec, example: &str) -> Result<(PathBuf, bool)> {
    match given {
        Some(m) => Ok((m.clone(), false)),
        None => match spec.data.model.as_deref() {
            Some(m) => Ok((rel_or_root(m), true)),
            None => bail!("grader {} has no bundled model: pass --model {example}", spec.name),
        },
    }
}

/// The report's text for a model: its path, marked when it is the bundled default.
pub fn model_label(path: &std::path::Path, bundled: bool) -> String {
    format!("{}{}", path.display(), if bundled { " (bundled default)" } else { "" })
}

/// A bundled default named relative to the project (`models/...`): as given when it exists from the
/// current folder, else from the source tree `grade` was built from (an installed binary run elsewhere).
pub fn rel_or_root(p: &str) -> std::path::PathBuf {
    let rel = std::path::PathBuf::from(p);
    if rel.exists() {
        return rel;
    }
    let alt = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(p);
    if alt.exists() {
        alt
    } else {
        rel
    }
}
