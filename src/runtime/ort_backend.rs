//! The ONNX Runtime backend, loaded at run time (`load-dynamic`) from the library that
//! `scripts/install-onnxruntime.sh` puts in `.mldeps/`, or from `ORT_DYLIB_PATH`.
//! ONNX Runtime panics when its library is missing, so the file is located and checked first.
//!
//! On `--device cuda` the CUDA provider, the driver and the CUDA/cuDNN libraries are checked before the
//! session is built ([`cuda_preflight`]), so that what is missing is named with what installs it; the
//! provider is then registered with `error_on_failure` (ONNX Runtime would otherwise fall back to the
//! CPU silently). CUDA runs go through an IO binding: the inputs are written into pinned host buffers
//! allocated once per input shape and the output lands in a pre-allocated pinned buffer, so no call
//! allocates host tensors. The sampler's update runs on the CPU in Rust, so the noisy batch still crosses
//! the bus once each way per call (1.9 MB each way for 200 rows of 3x28x28, small next to the UNet).

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{IoBinding, Session, SessionInputValue};
use ort::value::{Tensor, TensorRef};

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
    std::fs::read_dir(&capi)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so")))
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

/// The CUDA provider library that must sit next to `libonnxruntime.so` (the `onnxruntime-gpu` wheel).
pub const CUDA_PROVIDER: &str = "libonnxruntime_providers_cuda.so";

/// How to get ONNX Runtime's CUDA build.
pub const ORT_GPU_INSTALL: &str =
    "`bash scripts/install-onnxruntime.sh --gpu` (pip install 'onnxruntime-gpu[cuda,cudnn]==1.31.1' into .mldeps/onnxruntime)";

/// Checks, before any session is built, what ONNX Runtime's CUDA provider needs: the provider library
/// next to `lib`, the NVIDIA driver, and the CUDA 13 / cuDNN 9 libraries (found on the loader's path,
/// in `GRADEKIT_CUDA_LIBS`, or in the pip install's `nvidia/*/lib` folders, and then loaded).
pub fn cuda_preflight(lib: &Path) -> Result<()> {
    let dir = lib.parent().unwrap_or(Path::new("."));
    for needed in [CUDA_PROVIDER, "libonnxruntime_providers_shared.so"] {
        if !dir.join(needed).is_file() {
            bail!(
                "--device cuda: {} is ONNX Runtime's CPU build ({needed} is not next to it). Install the CUDA build with {ORT_GPU_INSTALL}, \
                 or point ORT_DYLIB_PATH at the libonnxruntime.so.{ORT_VERSION} of an onnxruntime-gpu=={ORT_VERSION} install; \
                 or use --backend tract with a grade built with `--features tract-cuda`; or --device cpu",
                lib.display()
            );
        }
    }
    if !super::cuda_libs::driver_present() {
        bail!(
            "--device cuda: the NVIDIA driver's {} cannot be loaded: this machine has no usable NVIDIA GPU driver \
             (ONNX Runtime {ORT_VERSION}'s CUDA provider needs a CUDA 13 driver, R580 or newer; in a container, run it with the GPU passed through). Use --device cpu",
            super::cuda_libs::DRIVER
        );
    }
    let extra = super::cuda_libs::extra_dirs(Some(lib));
    super::cuda_libs::check(super::cuda_libs::ORT_CUDA_LIBS, &extra).map_err(|e| {
        anyhow!("--device cuda: ONNX Runtime's CUDA provider needs CUDA 13 and cuDNN 9 libraries: {e}; {ORT_GPU_INSTALL} installs them all")
    })?;
    Ok(())
}

/// Whether CUDA runs may use TensorFloat-32 in convolutions and matrix products (`GRADEKIT_CUDA_TF32=1`).
/// Off by default: the graders compare against the CPU backends within float32 tolerances.
pub fn tf32_allowed() -> bool {
    std::env::var("GRADEKIT_CUDA_TF32").is_ok_and(|v| v == "1")
}

/// `GRADEKIT_ORT_IO_BINDING=1/0` forces the IO-binding path on or off (default: on for CUDA, off on
/// the CPU, where ONNX Runtime reads the caller's buffers in place anyway).
fn io_binding_wanted(device: Device) -> bool {
    match std::env::var("GRADEKIT_ORT_IO_BINDING").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => device == Device::Cuda,
    }
}

enum HostTensor {
    F32(Tensor<f32>),
    I64(Tensor<i64>),
}

