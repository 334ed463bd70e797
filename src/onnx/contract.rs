//! The grading contract: what a model of each kind must look like (names, dtypes, shapes, metadata).
//! graders/CONTRACT.md is the human-readable version of the tables here; keep the two in step.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use serde::Serialize;

use super::model_file::{DeclaredDim, ModelFile, Port};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// Digit classifier or DANN: image -> logits.
    Classifier,
    /// GAN generator: latent -> image.
    Generator,
    /// Diffusion noise model: (noisy image, timestep, label) -> predicted noise.
    Noise,
}

/// One expected port: name, ONNX element type, and shape where `None` marks the batch dimension.
struct PortSpec {
    name: &'static str,
    elem: &'static str,
    dims: &'static [Option<i64>],
}

struct KindSpec {
    inputs: &'static [PortSpec],
    outputs: &'static [PortSpec],
    /// Metadata keys with their defaults (`None`: no default, the grader asks for it when it needs it).
    metadata: &'static [(&'static str, Option<&'static str>)],
}

const CLASSIFIER: KindSpec = KindSpec {
    inputs: &[PortSpec { name: "image", elem: "float", dims: &[None, Some(3), Some(28), Some(28)] }],
    outputs: &[PortSpec { name: "logits", elem: "float", dims: &[None, Some(10)] }],
    metadata: &[("input_mean", Some("0.5,0.5,0.5")), ("input_std", Some("0.5,0.5,0.5"))],
};

const GENERATOR: KindSpec = KindSpec {
    // The latent may be [N, latent_dim, 1, 1] (DCGAN) or [N, latent_dim]; checked separately.
    inputs: &[PortSpec { name: "z", elem: "float", dims: &[] }],
    outputs: &[PortSpec { name: "image", elem: "float", dims: &[None, Some(3), Some(64), Some(64)] }],
    metadata: &[("latent_dim", None), ("output_range", Some("-1,1"))],
};

const NOISE: KindSpec = KindSpec {
    inputs: &[
        PortSpec { name: "x", elem: "float", dims: &[None, Some(3), Some(28), Some(28)] },
        PortSpec { name: "t", elem: "int64", dims: &[None] },
        PortSpec { name: "label", elem: "int64", dims: &[None] },
    ],
    outputs: &[PortSpec { name: "eps", elem: "float", dims: &[None, Some(3), Some(28), Some(28)] }],
    metadata: &[
        ("schedule", Some("linear")),
        ("beta_start", Some("0.0001")),
        ("beta_end", Some("0.02")),
        ("timesteps", Some("1000")),
        ("num_classes", Some("10")),
        ("null_label", None),
        ("guidance_scale", Some("1")),
    ],
};

/// Largest batch size a model may fix in its ports: the grader sizes its input buffers by it.
pub const MAX_FIXED_BATCH: usize = 1024;

/// Bounds on integer metadata: every one sizes something (the noise schedule has `timesteps`
/// entries, a latent batch `latent_dim` floats per image, ...), so a value from the file is checked
/// against its bound before anything is allocated from it.
pub const INT_METADATA_BOUNDS: &[(&str, i64, i64)] = &[("timesteps", 1, 100_000), ("latent_dim", 1, 65_536), ("num_classes", 1, 1_000)];

fn int_bound(key: &str) -> Option<(i64, i64)> {
    INT_METADATA_BOUNDS.iter().find(|(k, _, _)| *k == key).map(|&(_, lo, hi)| (lo, hi))
}

