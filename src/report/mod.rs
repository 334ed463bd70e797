//! Grading reports: one `Report` value rendered as a terminal table, JSON (every number), JUnit XML
//! (for CI systems) and Markdown (for a CI job summary). Files are written atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::metrics::interval::{self, Interval};
use crate::runtime::EngineInfo;
use crate::spec::{GraderSpec, Verdict};

pub mod output_dir;
mod render;
pub mod sanitize;

pub use output_dir::OutputDir;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Every baseline metric reached at least the simple baseline, within the budget.
    Passed,
    /// Graded, but below the simple baseline.
    Failed,
    /// The time budget ran out; the numbers cover only what was done.
    OverBudget,
}

fn lenient_interval<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Interval>, D::Error> {
    Ok(serde_json::from_value(serde_json::Value::deserialize(d)?).ok())
}

/// One metric of a report; `grade batch` reads its children's `report.json` back as these.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricRow {
    pub name: String,
    /// `None`: not computed (the report says why in `notes`).
    pub value: Option<f64>,
    pub simple: Option<f64>,
    pub strong: Option<f64>,
    pub higher_is_better: bool,
    pub verdict: Option<Verdict>,
    /// 95% confidence interval (Wilson for accuracies, bootstrap for FID) when one was computed.
    /// Read back leniently: a bound that was not finite is written as null, and reads as no interval.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient_interval")]
    pub interval: Option<Interval>,
    /// The baselines ("simple", "strong") that lie inside the interval: the verdict against them is
    /// within noise, and another draw of images could land on the other side.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub within_noise_of: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub tool: String,
    pub tool_version: String,
    pub grader: GraderSpec,
    pub status: Status,
    pub metrics: Vec<MetricRow>,
    pub engine: Option<EngineInfo>,
    /// What was graded: model, data folder, split, flags.
    pub inputs: BTreeMap<String, String>,
    /// Seconds per phase.
    pub timings: BTreeMap<String, f64>,
    pub counts: BTreeMap<String, u64>,
    /// Task-specific detail (per-class accuracy, confusion matrix, ...).
    pub details: serde_json::Value,
    pub notes: Vec<String>,
    /// Integrity verdict lines (memorisation of training images): printed under the title, never a
    /// change of `status` on their own.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub integrity: Vec<String>,
    pub versions: BTreeMap<String, String>,
}

impl Report {
    pub fn new(grader: &GraderSpec) -> Report {
        let mut versions = BTreeMap::new();
        versions.insert("gradekit".into(), env!("CARGO_PKG_VERSION").into());
        // Read from Cargo.lock by build.rs.
        versions.insert("tract-onnx".into(), env!("GRADEKIT_TRACT_VERSION").into());
        versions.insert("ort".into(), env!("GRADEKIT_ORT_VERSION").into());
        Report {
            tool: "gradekit".into(),
            tool_version: env!("CARGO_PKG_VERSION").into(),
            grader: grader.clone(),
            status: Status::Passed,
            metrics: vec![],
            engine: None,
            inputs: BTreeMap::new(),
            timings: BTreeMap::new(),
            counts: BTreeMap::new(),
            details: serde_json::Value::Null,
            notes: vec![],
            integrity: vec![],
            versions,
        }
    }

    /// Adds a metric, judged against the grader's baseline of the same name when it has one.
    pub fn metric(&mut self, name: &str, value: Option<f64>) {
        let b = self.grader.baseline(name).cloned();
        self.metrics.push(MetricRow {
            name: name.into(),
            value,
            simple: b.as_ref().map(|b| b.simple),
            strong: b.as_ref().and_then(|b| b.strong),
            // Without a baseline, the metric's own nature: distances between distributions are better low.
            higher_is_better: b
                .as_ref()
                .map(|b| b.higher_is_better)
                .unwrap_or(!matches!(name, "fid" | "kid" | "judge_fid" | "noise_fraction" | "mifid" | "memorised_fraction")),
            verdict: b.map(|b| b.verdict(value)),
            interval: None,
            within_noise_of: vec![],
        });
    }

    /// Adds an accuracy (`correct` of `total`) with its 95% Wilson interval.
    pub fn accuracy_metric(&mut self, name: &str, correct: u64, total: u64) {
        if total == 0 {
            return self.metric(name, None);
        }
        self.metric(name, Some(correct as f64 / total as f64));
        if let Ok(i) = interval::wilson(correct, total, 0.95) {
            self.set_interval(name, i);
        }
    }