/// An IO binding for one set of input shapes: host buffers allocated once, re-filled each call.
struct Bound {
    key: Vec<(String, Vec<usize>)>,
    output: String,
    out_shape: Vec<usize>,
    inputs: Vec<HostTensor>,
    binding: IoBinding,
}

// SAFETY: the binding and the tensors are plain ONNX Runtime C objects with no thread affinity; an
// OrtEngine owns them exclusively and is used by one thread at a time (Engine is Send, not Sync), as
// the Session they belong to is.
unsafe impl Send for Bound {}

pub struct OrtEngine {
    session: Session,
    info: EngineInfo,
    path: String,
    /// Output shapes seen per input shapes: a binding is made once the output shape is known.
    out_shapes: Vec<(Vec<(String, Vec<usize>)>, String, Vec<usize>)>,
    /// Bindings in use, most recent last (a grader alternates between a few call layouts).
    bound: Vec<Bound>,
    use_binding: bool,
    device: Device,
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
            cuda_preflight(lib)?;
            // Without error_on_failure ONNX Runtime silently falls back to the CPU.
            let cuda = ort::ep::CUDA::default().with_tf32(tf32_allowed());
            builder = builder.with_execution_providers([cuda.build().error_on_failure()]).map_err(|e| {
                anyhow!(
                    "--device cuda was asked for but the CUDA execution provider cannot be used: {}. \
                     Install the CUDA build with {ORT_GPU_INSTALL} on a machine with a CUDA 13 driver (R580+), or use --device cpu",
                    e.to_string().trim().trim_end_matches('.')
                )
            })?;
        }
        let _loading = crate::memory::activity(format!("building the ONNX Runtime session for {path}"));
        let session = builder.commit_from_memory(&file.runtime_bytes()).map_err(|e| anyhow!("ONNX Runtime cannot load {path}: {e}"))?;
        let version =
            lib.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("libonnxruntime.so.")).unwrap_or(ORT_VERSION).to_string();
        Ok(OrtEngine {
            session,
            info: EngineInfo { backend: "ort", device: opts.device, version, library: Some(lib.display().to_string()) },
            path,
            out_shapes: vec![],
            bound: vec![],
            use_binding: io_binding_wanted(opts.device),
            device: opts.device,
        })
    }

    /// Whether calls go through an IO binding (see the module documentation).
    pub fn uses_io_binding(&self) -> bool {
        self.use_binding
    }

    /// Turns the IO-binding path on or off (tests; `GRADEKIT_ORT_IO_BINDING` for runs).
    pub fn set_io_binding(&mut self, on: bool) {
        self.use_binding = on;
        if !on {
            self.bound.clear();
        }
    }

    /// How many IO bindings are held (one per call layout seen at least twice, at most 4).
    pub fn bindings(&self) -> usize {
        self.bound.len()
    }

    fn allocator(&self, kind: MemoryType) -> Result<Allocator> {
        Ok(match self.device {
            Device::Cpu => Allocator::default(),
            Device::Cuda => Allocator::new(
                &self.session,
                MemoryInfo::new(AllocationDevice::CUDA_PINNED, 0, AllocatorType::Device, kind)
                    .map_err(|e| anyhow!("ONNX Runtime pinned memory: {e}"))?,
            )
            .map_err(|e| anyhow!("ONNX Runtime pinned memory allocator: {e}"))?,
        })
    }

    fn make_binding(&self, key: &[(String, Vec<usize>)], inputs: &[Input], output: &str, out_shape: &[usize]) -> Result<Bound> {
        let err = |e: ort::Error| anyhow!("ONNX Runtime IO binding for {}: {e}", self.path);
        let in_alloc = self.allocator(MemoryType::CPUInput)?;
        let out_alloc = self.allocator(MemoryType::CPUOutput)?;
        let mut binding = self.session.create_binding().map_err(err)?;
        let mut host = vec![];
        for i in inputs {
            host.push(match i.data {
                InputData::F32(_) => HostTensor::F32(Tensor::<f32>::new(&in_alloc, i.shape.clone()).map_err(err)?),
                InputData::I64(_) => HostTensor::I64(Tensor::<i64>::new(&in_alloc, i.shape.clone()).map_err(err)?),
            });
        }
        binding.bind_output(output, Tensor::<f32>::new(&out_alloc, out_shape.to_vec()).map_err(err)?).map_err(err)?;
        Ok(Bound { key: key.to_vec(), output: output.to_string(), out_shape: out_shape.to_vec(), inputs: host, binding })
    }

    fn run_bound(&mut self, inputs: &[Input]) -> Result<Output> {
        let path = &self.path;
        let bound = self.bound.last_mut().expect("a binding was made");
        for (i, t) in inputs.iter().zip(bound.inputs.iter_mut()) {
            // Binding copies the buffer's current content (to the device on CUDA), so fill, then bind.
            match (&i.data, t) {
                (InputData::F32(d), HostTensor::F32(t)) => {
                    t.extract_tensor_mut().1.copy_from_slice(d);
                    bound.binding.bind_input(i.name, &*t)
                }
                (InputData::I64(d), HostTensor::I64(t)) => {
                    t.extract_tensor_mut().1.copy_from_slice(d);
                    bound.binding.bind_input(i.name, &*t)
                }
                _ => unreachable!("the binding key includes the input types"),
            }
            .map_err(|e| anyhow!("ONNX Runtime IO binding, input {}: {e}", i.name))?;
        }
        let output = bound.output.clone();
        let outs = self.session.run_binding(&bound.binding).map_err(|e| anyhow!("ONNX Runtime failed running {path}: {e}"))?;
        let v = outs.get(&output).with_context(|| format!("{path}: no output named '{output}'"))?;
        let (shape, data) = v.try_extract_tensor::<f32>().map_err(|e| anyhow!("{path}: output '{output}' is not a float32 tensor: {e}"))?;
        let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
        if shape != bound.out_shape || shape.iter().product::<usize>() != data.len() {
            bail!("{path}: output '{output}' has shape {shape:?}, the binding expected {:?}", bound.out_shape);
        }
        Ok(Output { shape, data: data.to_vec() })
    }

    fn run_plain(&mut self, inputs: &[Input], output: &str) -> Result<Output> {
        let mut values: Vec<(Cow<str>, SessionInputValue)> = Vec::with_capacity(inputs.len());
        for i in inputs {
            let v: SessionInputValue = match i.data {
                InputData::F32(d) => {
                    TensorRef::from_array_view((shape_i64(&i.shape), d)).map_err(|e| anyhow!("input {}: {e}", i.name))?.into()
                }
                InputData::I64(d) => {
                    TensorRef::from_array_view((shape_i64(&i.shape), d)).map_err(|e| anyhow!("input {}: {e}", i.name))?.into()
                }
            };
            values.push((Cow::Borrowed(i.name), v));
        }
        let path = &self.path;
        let outs = self.session.run(values).map_err(|e| anyhow!("ONNX Runtime failed running {path}: {e}"))?;
        let v = outs.get(output).with_context(|| format!("{path}: no output named '{output}'"))?;
        let (shape, data) = v.try_extract_tensor::<f32>().map_err(|e| anyhow!("{path}: output '{output}' is not a float32 tensor: {e}"))?;
        let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
        if shape.iter().product::<usize>() != data.len() {
            bail!("{path}: output '{output}' shape and data disagree");
        }
        Ok(Output { shape, data: data.to_vec() })
    }
}