impl ModelKind {
    fn spec(self) -> &'static KindSpec {
        match self {
            ModelKind::Classifier => &CLASSIFIER,
            ModelKind::Generator => &GENERATOR,
            ModelKind::Noise => &NOISE,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Classifier => "classifier",
            ModelKind::Generator => "generator",
            ModelKind::Noise => "noise",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Error,
    Warning,
    Info,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub level: Level,
    pub message: String,
}

/// A model checked against its kind: the runtime names to use for each contract port, the merged
/// metadata (file, then defaults, then command-line overrides) and everything found on the way.
#[derive(Debug, Clone, Serialize)]
pub struct Contract {
    pub kind: ModelKind,
    /// Model input names, in the contract's order.
    pub inputs: Vec<String>,
    /// Model output name.
    pub output: String,
    /// A batch size the file fixes (exporters without a dynamic axis fix it, often to 1).
    pub fixed_batch: Option<usize>,
    pub metadata: BTreeMap<String, String>,
    pub findings: Vec<Finding>,
}

impl Contract {
    /// Checks `model` as `kind`. Never fails: problems become findings; `ensure_ok` turns errors into one.
    pub fn resolve(model: &ModelFile, kind: ModelKind, overrides: &BTreeMap<String, String>) -> Contract {
        let spec = kind.spec();
        let mut c =
            Contract { kind, inputs: vec![], output: String::new(), fixed_batch: None, metadata: BTreeMap::new(), findings: vec![] };
        let err = |c: &mut Contract, m: String| c.findings.push(Finding { level: Level::Error, message: m });
        let warn = |c: &mut Contract, m: String| c.findings.push(Finding { level: Level::Warning, message: m });

        if model.opset.is_none() {
            err(&mut c, "the model declares no opset for the default ONNX domain (opset_import); ONNX Runtime refuses such files".into());
        }

        // Inputs: by contract name, or by position when the file uses other names (a plain
        // torch.onnx.export without input_names gives `input.1`, `onnx::Conv_0`, ...).
        let by_name = spec.inputs.iter().all(|p| model.input(p.name).is_some());
        if model.inputs.len() != spec.inputs.len() {
            err(
                &mut c,
                format!(
                    "expected {} input(s) ({}), the model has {} ({})",
                    spec.inputs.len(),
                    spec.inputs.iter().map(|p| p.name).collect::<Vec<_>>().join(", "),
                    model.inputs.len(),
                    model.inputs.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            );
        } else {
            if !by_name {
                warn(
                    &mut c,
                    format!(
                        "input names {:?} differ from the contract's {:?}; using them by position (export with input_names=[...] to silence this)",
                        model.inputs.iter().map(|p| &p.name).collect::<Vec<_>>(),
                        spec.inputs.iter().map(|p| p.name).collect::<Vec<_>>()
                    ),
                );
            }
            for (i, ps) in spec.inputs.iter().enumerate() {
                let port = if by_name { model.input(ps.name).unwrap() } else { &model.inputs[i] };
                c.inputs.push(port.name.clone());
                check_port(&mut c, "input", ps, port);
            }
        }
        let out_spec = &spec.outputs[0];
        let out_port = model.output(out_spec.name).or(if model.outputs.len() == 1 { model.outputs.first() } else { None });
        match out_port {
            Some(p) => {
                if p.name != out_spec.name {
                    warn(&mut c, format!("output '{}' used as '{}' (the model has one output)", p.name, out_spec.name));
                }
                c.output = p.name.clone();
                check_port(&mut c, "output", out_spec, p);
            }
            None => err(
                &mut c,
                format!(
                    "no output named '{}' among {:?}, and more than one output to choose from",
                    out_spec.name,
                    model.outputs.iter().map(|p| &p.name).collect::<Vec<_>>()
                ),
            ),
        }

        // Metadata: file values, then contract defaults, then overrides from the command line.
        for (k, default) in spec.metadata {
            if let Some(v) = model.metadata.get(*k) {
                c.metadata.insert(k.to_string(), v.clone());
            } else if let Some(d) = default {
                c.metadata.insert(k.to_string(), d.to_string());
                if !overrides.contains_key(*k) {
                    c.findings
                        .push(Finding { level: Level::Info, message: format!("metadata '{k}' missing: using the contract default {d}") });
                }
            }
        }
        for (k, v) in &model.metadata {
            c.metadata.entry(k.clone()).or_insert_with(|| v.clone());
        }
        for (k, v) in overrides {
            c.metadata.insert(k.clone(), v.clone());
        }
        if kind == ModelKind::Generator {
            c.check_latent(model);
        }
        // Integer metadata within its bound (file values and overrides alike), before anything uses it.
        for (key, lo, hi) in INT_METADATA_BOUNDS {
            if let Some(Ok(v)) = c.metadata.get(*key).map(|v| v.trim().parse::<i64>()) {
                if !(*lo..=*hi).contains(&v) {
                    err(&mut c, format!("metadata '{key}' = {v} is outside the bound {lo}..={hi} the grader accepts; fix the model's metadata (or pass --meta {key}=VALUE)"));
                }
            }
        }
        if kind == ModelKind::Noise && !c.metadata.contains_key("null_label") {
            warn(
                &mut c,
                "metadata 'null_label' missing: classifier-free guidance (guidance != 1) cannot be used; pass --meta null_label=K".into(),
            );
        }
        c
    }

    fn check_latent(&mut self, model: &ModelFile) {
        let Some(name) = self.inputs.first().cloned() else { return };
        let port = model.input(&name).unwrap();
        let from_shape = match port.dims.as_deref() {
            Some([_, DeclaredDim::Fixed(d), DeclaredDim::Fixed(1), DeclaredDim::Fixed(1)]) => Some(*d),
            Some([_, DeclaredDim::Fixed(d)]) => Some(*d),
            _ => None,
        };
        match (from_shape, self.metadata.get("latent_dim").map(|v| v.parse::<i64>())) {
            (_, Some(Err(_))) => self.error(format!("metadata latent_dim = {:?} is not an integer", self.metadata["latent_dim"])),
            (Some(s), Some(Ok(m))) if s != m => {
                self.error(format!("latent input {name} has {s} channels but metadata latent_dim says {m}"))
            }
            (Some(s), None) => {
                self.metadata.insert("latent_dim".into(), s.to_string());
            }
            (None, None) => self.error(format!(
                "cannot tell the latent size: input {name} has shape {} and no latent_dim metadata; pass --meta latent_dim=100",
                port.shape_string()
            )),
            _ => {}
        }
        if let Some(d) = &port.dims {
            if d.len() != 2 && d.len() != 4 {
                self.error(format!("latent input {name} must be [N, latent] or [N, latent, 1, 1], not {}", port.shape_string()));
            }
        }
    }

    fn error(&mut self, m: String) {
        self.findings.push(Finding { level: Level::Error, message: m });
    }

    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.level == Level::Error)
    }

