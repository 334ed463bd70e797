//! The noise model a `grade ddpm` run samples with: an ONNX model behind the noise contract, its
//! schedule from the model's metadata, called in row-capped batches and counting its evaluations.

use std::path::Path;

use anyhow::{anyhow, Context, Result};

use crate::diffusion::{NoiseModel, Schedule};
use crate::onnx::{Contract, ModelFile, ModelKind, ModelLimits};
use crate::runtime::{self, Engine, Input};
use crate::tasks::RunOptions;

/// A noise model behind the contract, counting evaluations.
pub struct NoiseEngine {
    engine: Box<dyn Engine>,
    contract: Contract,
    name: String,
    pub evals: u64,
    /// Most rows sent to the model in one call (a sampling batch with guidance is split into calls of
    /// this size): the seed UNet's 784-token attention makes large calls memory-bound.
    pub call_rows: usize,
}

impl NoiseEngine {
    pub fn open(path: &Path, opts: &RunOptions) -> Result<(NoiseEngine, Schedule)> {
        let file = ModelFile::open(path, &ModelLimits::default())?;
        let contract = Contract::resolve(&file, ModelKind::Noise, &opts.meta);
        contract.ensure_ok(&file)?;
        let schedule = Schedule::new(
            contract.meta("schedule")?,
            contract.meta_f64("beta_start")?,
            contract.meta_f64("beta_end")?,
            contract.meta_i64("timesteps")?.try_into().map_err(|_| anyhow!("metadata timesteps must be positive"))?,
        )
        .with_context(|| format!("noise schedule of {}", path.display()))?;
        let engine = runtime::open(&file, &opts.runtime)?;
        Ok((NoiseEngine { engine, contract, name: path.display().to_string(), evals: 0, call_rows: usize::MAX }, schedule))
    }

    pub fn engine_info(&self) -> &runtime::EngineInfo {
        self.engine.info()
    }

    pub fn contract(&self) -> &Contract {
        &self.contract
    }
}

impl NoiseModel for NoiseEngine {
    fn predict(&mut self, x: &[f32], shape: [usize; 4], t: &[i64], labels: &[i64]) -> Result<Vec<f32>> {
        let [n, c, h, w] = shape;
        let chw = c * h * w;
        let step = self.contract.fixed_batch.unwrap_or(n.min(self.call_rows)).max(1);
        let mut out = Vec::with_capacity(n * chw);
        let names = &self.contract.inputs;
        for start in (0..n).step_by(step) {
            let end = (start + step).min(n);
            // A model with a fixed batch gets padded calls; padding rows are dropped.
            let b = self.contract.fixed_batch.unwrap_or(end - start);
            let mut xb = x[start * chw..end * chw].to_vec();
            xb.resize(b * chw, 0.0);
            let mut tb = t[start..end].to_vec();
            tb.resize(b, t[start]);
            let mut lb = labels[start..end].to_vec();
            lb.resize(b, labels[start]);
            let res = self.engine.run(
                &[Input::f32(&names[0], &[b, c, h, w], &xb), Input::i64(&names[1], &[b], &tb), Input::i64(&names[2], &[b], &lb)],
                &self.contract.output,
            )?;
            runtime::expect_shape(&res, &[b, c, h, w], &self.name)?;
            out.extend_from_slice(&res.data[..(end - start) * chw]);
        }
        self.evals += n as u64;
        Ok(out)
    }
}
