//! The tract backend: pure Rust, nothing to install. tract optimises a model for concrete input
//! shapes, so one plan is kept per distinct set of input shapes (in practice: the full batch and the
//! last, shorter one). tract runs a plan on one core; a batch is split into one slice per core, run
//! side by side (graders already batch arbitrarily, so items never depend on their batch mates).
//!
//! On `--device cuda` (cargo feature `tract-cuda`) the plans are prepared by tract's CUDA runtime
//! (`tract-cuda`: cuDNN convolutions, cuBLAS matrix products, NVRTC-compiled kernels, weights uploaded
//! once per plan); a batch then runs whole, on one stream.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use tract_onnx::prelude::*;

use super::{check_inputs, Device, Engine, EngineInfo, Input, InputData, Output};
use crate::onnx::ModelFile;

type Plan = Arc<dyn Runnable>;

thread_local! {
    static QUIET_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic inside tract into `None` without printing the panic message: a hostile
/// model is reported as a clean error, not as a scary backtrace.
fn catch_quietly<R>(f: impl FnOnce() -> R) -> Option<R> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(|q| q.get()) {
                previous(info);
            }
        }));
    });
    QUIET_PANICS.with(|q| q.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok();
    QUIET_PANICS.with(|q| q.set(false));
    r
}

/// Like `catch_quietly`, keeping the panic's message (tract-cuda reports a failed CUDA context
/// creation or kernel compilation by panicking with the reason).
fn catch_with_message<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    let mut msg = String::new();
    let r = catch_quietly(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    match r {
        Some(Ok(v)) => return Ok(v),
        Some(Err(payload)) => {
            if let Some(s) = payload.downcast_ref::<&str>() {
                msg = s.to_string();
            } else if let Some(s) = payload.downcast_ref::<String>() {
                msg = s.clone();
            }
        }
        None => {}
    }
    Err(if msg.is_empty() { "panicked".into() } else { msg })
}

pub struct TractEngine {
    model: InferenceModel,
    input_names: Vec<String>,
    output_names: Vec<String>,
    plans: HashMap<Vec<Vec<usize>>, Plan>,
    info: EngineInfo,
    path: String,
    threads: usize,
    device: Device,
}

/// Operators tract parsed but cannot run, as `name (Op)`.
pub fn unsupported_ops(model: &InferenceModel) -> Vec<String> {
    model.nodes().iter().filter(|n| n.op.name().contains("Unimplemented")).map(|n| format!("{} ({})", n.name, n.op.name())).collect()
}

impl TractEngine {
    /// `threads`: how many batch slices run at once (`None`: all cores). CPU.
    pub fn open(file: &ModelFile, threads: Option<usize>) -> Result<Self> {
        Self::open_on(file, threads, Device::Cpu)
    }

    /// `open` on `device`: CUDA needs a build with the cargo feature `tract-cuda`, an NVIDIA driver for
    /// CUDA 13 and the CUDA runtime, NVRTC, cuBLAS and cuDNN 9 libraries (checked here, before the model
    /// is read, so that what is missing is named).
    pub fn open_on(file: &ModelFile, threads: Option<usize>, device: Device) -> Result<Self> {
        if device == Device::Cuda {
            cuda::ensure_available()?;
        }
        let path = file.path.display().to_string();
        let _loading = crate::memory::activity(format!("loading {path} into tract"));
        // A hostile file must not take the grader down: a panic inside tract becomes an error.
        let model = catch_quietly(|| tract_onnx::onnx().model_for_proto_model(&file.proto))
            .ok_or_else(|| anyhow!("tract crashed while loading {path}; the model is malformed (try --backend ort for its diagnosis)"))?
            .map_err(|e| anyhow!("tract cannot load {path}: {e:#}"))?;
        let bad = unsupported_ops(&model);
        if !bad.is_empty() {
            bail!(
                "tract cannot run {path}: unsupported operators {}. Try --backend ort, or export with opset 17 and basic ops",
                bad.join(", ")
            );
        }
        let names = |outlets: &[OutletId]| -> Vec<String> { outlets.iter().map(|o| model.node(o.node).name.clone()).collect() };
        let input_names = names(model.input_outlets()?);
        let output_names: Vec<String> = model
            .output_outlets()?
            .iter()
            .map(|o| model.outlet_label(*o).map(str::to_string).unwrap_or_else(|| model.node(o.node).name.clone()))
            .collect();
        Ok(TractEngine {
            model,
            input_names,
            output_names,
            plans: HashMap::new(),
            info: EngineInfo {
                backend: "tract",
                device,
                version: env!("GRADEKIT_TRACT_VERSION").into(),
                library: (device == Device::Cuda).then(|| format!("tract-cuda {}", env!("GRADEKIT_TRACT_VERSION"))),
            },
            path,
            // On CUDA a batch runs whole: the GPU is the parallelism.
            threads: if device == Device::Cuda {
                1
            } else {
                threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).max(1)
            },
            device,
        })
    }

    fn plan(&mut self, shapes: Vec<Vec<usize>>, inputs: &[Input]) -> Result<Plan> {
        if let Some(p) = self.plans.get(&shapes) {
            return Ok(p.clone());
        }
        let _loading = crate::memory::activity(format!("preparing {} (constant folding) for input shapes {shapes:?}", self.path));
        let mut m = self.model.clone();
        for (ix, name) in self.input_names.iter().enumerate() {
            let i = inputs.iter().find(|i| i.name == name).unwrap();
            let dt = match i.data {
                InputData::F32(_) => f32::datum_type(),
                InputData::I64(_) => i64::datum_type(),
            };
            m.set_input_fact(ix, InferenceFact::dt_shape(dt, shapes[ix].clone()))?;
        }
        let plan: Plan = match self.device {
            Device::Cpu => {
                let p = catch_with_message(|| m.into_optimized().and_then(|m| m.into_runnable()))
                    .map_err(|why| anyhow!("tract crashed preparing {} for input shapes {shapes:?} ({why}); the model is malformed or needs more memory than it may use", self.path))?
                    .map_err(|e| anyhow!("tract cannot prepare {} for input shapes {shapes:?}: {e:#}", self.path))?;
                Arc::new(p)
            }
            Device::Cuda => {
                cuda::prepare(m).map_err(|e| anyhow!("tract-cuda cannot prepare {} for input shapes {shapes:?}: {e:#}", self.path))?
            }
        };
        // Keep the cache small: a grader uses two or three shapes; anything else is a caller bug.
        if self.plans.len() > 8 {
            self.plans.clear();
        }
        self.plans.insert(shapes, plan.clone());
        Ok(plan)
    }
}

