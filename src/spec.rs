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
    pub data: DataSpec,
    #[serde(default)]
    pub sampling: SamplingSpec,
    pub budget: Budget,
    /// Sample-quality signals reported beside the verdict (ddpm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<QualitySpec>,
    #[serde(rename = "baseline", default)]
    pub baselines: Vec<Baseline>,
}

/// `[data]`: the grader's data and bundled models, paths relative to the project (`data/hw2_data/...`,
/// `models/...`). One struct for every task, each key optional: a task asks for the keys it needs
/// ([`GraderSpec::data_str`], [`GraderSpec::data_int`]), and a key no grader reads is a parse error
/// naming it. Fields in alphabetical order: reports serialise the spec as they always did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    /// The DANN target's folder (`val.csv`, `data/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<i64>,
    /// Images to generate (gan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<i64>,
    /// Images to generate per class (ddpm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images_per_class: Option<i64>,
    /// The bundled digit judge (ddpm, `grade digits`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<String>,
    /// The bundled model graded when no --model is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<i64>,
    /// Real images the generated ones are measured against (gan's FID reference).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The DANN source domain (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The labelled split graded (`val` -> `val.csv`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// The DANN target domain (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Training images for the memorisation check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<String>,
}

/// `[sampling]`: how the generative graders draw their images; `None` takes the task's default (and a
/// command-line flag overrides either).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingSpec {
    /// Images sampled together on a CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<i64>,
    /// Images sampled together on a GPU (ddpm; default: a class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_cuda: Option<i64>,
    /// Rows per noise-model call on a CPU (ddpm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_rows: Option<i64>,
    /// Rows per noise-model call on a GPU (ddpm; default: the whole batch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_rows_cuda: Option<i64>,
    /// Clip the predicted x0 to [-1, 1] (ddpm's DDIM and DPM-Solver++).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_x0: Option<bool>,
    /// Bootstrap resamples for the FID's confidence interval (gan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fid_bootstrap: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampler: Option<Sampler>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// `"auto"` (fit the budget) or a step count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Steps>,
}

/// The diffusion samplers `grade ddpm` offers (`--sampler`, `[sampling] sampler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Sampler {
    Ddpm,
    Ddim,
    /// DPM-Solver++(2M).
    #[value(name = "dpm-solver", alias = "dpm-solver++", alias = "dpmpp")]
    DpmSolver,
}

/// `[sampling] steps`: a count or a word (`"auto"`), as `--steps` takes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Steps {
    Count(u64),
    Text(String),
}

impl std::fmt::Display for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Steps::Count(n) => write!(f, "{n}"),
            Steps::Text(s) => f.write_str(s),
        }
    }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
        let g: crate::graders::Grader = name.parse()?;
        Self::parse(g.info().spec, &format!("graders/{name}.toml"))
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

    /// The built-in graders' names, in the order of [`crate::graders::GRADERS`].
    pub fn names() -> impl Iterator<Item = &'static str> {
        crate::graders::GRADERS.iter().map(|g| g.name)
    }

    pub fn budget(&self) -> Duration {
        Duration::from_secs_f64(self.budget.seconds)
    }

    pub fn baseline(&self, metric: &str) -> Option<&Baseline> {
        self.baselines.iter().find(|b| b.metric == metric)
    }

    /// A required `[data]` path, an error naming the grader and key when it is absent.
    pub fn data_str<'a>(&self, key: &str, value: &'a Option<String>) -> Result<&'a str> {
        value.as_deref().ok_or_else(|| anyhow!("grader {}: data.{key} missing", self.name))
    }

    /// A required `[data]` count, an error naming the grader and key when it is absent or not positive.
    pub fn data_int(&self, key: &str, value: Option<i64>) -> Result<usize> {
        match value {
            Some(v) if v > 0 => Ok(v as usize),
            Some(v) => bail!("grader {}: data.{key} = {v} must be positive", self.name),
            None => bail!("grader {}: data.{key} missing", self.name),
        }
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

    #[test]
    fn data_and_sampling_are_typed() {
        let base = "name='x'\ntask='ddpm'\ntitle='t'\n[budget]\nseconds=1\n";
        // A key no grader reads (the unread `guidance` graders/ddpm.toml used to carry) is an error naming it.
        for stray in ["[sampling]\nguidance=1.0\n", "[data]\nmodle='m.onnx'\n"] {
            let e = format!("{:#}", GraderSpec::parse(&format!("{base}{stray}"), "t").unwrap_err());
            assert!(e.contains(stray.split('\n').nth(1).unwrap().split('=').next().unwrap()), "{e}");
        }
        // Wrong types are errors too, not silently the default.
        assert!(GraderSpec::parse(&format!("{base}[sampling]\nseed='zero'\n"), "t").is_err());
        assert!(GraderSpec::parse(&format!("{base}[sampling]\nsampler='euler'\n"), "t").is_err());
        let s = GraderSpec::parse(&format!("{base}[sampling]\nsteps=20\nsampler='dpm-solver'\n"), "t").unwrap();
        assert_eq!(s.sampling.steps.unwrap().to_string(), "20");
        assert_eq!(s.sampling.sampler, Some(Sampler::DpmSolver));
        let ddpm = GraderSpec::builtin("ddpm").unwrap();
        assert_eq!(ddpm.sampling.steps, Some(Steps::Text("auto".into())));
        // One place for the bundled model and judge: `[data]`, as every grader.
        assert_eq!(ddpm.data.model.as_deref(), Some("models/ddpm-unet-w64.onnx"));
        assert_eq!(ddpm.data.judge.as_deref(), Some("models/digit-judge-lenet.onnx"));
        for name in GraderSpec::names() {
            assert!(GraderSpec::builtin(name).unwrap().data.model.is_some(), "{name} has no bundled model");
        }
        let e = format!("{:#}", ddpm.data_int("images", ddpm.data.images).unwrap_err());
        assert!(e.contains("data.images missing"), "{e}");
    }
}
