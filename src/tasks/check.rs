//! `grade check`: does a model meet the contract, and can the chosen backend run it? Reports before any
//! grading: ports, metadata, operators the backend cannot run, and one trial batch.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use serde::Serialize;

use crate::onnx::contract::{Finding, Level};
use crate::onnx::{Contract, ModelFile, ModelKind, ModelLimits};
use crate::runtime::{self, Input, RuntimeOptions};

#[derive(Debug, Serialize)]
pub struct CheckReport {
    pub model: String,
    pub kind: ModelKind,
    pub ok: bool,
    pub backend: Option<String>,
    pub opset: Option<i64>,
    pub parameters: u64,
    pub ops: Vec<String>,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub findings: Vec<Finding>,
}

/// A trial input of the contract's shape, batch 2 (or the fixed batch).
fn trial(contract: &Contract) -> Result<Vec<(String, Vec<usize>, Option<Vec<f32>>, Option<Vec<i64>>)>> {
    let n = contract.fixed_batch.unwrap_or(2);
    Ok(match contract.kind {
        ModelKind::Classifier => vec![(contract.inputs[0].clone(), vec![n, 3, 28, 28], Some(vec![0.1; n * 3 * 784]), None)],
        ModelKind::Generator => {
            let d = contract.meta_i64("latent_dim")? as usize;
            vec![(contract.inputs[0].clone(), vec![n, d, 1, 1], Some(vec![0.1; n * d]), None)]
        }
        ModelKind::Noise => vec![
            (contract.inputs[0].clone(), vec![n, 3, 28, 28], Some(vec![0.1; n * 3 * 784]), None),
            (contract.inputs[1].clone(), vec![n], None, Some(vec![500; n])),
            (contract.inputs[2].clone(), vec![n], None, Some(vec![3; n])),
        ],
    })
}

pub fn run(path: &Path, kind: ModelKind, meta: &BTreeMap<String, String>, opts: &RuntimeOptions) -> Result<CheckReport> {
    let file = ModelFile::open(path, &ModelLimits::default())?;
    let mut contract = Contract::resolve(&file, kind, meta);
    let mut backend = None;
    if contract.errors().next().is_none() {
        match runtime::open(&file, opts) {
            Err(e) => contract.findings.push(Finding { level: Level::Error, message: format!("{e:#}") }),
            Ok(mut engine) => {
                backend = Some(engine.info().to_string());
                // Generators may take [N, d] latents: shape the trial like the file declares.
                let mut inputs = trial(&contract)?;
                if kind == ModelKind::Generator {
                    if let Some(dims) = file.input(&contract.inputs[0]).and_then(|p| p.dims.as_ref()) {
                        if dims.len() == 2 {
                            inputs[0].1.truncate(2);
                        }
                    }
                }
                let ins: Vec<Input> = inputs
                    .iter()
                    .map(|(name, shape, f, i)| match (f, i) {
                        (Some(f), _) => Input::f32(name, shape, f),
                        (_, Some(i)) => Input::i64(name, shape, i),
                        _ => unreachable!(),
                    })
                    .collect();
                match engine.run(&ins, &contract.output) {
                    Err(e) => contract.findings.push(Finding { level: Level::Error, message: format!("trial run failed: {e:#}") }),
                    Ok(out) => {
                        let bad = out.data.iter().filter(|v| !v.is_finite()).count();
                        if bad > 0 {
                            contract.findings.push(Finding {
                                level: Level::Warning,
                                message: format!("trial run gave {bad} NaN/Inf values out of {}", out.data.len()),
                            });
                        }
                        contract.findings.push(Finding { level: Level::Info, message: format!("trial run: output shape {:?}", out.shape) });
                    }
                }
            }
        }
    }
    let ok = contract.errors().next().is_none();
    Ok(CheckReport {
        model: path.display().to_string(),
        kind,
        ok,
        backend,
        opset: file.opset,
        parameters: file.parameters,
        ops: file.ops.iter().cloned().collect(),
        inputs: file.inputs.iter().map(|p| format!("{}: {} {}", p.name, p.elem, p.shape_string())).collect(),
        outputs: file.outputs.iter().map(|p| format!("{}: {} {}", p.name, p.elem, p.shape_string())).collect(),
        metadata: contract.metadata.clone(),
        findings: contract.findings,
    })
}

impl CheckReport {
    pub fn to_text(&self) -> String {
        // Every field may hold the submission's text: one line each, no control characters.
        use crate::report::sanitize::line as l;
        let mut s =
            format!("{}: {} as a {} model\n", l(&self.model), if self.ok { "OK" } else { "DOES NOT MEET THE CONTRACT" }, self.kind.name());
        s.push_str(&format!("  backend: {}\n", self.backend.as_deref().unwrap_or("not loaded")));
        s.push_str(&format!("  opset: {}\n", self.opset.map(|o| o.to_string()).unwrap_or_else(|| "none".into())));
        s.push_str(&format!("  parameters: {}\n", self.parameters));
        s.push_str(&format!("  inputs: {}\n", l(&self.inputs.join("; "))));
        s.push_str(&format!("  outputs: {}\n", l(&self.outputs.join("; "))));
        s.push_str(&format!("  operators: {}\n", l(&self.ops.join(", "))));
        for (k, v) in &self.metadata {
            s.push_str(&format!("  metadata {} = {}\n", l(k), l(v)));
        }
        for f in &self.findings {
            let tag = match f.level {
                Level::Error => "error",
                Level::Warning => "warning",
                Level::Info => "info",
            };
            s.push_str(&format!("  {tag}: {}\n", l(f.message.trim_end())));
        }
        s
    }
}

/// [`run`] with a wall-clock limit: a model whose graph runs for ever (a long Loop, huge convolutions)
/// gets a clear error instead of a check that never returns. The trial runs on its own thread; past
/// the limit the process exits (an inference call cannot be cancelled from outside).
pub fn run_bounded(
    path: &Path,
    kind: ModelKind,
    meta: &BTreeMap<String, String>,
    opts: &RuntimeOptions,
    limit: std::time::Duration,
) -> Result<CheckReport> {
    let (tx, rx) = std::sync::mpsc::channel();
    let (p, m, o) = (path.to_path_buf(), meta.clone(), opts.clone());
    std::thread::Builder::new().name("check".into()).spawn(move || {
        let _ = tx.send(run(&p, kind, &m, &o));
    })?;
    match rx.recv_timeout(limit) {
        Ok(r) => r,
        Err(_) => {
            eprintln!(
                "error: {} did not load and run one trial batch within {:.0} s (--timeout): the model is too slow to grade \
                 (a long Loop or very large layers?); simplify it or raise --timeout",
                path.display(),
                limit.as_secs_f64()
            );
            std::process::exit(2);
        }
    }
}
