//! One inference interface, two backends: tract (pure Rust, always available; on CUDA with the cargo
//! feature `tract-cuda`) and ONNX Runtime (loaded at run time from the library
//! `scripts/install-onnxruntime.sh` installs, CPU or CUDA).

use anyhow::{bail, Result};
use serde::Serialize;

use crate::onnx::ModelFile;

pub mod cuda_libs;
pub mod ort_backend;
pub mod tract_backend;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// ONNX Runtime when its library is found, tract otherwise.
    #[default]
    Auto,
    Tract,
    Ort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
}

/// ONNX Runtime's graph optimisation level (default `all`). Measured on the seed UNet with 2 threads:
/// `all` ran 80 evaluations/s, `basic` and no optimisation 21 (one core busy): kept for diagnosis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OrtOpt {
    Basic,
    Extended,
    All,
}

#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    pub backend: BackendChoice,
    pub device: Device,
    /// Intra-op threads for ONNX Runtime, batch slices run at once for tract. `None`: all cores.
    pub threads: Option<usize>,
    /// ONNX Runtime graph optimisation; `None`: `all`.
    pub ort_opt: Option<OrtOpt>,
}

/// What ran: every report carries it.
#[derive(Debug, Clone, Serialize)]
pub struct EngineInfo {
    pub backend: &'static str,
    pub device: Device,
    pub version: String,
    /// For ONNX Runtime: the library file that was loaded.
    pub library: Option<String>,
}

impl std::fmt::Display for EngineInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dev = match self.device {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        };
        write!(f, "{} {} ({dev})", self.backend, self.version)
    }
}

pub enum InputData<'a> {
    F32(&'a [f32]),
    I64(&'a [i64]),
}

pub struct Input<'a> {
    pub name: &'a str,
    pub shape: Vec<usize>,
    pub data: InputData<'a>,
}

impl<'a> Input<'a> {
    pub fn f32(name: &'a str, shape: &[usize], data: &'a [f32]) -> Self {
        Input { name, shape: shape.to_vec(), data: InputData::F32(data) }
    }
    pub fn i64(name: &'a str, shape: &[usize], data: &'a [i64]) -> Self {
        Input { name, shape: shape.to_vec(), data: InputData::I64(data) }
    }
    fn len(&self) -> usize {
        match self.data {
            InputData::F32(d) => d.len(),
            InputData::I64(d) => d.len(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Output {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A loaded model ready to run batches.
pub trait Engine: Send {
    /// Runs the model and returns the f32 output `output`.
    fn run(&mut self, inputs: &[Input], output: &str) -> Result<Output>;
    fn info(&self) -> &EngineInfo;
}

/// Whether this `grade` was built with tract's CUDA backend (cargo feature `tract-cuda`).
pub const TRACT_CUDA_BUILT: bool = cfg!(feature = "tract-cuda");

/// What to run to get tract's CUDA backend into a build that lacks it.
pub const TRACT_CUDA_BUILD_HINT: &str =
    "rebuild with `cargo build --release --features tract-cuda` (or `cargo install --locked --path . --features tract-cuda`)";

/// The backend `open` uses for these options: `auto` is ONNX Runtime when its library is found; on
/// `--device cuda` without it, tract when this build has tract's CUDA backend.
pub fn resolve_backend(opts: &RuntimeOptions) -> BackendChoice {
    match (opts.backend, opts.device) {
        (BackendChoice::Auto, Device::Cuda) => {
            if ort_backend::find_library().is_none() && TRACT_CUDA_BUILT {
                BackendChoice::Tract
            } else {
                BackendChoice::Ort
            }
        }
        (BackendChoice::Auto, Device::Cpu) => {
            if ort_backend::find_library().is_some() {
                BackendChoice::Ort
            } else {
                BackendChoice::Tract
            }
        }
        (b, _) => b,
    }
}

/// Opens `model` with the backend the options ask for.
pub fn open(model: &ModelFile, opts: &RuntimeOptions) -> Result<Box<dyn Engine>> {
    match resolve_backend(opts) {
        BackendChoice::Ort => Ok(Box::new(ort_backend::OrtEngine::open(model, opts)?)),
        _ => Ok(Box::new(tract_backend::TractEngine::open_on(model, opts.threads, opts.device)?)),
    }
}

/// Checks the inputs' sizes against their shapes before any backend sees them.
fn check_inputs(inputs: &[Input]) -> Result<()> {
    for i in inputs {
        let n: usize = i.shape.iter().product();
        if n != i.len() {
            bail!("input {}: shape {:?} needs {n} values, got {}", i.name, i.shape, i.len());
        }
    }
    Ok(())
}

/// Validates a model's output against the shape the caller expects, naming the model on failure.
pub fn expect_shape(out: &Output, want: &[usize], model: &str) -> Result<()> {
    if out.shape != want {
        bail!("{model}: output has shape {:?}, expected {:?}", out.shape, want);
    }
    Ok(())
}