    /// Fails with every contract error in one message.
    pub fn ensure_ok(&self, model: &ModelFile) -> Result<()> {
        let errors: Vec<&str> = self.errors().map(|f| f.message.as_str()).collect();
        if errors.is_empty() {
            return Ok(());
        }
        bail!(
            "{} does not meet the {} contract (see graders/CONTRACT.md):\n  - {}",
            model.path.display(),
            self.kind.name(),
            errors.join("\n  - ")
        )
    }

    pub fn meta(&self, key: &str) -> Result<&str> {
        self.metadata.get(key).map(String::as_str).ok_or_else(|| anyhow!("the model has no '{key}' metadata; pass --meta {key}=VALUE"))
    }

    pub fn meta_f64(&self, key: &str) -> Result<f64> {
        let v = self.meta(key)?;
        v.trim().parse::<f64>().ok().filter(|x| x.is_finite()).ok_or_else(|| anyhow!("metadata {key} = {v:?} is not a finite number"))
    }

    /// An integer metadata value, checked against its bound ([`INT_METADATA_BOUNDS`]) when it has one.
    pub fn meta_i64(&self, key: &str) -> Result<i64> {
        let v = self.meta(key)?;
        let n = v.trim().parse::<i64>().map_err(|_| anyhow!("metadata {key} = {v:?} is not an integer"))?;
        if let Some((lo, hi)) = int_bound(key) {
            if !(lo..=hi).contains(&n) {
                bail!("metadata {key} = {n} is outside the bound {lo}..={hi} the grader accepts; fix the model's metadata (or pass --meta {key}=VALUE)");
            }
        }
        Ok(n)
    }

    /// A comma-separated list of `n` finite numbers (a single value is repeated).
    pub fn meta_f32_list(&self, key: &str, n: usize) -> Result<Vec<f32>> {
        let v = self.meta(key)?;
        let parsed: Result<Vec<f32>, _> = v.split(',').map(|s| s.trim().parse::<f32>()).collect();
        let mut list = parsed.map_err(|_| anyhow!("metadata {key} = {v:?} is not a comma-separated list of numbers"))?;
        if list.len() == 1 {
            list = vec![list[0]; n];
        }
        if list.len() != n || list.iter().any(|x| !x.is_finite()) {
            bail!("metadata {key} = {v:?}: expected {n} finite numbers");
        }
        Ok(list)
    }
}

fn check_port(c: &mut Contract, what: &str, spec: &PortSpec, port: &Port) {
    if port.elem != spec.elem {
        c.error(format!(
            "{what} '{}' has type {}, the contract needs {} (cast in the model, or export with that dtype)",
            port.name, port.elem, spec.elem
        ));
    }
    if spec.dims.is_empty() {
        return;
    }
    let Some(dims) = &port.dims else {
        c.findings.push(Finding {
            level: Level::Warning,
            message: format!("{what} '{}' declares no shape; expecting {}", port.name, spec_shape(spec)),
        });
        return;
    };
    if dims.len() != spec.dims.len() {
        c.error(format!("{what} '{}' has shape {}, the contract needs {}", port.name, port.shape_string(), spec_shape(spec)));
        return;
    }
    for (i, (d, want)) in dims.iter().zip(spec.dims).enumerate() {
        match (want, d) {
            (Some(w), DeclaredDim::Fixed(v)) if v != w => {
                c.error(format!("{what} '{}' has shape {}, the contract needs {}", port.name, port.shape_string(), spec_shape(spec)));
                return;
            }
            (None, DeclaredDim::Fixed(v)) if i == 0 => {
                if *v as u64 > MAX_FIXED_BATCH as u64 {
                    c.error(format!(
                        "{what} '{}' fixes the batch size to {v} (its first dimension), over the limit of {MAX_FIXED_BATCH}; \
                         export with a dynamic batch axis (dynamic_axes={{'{}': {{0: 'N'}}}}) or a batch of at most {MAX_FIXED_BATCH}",
                        port.name, port.name
                    ));
                    return;
                }
                let v = (*v).max(1) as usize;
                if c.fixed_batch.is_some_and(|b| b != v) {
                    c.error(format!("{what} '{}' fixes the batch to {v}, another port to {}", port.name, c.fixed_batch.unwrap()));
                }
                if c.fixed_batch.is_none() && v == 1 {
                    c.findings.push(Finding {
                        level: Level::Warning,
                        message: format!("{what} '{}' fixes the batch size to 1: grading runs one image at a time (export with dynamic_axes={{'{}': {{0: 'N'}}}} for speed)", port.name, port.name),
                    });
                }
                c.fixed_batch = Some(v);
            }
            _ => {}
        }
    }
}

fn spec_shape(spec: &PortSpec) -> String {
    format!("[{}]", spec.dims.iter().map(|d| d.map(|v| v.to_string()).unwrap_or_else(|| "N".into())).collect::<Vec<_>>().join(", "))
}