    /// Attaches a confidence interval to metric `name` and notes the baselines it straddles.
    pub fn set_interval(&mut self, name: &str, i: Interval) {
        if let Some(m) = self.metrics.iter_mut().find(|m| m.name == name) {
            m.within_noise_of = [("simple", m.simple), ("strong", m.strong)]
                .into_iter()
                .filter_map(|(k, b)| b.filter(|b| i.contains(*b)).map(|_| k.to_string()))
                .collect();
            m.interval = Some(i);
        }
    }

    /// Sets the status from the verdicts (an over-budget run stays over budget).
    pub fn settle(&mut self) {
        if self.status == Status::OverBudget {
            return;
        }
        let below = self.metrics.iter().any(|m| matches!(m.verdict, Some(Verdict::Below) | Some(Verdict::NotComputed)));
        self.status = if below { Status::Failed } else { Status::Passed };
    }

    /// The process exit code: 0 passed, 1 failed or over budget (2 is kept for errors).
    pub fn exit_code(&self) -> i32 {
        match self.status {
            Status::Passed => 0,
            _ => 1,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serialises")
    }

    pub fn to_table(&self) -> String {
        render::table(self)
    }

    pub fn to_markdown(&self) -> String {
        render::markdown(self)
    }

    pub fn to_junit(&self) -> Result<String> {
        render::junit(self)
    }

    /// Writes report.json, junit.xml and summary.md into `out`, plus any extra paths asked for.
    pub fn write_all(&self, out: &OutputDir, extra: &ExtraReports) -> Result<Vec<PathBuf>> {
        let mut written = vec![
            out.write("report.json", self.to_json().as_bytes())?,
            out.write("junit.xml", self.to_junit()?.as_bytes())?,
            out.write("summary.md", self.to_markdown().as_bytes())?,
        ];
        written.extend(self.write_extra(extra)?);
        Ok(written)
    }

    /// Writes only the copies the user asked for (`--json`, `--junit`, `--markdown`).
    pub fn write_extra(&self, extra: &ExtraReports) -> Result<Vec<PathBuf>> {
        let mut written = vec![];
        if let Some(p) = &extra.json {
            write_atomic(p, self.to_json().as_bytes())?;
            written.push(p.clone());
        }
        if let Some(p) = &extra.junit {
            write_atomic(p, self.to_junit()?.as_bytes())?;
            written.push(p.clone());
        }
        if let Some(p) = &extra.markdown {
            write_atomic(p, self.to_markdown().as_bytes())?;
            written.push(p.clone());
        }
        Ok(written)
    }
}

/// Arms the hard stop for a grading run: past the budget (plus grace) inside one model call, a partial
/// report saying so is written to `out` and the process exits with code 1.
pub fn arm_hard_stop(deadline: crate::budget::Deadline, mut partial: Report, out: &Path, extra: &ExtraReports) -> crate::budget::HardStop {
    let out = out.to_path_buf();
    let extra = extra.clone();
    crate::budget::HardStop::arm(deadline, move || {
        partial.status = Status::OverBudget;
        partial.notes.push(format!(
            "stopped: a single model call ran {:.0} s past the {:.0} s budget (the model is too slow); nothing was graded after that point",
            (deadline.elapsed() - deadline.budget()).as_secs_f64(),
            deadline.budget().as_secs_f64()
        ));
        for m in &mut partial.metrics {
            m.value = None;
            m.verdict = Some(Verdict::NotComputed);
        }
        if let Ok(dir) = OutputDir::create(&out, true) {
            let _ = partial.write_all(&dir, &extra);
        }
        eprintln!("error: over budget: a single model call ran past the time budget; partial report in {}", out.display());
    })
}

/// Report copies the user asked for explicitly (`--json`, `--junit`, `--markdown`).
#[derive(Debug, Clone, Default)]
pub struct ExtraReports {
    pub json: Option<PathBuf>,
    pub junit: Option<PathBuf>,
    pub markdown: Option<PathBuf>,
}

/// Writes `bytes` to `path` via a temporary file in the same folder and a rename, so a reader never
/// sees half a file and a crash never leaves one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!("cannot write {}: folder {} does not exist", path.display(), dir.display());
    }
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("cannot write into {}", dir.display()))?;
    tmp.write_all(bytes).with_context(|| format!("cannot write {}", path.display()))?;
    // tempfile creates 0600 files; reports and images are meant to be shared.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644)).ok();
    }
    tmp.as_file().sync_all().ok();
    tmp.persist(path).map_err(|e| anyhow::anyhow!("cannot write {}: {}", path.display(), e.error))?;
    Ok(())
}
