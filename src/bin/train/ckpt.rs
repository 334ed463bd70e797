//! Checkpoints: the model's tensors under their state_dict names, optimiser moments, EMA weights
//! (`ema.`) and metadata, in one safetensors file (gradekit::checkpoint::safetensors), written
//! atomically so an interrupted run never leaves a broken checkpoint.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use gradekit::checkpoint::safetensors::{self as st, Checkpoint};
use tch::{Device, Kind, Tensor};

use crate::tch_ops::ParamStore;

pub fn to_vec(t: &Tensor) -> (Vec<usize>, Vec<f32>) {
    let t = t.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
    let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
    let v = Vec::<f32>::try_from(t.flatten(0, -1)).expect("float tensor");
    (shape, v)
}

pub fn from_vec(shape: &[usize], data: &[f32], device: Device) -> Tensor {
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    Tensor::from_slice(data).reshape(dims).to_device(device)
}

/// Writes `tensors` and `meta` to `path`.
pub fn save(path: &Path, tensors: Vec<(String, Tensor)>, meta: &BTreeMap<String, String>) -> Result<()> {
    let rows: Vec<(String, Vec<usize>, Vec<f32>)> = tensors
        .into_iter()
        .map(|(n, t)| {
            let (s, d) = to_vec(&t);
            (n, s, d)
        })
        .collect();
    st::write(path, &rows, meta)
}

/// Reads a checkpoint into device tensors.
pub fn load(path: &Path, device: Device) -> Result<(BTreeMap<String, Tensor>, BTreeMap<String, String>)> {
    let c = Checkpoint::read(path)?;
    let tensors = c.tensors.iter().map(|(k, t)| (k.clone(), from_vec(&t.shape, &t.data, device))).collect();
    Ok((tensors, c.metadata.into_iter().collect()))
}

/// Copies the stored values into an already-built `ParamStore` (every model tensor must be present
/// with the same shape: a checkpoint of another architecture or width is refused by name).
pub fn restore(p: &mut ParamStore, tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    tch::no_grad(|| {
        for (k, w) in p.vars.iter_mut() {
            let Some(src) = tensors.get(k) else {
                bail!("{}: no tensor {k}; was it written by this kind and width?", path.display());
            };
            if src.size() != w.size() {
                bail!("{}: {k} has shape {:?}, the model has {:?} (another --width?)", path.display(), src.size(), w.size());
            }
            w.copy_(src);
        }
        Ok(())
    })
    .with_context(|| format!("resuming from {}", path.display()))
}
