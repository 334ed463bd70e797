//! What a batch run records: per grader, per student and for the class (`result.json`, `class.json`),
//! and the shard a run covers. `grade merge` reads these back.

use serde::{Deserialize, Serialize};

use crate::graders::Grader;

/// `--shard I/N`: this run grades the students whose id hashes to I (1-based) of N.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (i, n) = s.split_once('/').ok_or_else(|| format!("--shard {s:?}: expected I/N, e.g. 2/8"))?;
        let (index, count): (usize, usize) = (
            i.trim().parse().map_err(|_| format!("--shard {s:?}: I is not a number"))?,
            n.trim().parse().map_err(|_| format!("--shard {s:?}: N is not a number"))?,
        );
        if count == 0 || index == 0 || index > count {
            return Err(format!("--shard {s:?}: need 1 <= I <= N"));
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// Stable across machines, runs and class sizes: a student's shard depends on the id alone.
    pub fn holds(&self, id: &str) -> bool {
        use sha2::{Digest, Sha256};
        let h = Sha256::digest(id.as_bytes());
        let v = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
        (v % self.count as u64) as usize == self.index - 1
    }
}

/// How one grader's run for one student ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GradeStatus {
    Passed,
    /// Graded, below a baseline.
    Failed,
    OverBudget,
    /// The grader refused the submission (bad model, wrong shapes, bad CSV...): see `error`.
    Error,
    /// Killed at the wall-clock limit (budget + grace).
    Timeout,
    MemoryLimit,
    /// Died of a signal.
    Crashed,
    /// No file for this grader in the student's folder.
    Missing,
    /// The student's folder was refused (a symlink, an unusable name).
    Refused,
}

impl GradeStatus {
    pub fn label(&self) -> &'static str {
        match self {
            GradeStatus::Passed => "passed",
            GradeStatus::Failed => "failed",
            GradeStatus::OverBudget => "over-budget",
            GradeStatus::Error => "error",
            GradeStatus::Timeout => "timeout",
            GradeStatus::MemoryLimit => "memory-limit",
            GradeStatus::Crashed => "crashed",
            GradeStatus::Missing => "missing",
            GradeStatus::Refused => "refused",
        }
    }
}

/// One metric as the scoreboard shows it (from the grader's report.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSummary {
    pub name: String,
    pub value: Option<f64>,
    pub lo: Option<f64>,
    pub hi: Option<f64>,
    pub simple: Option<f64>,
    pub strong: Option<f64>,
    pub higher_is_better: bool,
    pub verdict: Option<String>,
    #[serde(default)]
    pub within_noise_of: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraderResult {
    pub grader: Grader,
    /// The file graded (name inside the student's folder).
    pub submission: Option<String>,
    pub status: GradeStatus,
    pub exit_code: Option<i32>,
    pub seconds: f64,
    pub error: Option<String>,
    pub metrics: Vec<MetricSummary>,
    /// The sample grid, relative to the batch folder.
    pub grid: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StudentStatus {
    /// Every grader passed.
    Passed,
    /// Graded, but something is below a baseline, over budget or missing.
    Failed,
    /// A submission could not be graded (refused, crashed, timed out, over memory, bad model).
    Error,
}

impl StudentStatus {
    pub fn label(&self) -> &'static str {
        match self {
            StudentStatus::Passed => "passed",
            StudentStatus::Failed => "failed",
            StudentStatus::Error => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StudentResult {
    pub id: String,
    pub status: StudentStatus,
    pub seconds: f64,
    pub graders: Vec<GraderResult>,
    pub error: Option<String>,
    /// Students whose models are near-identical to this student's, with the evidence (filled from the
    /// fingerprints when the class report is written; similarity.rs). Never changes a status.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub similar_to: Vec<String>,
}

/// `class.json`: one batch run (or a merge of shards).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassReport {
    pub tool: String,
    pub tool_version: String,
    pub graders: Vec<Grader>,
    /// The shards this report covers (one for a shard run, all for a merge); empty: unsharded.
    #[serde(default)]
    pub shards: Vec<Shard>,
    pub students: Vec<StudentResult>,
}

impl ClassReport {
    pub fn counts(&self) -> (usize, usize, usize) {
        let n = |s| self.students.iter().filter(|r| r.status == s).count();
        (n(StudentStatus::Passed), n(StudentStatus::Failed), n(StudentStatus::Error))
    }
}

/// A student passes when every grader passed; an error or limit in any makes the student an error.
pub(super) fn student_status(graders: &[GraderResult]) -> StudentStatus {
    use GradeStatus::*;
    if graders.iter().any(|g| matches!(g.status, Error | Timeout | MemoryLimit | Crashed | Refused)) {
        StudentStatus::Error
    } else if graders.iter().all(|g| g.status == Passed) {
        StudentStatus::Passed
    } else {
        StudentStatus::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_class_stably() {
        let ids: Vec<String> = (0..500).map(|i| format!("student{i:03}")).collect();
        let shards: Vec<Shard> = (1..=4).map(|i| format!("{i}/4").parse().unwrap()).collect();
        let mut sizes = [0; 4];
        for id in &ids {
            let owners: Vec<usize> = (0..4).filter(|&k| shards[k].holds(id)).collect();
            assert_eq!(owners.len(), 1, "{id} in shards {owners:?}");
            sizes[owners[0]] += 1;
        }
        assert!(sizes.iter().all(|&n| n > 90), "{sizes:?}");
        assert!("0/4".parse::<Shard>().is_err() && "5/4".parse::<Shard>().is_err() && "x".parse::<Shard>().is_err());
        // The shard of a student is a fixed function of the id (recorded so a change is noticed).
        let s: Shard = "1/1".parse().unwrap();
        assert!(s.holds("anyone"));
    }
}
