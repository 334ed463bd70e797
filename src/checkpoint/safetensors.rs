//! The trainer's checkpoint format: one safetensors file holding the model's `state_dict` tensors
//! under their PyTorch names, plus training state under prefixes (`optim.m.*`, `optim.v.*`,
//! `ema.*`) and string metadata (kind, width, step, seed, settings). Read here without libtorch, so
//! `grade convert` and `train export` share it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};

use crate::nn::weights::{NamedTensor, StateDict};

/// Largest checkpoint read (the seed's biggest model is ~20 MB; with optimiser state and EMA, ~80 MB).
pub const MAX_BYTES: u64 = 2 << 30;

pub struct Checkpoint {
    pub tensors: BTreeMap<String, NamedTensor>,
    pub metadata: HashMap<String, String>,
}

impl Checkpoint {
    pub fn read(path: &Path) -> Result<Checkpoint> {
        let len = std::fs::metadata(path).with_context(|| format!("{}: cannot read the checkpoint", path.display()))?.len();
        if len > MAX_BYTES {
            bail!("{}: {len} bytes is over the {MAX_BYTES}-byte checkpoint limit", path.display());
        }
        let bytes = crate::safe_fs::read_regular(path, MAX_BYTES, "checkpoint")?;
        Self::from_bytes(&bytes).with_context(|| format!("{}: not a readable safetensors checkpoint", path.display()))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Checkpoint> {
        let (_, meta) = SafeTensors::read_metadata(bytes)?;
        let st = SafeTensors::deserialize(bytes)?;
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            if view.dtype() != Dtype::F32 {
                bail!("tensor {name} is {:?}; only float32 checkpoints are read", view.dtype());
            }
            let data: Vec<f32> = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            tensors.insert(name.to_string(), NamedTensor { shape: view.shape().to_vec(), data });
        }
        Ok(Checkpoint { tensors, metadata: meta.metadata().clone().unwrap_or_default() })
    }

    /// The tensors under `prefix` (stripped), e.g. `generator.` or `ema.`, as a parameter source.
    pub fn state_dict(&self, prefix: &str, origin: &str) -> StateDict {
        let t = self
            .tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|s| (s.to_string(), v.clone())))
            .filter(|(k, _)| !k.starts_with("optim.") && (!prefix.is_empty() || !k.starts_with("ema.")))
            .collect();
        StateDict::new(t, origin)
    }

    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }
}

/// Writes tensors (name, shape, data) and metadata atomically.
pub fn write(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], metadata: &BTreeMap<String, String>) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, _, d)| d.iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<_>>()?;
    let meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    let out = safetensors::serialize(views, Some(meta))?;
    crate::report::write_atomic(path, &out).with_context(|| format!("writing checkpoint {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_prefixes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.safetensors");
        let t = vec![
            ("generator.net.0.weight".to_string(), vec![2, 3], vec![1., 2., 3., 4., 5., 6.]),
            ("optim.m.generator.net.0.weight".to_string(), vec![2, 3], vec![0.; 6]),
            ("ema.net.0.weight".to_string(), vec![1], vec![7.]),
        ];
        let meta = BTreeMap::from([("kind".to_string(), "dcgan".to_string())]);
        write(&p, &t, &meta).unwrap();
        let c = Checkpoint::read(&p).unwrap();
        assert_eq!(c.meta("kind"), Some("dcgan"));
        let mut g = c.state_dict("generator.", "c");
        use crate::nn::weights::Weights;
        assert_eq!(g.get("net.0.weight", &[2, 3]).unwrap(), vec![1., 2., 3., 4., 5., 6.]);
        assert!(g.get("net.0.weight", &[3, 2]).is_err());
        let plain = c.state_dict("", "c");
        assert!(plain.shape("ema.net.0.weight").is_none() && plain.shape("optim.m.generator.net.0.weight").is_none());
        assert_eq!(c.state_dict("ema.", "c").shape("net.0.weight"), Some(&[1usize][..]));
        assert!(Checkpoint::from_bytes(b"not a checkpoint").is_err());
    }
}