impl Engine for TractEngine {
    fn run(&mut self, inputs: &[Input], output: &str) -> Result<Output> {
        check_inputs(inputs)?;
        for name in &self.input_names {
            if !inputs.iter().any(|i| i.name == name) {
                bail!("{}: input '{name}' was not supplied", self.path);
            }
        }
        let out_ix = self
            .output_names
            .iter()
            .position(|n| n == output)
            .ok_or_else(|| anyhow!("{}: no output named '{output}' (outputs: {:?})", self.path, self.output_names))?;
        let ordered: Vec<&Input> = self.input_names.iter().map(|n| inputs.iter().find(|i| i.name == n).unwrap()).collect();
        // Split along the batch axis when every input has the same leading dimension.
        let n = ordered.first().and_then(|i| i.shape.first().copied()).unwrap_or(0);
        let split = self.threads > 1 && n >= 2 && ordered.iter().all(|i| i.shape.first() == Some(&n));
        let slices = if split { self.threads.min(n) } else { 1 };
        let per = n.div_ceil(slices).max(1);
        let ranges: Vec<(usize, usize)> =
            if slices > 1 { (0..n).step_by(per).map(|a| (a, (a + per).min(n))).collect() } else { vec![(0, n)] };
        let mut jobs = vec![];
        for &(a, b) in &ranges {
            let shapes: Vec<Vec<usize>> =
                ordered.iter().map(|i| if slices > 1 { [vec![b - a], i.shape[1..].to_vec()].concat() } else { i.shape.clone() }).collect();
            let plan = self.plan(shapes.clone(), inputs)?;
            // Plain tensors cross threads; tract's values (reference-counted) are made where they run.
            let mut values: Vec<Tensor> = vec![];
            for (i, shape) in ordered.iter().zip(&shapes) {
                let per_item: usize = if slices > 1 { i.shape[1..].iter().product() } else { 0 };
                let t = match i.data {
                    InputData::F32(d) => Tensor::from_shape(shape, if slices > 1 { &d[a * per_item..b * per_item] } else { d })?,
                    InputData::I64(d) => Tensor::from_shape(shape, if slices > 1 { &d[a * per_item..b * per_item] } else { d })?,
                };
                values.push(t);
            }
            jobs.push((plan, values));
        }
        let path = &self.path;
        let run_one = |(plan, values): (Plan, Vec<Tensor>)| -> Result<(Vec<usize>, Vec<f32>)> {
            let values: TVec<TValue> = values.into_iter().map(TValue::from).collect();
            let outs = catch_quietly(|| plan.run(values))
                .ok_or_else(|| anyhow!("tract crashed running {path}; the model is malformed"))?
                .map_err(|e| anyhow!("tract failed running {path}: {e:#}"))?;
            let t = outs.get(out_ix).context("tract returned fewer outputs than the model declares")?;
            let t = t.cast_to::<f32>().map_err(|e| anyhow!("{path}: output '{output}' is not numeric: {e}"))?;
            Ok((t.shape().to_vec(), t.to_plain_array_view::<f32>()?.iter().copied().collect()))
        };
        let results: Vec<Result<(Vec<usize>, Vec<f32>)>> = if jobs.len() == 1 {
            jobs.into_iter().map(run_one).collect()
        } else {
            std::thread::scope(|s| {
                let handles: Vec<_> = jobs.into_iter().map(|j| s.spawn(move || run_one(j))).collect();
                handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("tract thread failed on {path}")))).collect()
            })
        };
        let mut shape: Vec<usize> = vec![];
        let mut data = vec![];
        for (r, &(a, b)) in results.into_iter().zip(&ranges) {
            let (s, d) = r?;
            if slices > 1 {
                // Each slice must give one output row per input row, or the split is not valid.
                if s.first() != Some(&(b - a)) {
                    bail!("{path}: output '{output}' has shape {s:?} for a batch of {}; its first dimension must be the batch", b - a);
                }
                if shape.is_empty() {
                    shape = s.clone();
                    shape[0] = 0;
                }
                shape[0] += b - a;
            } else {
                shape = s;
            }
            data.extend(d);
        }
        Ok(Output { shape, data })
    }

    fn info(&self) -> &EngineInfo {
        &self.info
    }
}

