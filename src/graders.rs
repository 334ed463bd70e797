//! The graders, in one table: each grader's identity, its spec (graders/*.toml, compiled in), the files a
//! student hands in for it, the kind of model it runs and the `grade` subcommand that grades one. The
//! spec loader, `grade graders`, the batch layout, the batch's child commands and the copy-detection
//! fingerprints all read this table; a new grader is a new row (and its `tasks::` module).

use serde::{Deserialize, Serialize};

use crate::onnx::ModelKind;

/// A grader's identity. Serialised (class.json, reports) and named on the command line by
/// [`GraderInfo::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Grader {
    Gan,
    Ddpm,
    DannMnistmSvhn,
    DannMnistmUsps,
}

/// One row of [`GRADERS`].
#[derive(Debug)]
pub struct GraderInfo {
    pub grader: Grader,
    /// The name the command line, the batch layout and the reports use.
    pub name: &'static str,
    /// The spec's TOML text (graders/<name>.toml).
    pub spec: &'static str,
    /// The `grade` subcommand that grades one model.
    pub subcommand: &'static str,
    /// What the model does (its ONNX contract, graders/CONTRACT.md).
    pub model: ModelKind,
    /// The model file a student hands in (batch layout, docs/batch.md).
    pub onnx: &'static str,
    /// Predictions already made (image_name,label), graded against the split's labels without a model.
    pub csv: Option<&'static str>,
}

/// Every grader, in scoreboard order.
pub const GRADERS: &[GraderInfo] = &[
    GraderInfo {
        grader: Grader::Gan,
        name: "gan",
        spec: include_str!("../graders/gan.toml"),
        subcommand: "gan",
        model: ModelKind::Generator,
        onnx: "gan.onnx",
        csv: None,
    },
    GraderInfo {
        grader: Grader::Ddpm,
        name: "ddpm",
        spec: include_str!("../graders/ddpm.toml"),
        subcommand: "ddpm",
        model: ModelKind::Noise,
        onnx: "ddpm.onnx",
        csv: None,
    },
    GraderInfo {
        grader: Grader::DannMnistmSvhn,
        name: "dann-mnistm-svhn",
        spec: include_str!("../graders/dann-mnistm-svhn.toml"),
        subcommand: "dann",
        model: ModelKind::Classifier,
        onnx: "dann-svhn.onnx",
        csv: Some("dann-svhn.csv"),
    },
    GraderInfo {
        grader: Grader::DannMnistmUsps,
        name: "dann-mnistm-usps",
        spec: include_str!("../graders/dann-mnistm-usps.toml"),
        subcommand: "dann",
        model: ModelKind::Classifier,
        onnx: "dann-usps.onnx",
        csv: Some("dann-usps.csv"),
    },
];

impl Grader {
    /// Its row of [`GRADERS`].
    pub fn info(self) -> &'static GraderInfo {
        GRADERS.iter().find(|g| g.grader == self).expect("every grader has a row in GRADERS")
    }

    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// The grader called `name`, if there is one.
    pub fn from_name(name: &str) -> Option<Grader> {
        GRADERS.iter().find(|g| g.name == name).map(|g| g.grader)
    }

    /// The known names, for "unknown grader" messages.
    pub fn known() -> String {
        GRADERS.iter().map(|g| g.name).collect::<Vec<_>>().join(", ")
    }
}

impl std::fmt::Display for Grader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Grader {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Grader> {
        Grader::from_name(s).ok_or_else(|| anyhow::anyhow!("no grader named {s}; known: {}", Grader::known()))
    }
}

/// `grade graders`: one line per grader, its budget, baselines and title.
pub fn listing() -> anyhow::Result<String> {
    let mut out = String::new();
    for g in GRADERS {
        let s = crate::spec::GraderSpec::builtin(g.name)?;
        let b: Vec<String> = s
            .baselines
            .iter()
            .map(|b| match b.strong {
                Some(st) => format!("{} simple {} strong {}", b.metric, b.simple, st),
                None => format!("{} simple {}", b.metric, b.simple),
            })
            .collect();
        out.push_str(&format!("{:<18} budget {:>5.0}s  {}  ({})\n", g.name, s.budget.seconds, b.join("; "), s.title));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_consistent_with_the_specs_and_serde() {
        for (i, g) in GRADERS.iter().enumerate() {
            // The enum's serde name is the table's name: reports and class.json say the same thing.
            assert_eq!(serde_json::to_value(g.grader).unwrap(), serde_json::json!(g.name));
            assert_eq!(g.name.parse::<Grader>().unwrap(), g.grader);
            assert!(GRADERS[..i].iter().all(|o| o.grader != g.grader && o.name != g.name && o.onnx != g.onnx), "{} twice", g.name);
            // The spec names itself, and its task is the subcommand that runs it.
            let spec = crate::spec::GraderSpec::parse(g.spec, g.name).unwrap();
            assert_eq!(spec.name, g.name);
            assert_eq!(spec.task, g.subcommand);
            assert!(g.onnx.ends_with(".onnx") && g.csv.is_none_or(|c| c.ends_with(".csv")));
        }
        assert!("nope".parse::<Grader>().unwrap_err().to_string().contains("known: gan, ddpm"));
    }
}
