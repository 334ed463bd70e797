//! Reading checkpoints without libtorch: PyTorch's `torch.save` files (`pth`, through a restricted
//! pickle interpreter in `pickle`), so students' and the course's `.pth` weights become ONNX models.

pub mod pickle;
pub mod pth;
pub mod safetensors;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;

use crate::nn::weights::{NamedTensor, StateDict};

/// Loads a `.pth` state_dict (under `key` when given, else auto-detected), stripping a DataParallel
/// `module.` prefix, as the parameter source of a model definition.
pub fn state_dict_from_pth(path: &Path, key: Option<&str>) -> Result<StateDict> {
    let loaded = pth::load(path, &pth::LoadOptions { key, strip_wrapper_prefix: true, ..Default::default() })?;
    let tensors: BTreeMap<String, NamedTensor> =
        loaded.tensors.into_iter().map(|(k, t)| (k, NamedTensor { shape: t.shape, data: t.data })).collect();
    Ok(StateDict::new(tensors, &path.display().to_string()))
}