/// tract's CUDA runtime (cargo feature `tract-cuda`).
#[cfg(feature = "tract-cuda")]
mod cuda {
    // Linked for its runtime registration (`inventory`): without a use of the crate, the linker may drop it
    // and `runtime_for_name("cuda")` would find nothing.
    extern crate tract_cuda;

    use super::*;
    use crate::runtime::cuda_libs;

    /// The NVIDIA driver and the CUDA libraries (our own probe names them with their pip packages, and loads
    /// those found in `GRADEKIT_CUDA_LIBS` or a pip install's `nvidia/*/lib`), then tract-cuda's own check
    /// (driver API version, each library cudarc opens).
    pub fn ensure_available() -> Result<()> {
        if !cuda_libs::driver_present() {
            bail!(
                "--device cuda: the NVIDIA driver's {} cannot be loaded: this machine has no usable NVIDIA GPU driver \
                 (tract-cuda needs a CUDA 13 driver, R580 or newer; in a container, run it with the GPU passed through). Use --device cpu",
                cuda_libs::DRIVER
            );
        }
        let extra = cuda_libs::extra_dirs(crate::runtime::ort_backend::find_library().as_deref());
        cuda_libs::check(cuda_libs::TRACT_CUDA_LIBS, &extra).map_err(|e| {
            anyhow!(
                "--device cuda: tract-cuda needs CUDA 13 and cuDNN 9 libraries: {e}; \
                 `pip install nvidia-cuda-runtime nvidia-cuda-nvrtc nvidia-cublas nvidia-cudnn-cu13` (a CUDA 13 PyTorch wheel brings them too)"
            )
        })?;
        runtime().map(|_| ())
    }

    fn runtime() -> Result<&'static dyn Runtime> {
        let _ = tract_cuda::utils::ensure_cuda_runtime_dependencies; // keeps the crate linked
        match catch_with_message(|| tract_onnx::tract_core::runtime::runtime_for_name("cuda")) {
            Ok(Ok(Some(rt))) => Ok(rt),
            Ok(Ok(None)) => bail!("tract-cuda's runtime is not registered in this build (a linking problem: please report it)"),
            Ok(Err(e)) => bail!("--device cuda: tract-cuda cannot use this machine's CUDA: {e:#}"),
            Err(panic) => bail!("--device cuda: tract-cuda failed while checking CUDA: {panic}"),
        }
    }

    /// Types and declutters the model, then lets tract-cuda translate and plan it (weights go to the GPU here).
    pub fn prepare(m: InferenceModel) -> Result<Plan> {
        let rt = runtime()?;
        let typed = catch_quietly(|| m.into_typed().and_then(|t| t.into_decluttered()))
            .ok_or_else(|| anyhow!("tract crashed typing the model; it is malformed"))??;
        match catch_with_message(|| rt.prepare(typed)) {
            Ok(Ok(r)) => Ok(Arc::from(r)),
            Ok(Err(e)) => Err(e),
            Err(panic) => bail!("tract-cuda failed (CUDA context, kernel compilation or upload): {panic}"),
        }
    }
}

#[cfg(not(feature = "tract-cuda"))]
mod cuda {
    use super::*;

    pub fn ensure_available() -> Result<()> {
        bail!(
            "--backend tract --device cuda: this grade was built without tract's CUDA backend; {}. Or use --backend ort with ONNX Runtime's CUDA build, or --device cpu",
            crate::runtime::TRACT_CUDA_BUILD_HINT
        )
    }

    pub fn prepare(_: InferenceModel) -> Result<Plan> {
        ensure_available().map(|_| unreachable!())
    }
}