fn shape_i64(s: &[usize]) -> Vec<i64> {
    s.iter().map(|&d| d as i64).collect()
}

impl Engine for OrtEngine {
    fn run(&mut self, inputs: &[Input], output: &str) -> Result<Output> {
        check_inputs(inputs)?;
        if !self.use_binding {
            return self.run_plain(inputs, output);
        }
        // The key holds names, types and shapes: a binding is reused only for the very same call layout.
        let key: Vec<(String, Vec<usize>)> = inputs
            .iter()
            .map(|i| {
                let ty = match i.data {
                    InputData::F32(_) => "f32",
                    InputData::I64(_) => "i64",
                };
                (format!("{}:{ty}", i.name), i.shape.clone())
            })
            .collect();
        if let Some(ix) = self.bound.iter().position(|b| b.key == key && b.output == output) {
            let b = self.bound.remove(ix);
            self.bound.push(b);
            return self.run_bound(inputs);
        }
        let known = self.out_shapes.iter().find(|(k, o, _)| *k == key && o == output).map(|(_, _, s)| s.clone());
        match known {
            Some(out_shape) => {
                let b = self.make_binding(&key, inputs, output, &out_shape)?;
                if self.bound.len() >= 4 {
                    self.bound.remove(0);
                }
                self.bound.push(b);
                self.run_bound(inputs)
            }
            None => {
                // The first call of a layout learns the output shape the binding needs.
                let out = self.run_plain(inputs, output)?;
                if self.out_shapes.len() > 8 {
                    self.out_shapes.clear();
                }
                self.out_shapes.push((key, output.to_string(), out.shape.clone()));
                Ok(out)
            }
        }
    }

    fn info(&self) -> &EngineInfo {
        &self.info
    }
}
