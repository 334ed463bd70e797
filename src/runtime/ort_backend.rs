//! The ONNX Runtime backend, loaded at run time (`load-dynamic`) from the library that
//! `scripts/install-onnxruntime.sh` puts in `.mldeps/`, or from `ORT_DYLIB_PATH`.
//! ONNX Runtime panics when its library is missing, so the file is located and checked first.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::TensorRef;

use super::{check_inputs, Device, Engine, EngineInfo, Input, InputData, OrtOpt, Output, RuntimeOptions};
use crate::onnx::ModelFile;

/// The ONNX Runtime release the project installs (STACK.md: ort 2.0.0-rc.15 with the `api-31` feature).
pub const ORT_VERSION: &str = "1.31.1";

/// Where the install script puts the library, relative to the project root.
pub const INSTALL_DIR: &str = ".mldeps/onnxruntime";

fn library_in(dir: &Path) -> Option<PathBuf> {
    let capi = dir.join(INSTALL_DIR).join("onnxruntime/capi");
    let exact = capi.join(format!("libonnxruntime.so.{ORT_VERSION}"));
    if exact.is_file() {
        return Some(exact);
    }
    std::fs::read_dir(&capi).ok()?.flatten().map(|e| e.path()).find(|p| {
        p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so"))
    })
}

/// The ONNX Runtime library to load: `ORT_DYLIB_PATH` if set, else the project's install location found
/// from the executable's folder upwards (or the source tree it was built from).
pub fn find_library() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    // Not the current folder: a submission folder could ship its own libonnxruntime.so.
    let mut starts = vec![];
    if let Ok(exe) = std::env::current_exe() {
        starts.push(exe);
    }
    starts.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    starts.iter().flat_map(|s| s.ancestors()).find_map(library_in)
}

static ENV: OnceLock<std::result::Result<(ort::environment::Environment, PathBuf), String>> = OnceLock::new();

fn environment() -> Result<&'static (ort::environment::Environment, PathBuf)> {
    ENV.get_or_init(|| {
        let Some(lib) = find_library() else {
            return Err(match std::env::var_os("ORT_DYLIB_PATH") {
                Some(p) => format!("ORT_DYLIB_PATH={} does not name a file", PathBuf::from(p).display()),
                None => format!(
                    "the ONNX Runtime library was not found (looked for ORT_DYLIB_PATH and {INSTALL_DIR}/); \
                     install it with `bash scripts/install-onnxruntime.sh`, or use --backend tract"
                ),
            });
        };
        let builder = ort::init_from(&lib).map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", lib.display()))?;
        let env = builder.with_name("gradekit").with_telemetry(false).build().map_err(|e| format!("ONNX Runtime: {e}"))?;
        Ok((env, lib))
    })
    .as_ref()
    .map_err(|e| anyhow!("{e}"))
}

pub struct OrtEngine {
    session: Session,
    info: EngineInfo,
    path: String,
}

impl OrtEngine {
    pub fn open(file: &ModelFile, opts: &RuntimeOptions) -> Result<Self> {
        let (env, lib) = environment()?;
        let path = file.path.display().to_string();
        let threads = opts.threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
        let mut builder = Session::builder(env)
            .map_err(|e| anyhow!("ONNX Runtime session options: {e}"))?
            .with_intra_threads(threads)
            .map_err(|e| anyhow!("ONNX Runtime threads: {e}"))?
            .with_optimization_level(match opts.ort_opt.unwrap_or(OrtOpt::All) {
                OrtOpt::Basic => GraphOptimizationLevel::Level1,
                OrtOpt::Extended => GraphOptimizationLevel::Level2,
                OrtOpt::All => GraphOptimizationLevel::All,
            })
            .map_err(|e| anyhow!("ONNX Runtime optimisation level: {e}"))?;
        if opts.device == Device::Cuda {
            // Without error_on_failure ONNX Runtime silently falls back to the CPU.
            builder = builder
                .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
                .map_err(|e| {
                    anyhow!(
                        "--device cuda was asked for but the CUDA execution provider cannot be used: {e}. \
                         Install onnxruntime-gpu (scripts/install-onnxruntime.sh --gpu) on a machine with a CUDA 13 driver, or use --device cpu"
                    )
                })?;
        }
        let session = builder
            .commit_from_memory(&file.bytes)
            .map_err(|e| anyhow!("ONNX Runtime cannot load {path}: {e}"))?;
        let version = lib
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("libonnxruntime.so."))
            .unwrap_or(ORT_VERSION)
            .to_string();
        Ok(OrtEngine {
            session,
            info: EngineInfo { backend: "ort", device: opts.device, version, library: Some(lib.display().to_string()) },
            path,
        })
    }
}

fn shape_i64(s: &[usize]) -> Vec<i64> {
    s.iter().map(|&d| d as i64).collect()
}

impl Engine for OrtEngine {
    fn run(&mut self, inputs: &[Input], output: &str) -> Result<Output> {
        check_inputs(inputs)?;
        let mut values: Vec<(Cow<str>, SessionInputValue)> = Vec::with_capacity(inputs.len());
        for i in inputs {
            let v: SessionInputValue = match i.data {
                InputData::F32(d) => TensorRef::from_array_view((shape_i64(&i.shape), d))
                    .map_err(|e| anyhow!("input {}: {e}", i.name))?
                    .into(),
                InputData::I64(d) => TensorRef::from_array_view((shape_i64(&i.shape), d))
                    .map_err(|e| anyhow!("input {}: {e}", i.name))?
                    .into(),
            };
            values.push((Cow::Borrowed(i.name), v));
        }
        let path = &self.path;
        let outs = self.session.run(values).map_err(|e| anyhow!("ONNX Runtime failed running {path}: {e}"))?;
        let v = outs.get(output).with_context(|| format!("{path}: no output named '{output}'"))?;
        let (shape, data) = v
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow!("{path}: output '{output}' is not a float32 tensor: {e}"))?;
        let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
        if shape.iter().product::<usize>() != data.len() {
            bail!("{path}: output '{output}' shape and data disagree");
        }
        Ok(Output { shape, data: data.to_vec() })
    }

    fn info(&self) -> &EngineInfo {
        &self.info
    }
}
