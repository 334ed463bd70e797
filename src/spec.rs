//! Grader specifications (`graders/*.toml`): task, data split, time budget and baselines. The files
//! are compiled into the binary so `grade` works from any folder; `--spec FILE` reads another one.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GraderSpec {
    pub name: String,
    pub task: String,
    pub title: String,
    #[serde(default)]
    pub data: toml::Table,
    #[serde(default)]
    pub sampling: toml::Table,
    pub budget: Budget,
    /// Sample-quality signals reported beside the verdict (ddpm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<QualitySpec>,
    #[serde(rename = "baseline", default)]
    pub baselines: Vec<Baseline>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub seconds: f64,
}

/// `[quality]`: what `grade ddpm` reports of the digits beyond the judge's accuracy
/// (`metrics::digit_quality`). Informational: the verdict stays the judge's accuracy.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QualitySpec {
    /// Roughness (mean |difference| of horizontal neighbours, 0-255 levels) above which a digit counts
    /// as noise-corrupted.
    pub noise_threshold: f64,
    /// Real digits in the homework's layout (`data/*.png`, `train.csv`, `val.csv`) for the judge FID;
    /// skipped with a note when the folder is absent.
    pub reference: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    pub metric: String,
    pub higher_is_better: bool,
    pub simple: f64,
    pub strong: Option<f64>,
}

/// How a value compares with a baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Strong,
    Simple,
    Below,
    NotComputed,
}

impl Baseline {
    fn beats(&self, value: f64, threshold: f64) -> bool {
        if self.higher_is_better {
            value >= threshold
        } else {
            value <= threshold
        }
    }

    pub fn verdict(&self, value: Option<f64>) -> Verdict {
        match value {
            None => Verdict::NotComputed,
            Some(v) if !v.is_finite() => Verdict::Below,
            Some(v) if self.strong.is_some_and(|s| self.beats(v, s)) => Verdict::Strong,
            Some(v) if self.beats(v, self.simple) => Verdict::Simple,
            Some(_) => Verdict::Below,
        }
    }
}

const BUILTIN: &[(&str, &str)] = &[
    ("dann-mnistm-usps", include_str!("../graders/dann-mnistm-usps.toml")),
    ("dann-mnistm-svhn", include_str!("../graders/dann-mnistm-svhn.toml")),
    ("ddpm", include_str!("../graders/ddpm.toml")),
    ("gan", include_str!("../graders/gan.toml")),
];

impl GraderSpec {
    pub fn parse(text: &str, origin: &str) -> Result<GraderSpec> {
        let spec: GraderSpec = toml::from_str(text).with_context(|| format!("grader spec {origin} is invalid"))?;
        if !(spec.budget.seconds > 0.0 && spec.budget.seconds.is_finite()) {
            bail!("grader spec {origin}: budget.seconds must be positive");
        }
        if let Some(q) = &spec.quality {
            if !(q.noise_threshold.is_finite() && (0.0..=255.0).contains(&q.noise_threshold)) {
                bail!("grader spec {origin}: quality.noise_threshold must be in 0..=255");
            }
        }
        Ok(spec)
    }

    /// A built-in grader by name.
    pub fn builtin(name: &str) -> Result<GraderSpec> {
        let (_, text) = BUILTIN
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| anyhow!("no grader named {name}; known: {}", BUILTIN.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")))?;
        Self::parse(text, &format!("graders/{name}.toml"))
    }

    /// `--spec FILE` when given, else the built-in grader `name`.
    pub fn load(name: &str, file: Option<&Path>) -> Result<GraderSpec> {
        match file {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("cannot read grader spec {}", p.display()))?;
                let spec = Self::parse(&text, &p.display().to_string())?;
                if spec.task != Self::builtin(name)?.task {
                    bail!("grader spec {} is for task {}, not {}", p.display(), spec.task, name);
                }
                Ok(spec)
            }
            None => Self::builtin(name),
        }
    }

    pub fn names() -> impl Iterator<Item = &'static str> {
        BUILTIN.iter().map(|(n, _)| *n)
    }

    pub fn budget(&self) -> Duration {
        Duration::from_secs_f64(self.budget.seconds)
    }

    pub fn baseline(&self, metric: &str) -> Option<&Baseline> {
        self.baselines.iter().find(|b| b.metric == metric)
    }

    pub fn data_str(&self, key: &str) -> Result<&str> {
        self.data.get(key).and_then(|v| v.as_str()).ok_or_else(|| anyhow!("grader {}: data.{key} missing", self.name))
    }

    pub fn data_int(&self, key: &str) -> Result<i64> {
        self.data.get(key).and_then(|v| v.as_integer()).ok_or_else(|| anyhow!("grader {}: data.{key} missing", self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_spec_parses_with_baselines() {
        for name in GraderSpec::names() {
            let s = GraderSpec::builtin(name).unwrap();
            assert_eq!(s.name, name);
            assert!(!s.baselines.is_empty(), "{name} has no baseline");
            assert!(s.budget.seconds > 0.0);
        }
        assert_eq!(GraderSpec::builtin("dann-mnistm-usps").unwrap().baseline("accuracy").unwrap().simple, 0.76);
        assert_eq!(GraderSpec::builtin("gan").unwrap().baseline("fid").unwrap().strong, Some(27.0));
    }

    #[test]
    fn verdicts_respect_direction() {
        let fid = Baseline { metric: "fid".into(), higher_is_better: false, simple: 30.0, strong: Some(27.0) };
        assert_eq!(fid.verdict(Some(26.0)), Verdict::Strong);
        assert_eq!(fid.verdict(Some(29.0)), Verdict::Simple);
        assert_eq!(fid.verdict(Some(31.0)), Verdict::Below);
        assert_eq!(fid.verdict(Some(f64::NAN)), Verdict::Below);
        assert_eq!(fid.verdict(None), Verdict::NotComputed);
        let acc = Baseline { metric: "accuracy".into(), higher_is_better: true, simple: 0.4, strong: None };
        assert_eq!(acc.verdict(Some(0.4)), Verdict::Simple);
        assert_eq!(acc.verdict(Some(0.39)), Verdict::Below);
    }

    #[test]
    fn rejects_unknown_keys_and_bad_budget() {
        assert!(GraderSpec::parse("name='x'\ntask='dann'\ntitle='t'\n[budget]\nseconds=0\n", "t").is_err());
        assert!(GraderSpec::parse("name='x'\ntask='dann'\ntitle='t'\nbogus=1\n[budget]\nseconds=1\n", "t").is_err());
        assert!(GraderSpec::builtin("nope").is_err());
        let q = "name='x'\ntask='ddpm'\ntitle='t'\n[budget]\nseconds=1\n[quality]\nnoise_threshold=40\n";
        assert_eq!(GraderSpec::parse(q, "t").unwrap().quality.unwrap().noise_threshold, 40.0);
        assert!(GraderSpec::parse(&format!("{q}bogus=1\n"), "t").is_err(), "a stray key in [quality]");
        assert!(GraderSpec::parse(&q.replace("=40", "=300"), "t").is_err());
    }
}
