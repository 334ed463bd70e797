//! Where parameters come from: a `state_dict`-like map (from a `.pth` or safetensors file) or seeded
//! random initialisation. Every lookup states the shape the architecture expects, so a checkpoint of
//! the wrong architecture fails with the tensor's name and both shapes.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// A tensor from a checkpoint: shape and row-major f32 data.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

pub trait Weights {
    /// The tensor `name` with the expected `shape`.
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
}

/// Parameters from a checkpoint, tracking which were used.
pub struct StateDict {
    tensors: BTreeMap<String, NamedTensor>,
    used: BTreeSet<String>,
    origin: String,
}

impl StateDict {
    pub fn new(tensors: BTreeMap<String, NamedTensor>, origin: &str) -> StateDict {
        StateDict { tensors, used: BTreeSet::new(), origin: origin.to_string() }
    }

    /// The shape of a tensor, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.shape.as_slice())
    }

    /// Names present in the checkpoint but never asked for (ignoring BatchNorm's step counters).
    pub fn unused(&self) -> Vec<String> {
        self.tensors.keys().filter(|k| !self.used.contains(*k) && !k.ends_with("num_batches_tracked")).cloned().collect()
    }
}

impl Weights for StateDict {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.tensors.get(name).ok_or_else(|| {
            let near: Vec<&String> = self.tensors.keys().filter(|k| k.ends_with(name.rsplit('.').next().unwrap_or(""))).take(5).collect();
            anyhow!("{}: no tensor named {name} (the architecture needs it; similar names: {near:?})", self.origin)
        })?;
        if t.shape != shape {
            bail!("{}: {name} has shape {:?}, the architecture expects {:?}", self.origin, t.shape, shape);
        }
        if t.data.iter().any(|v| !v.is_finite()) {
            bail!("{}: {name} contains NaN or Inf", self.origin);
        }
        self.used.insert(name.to_string());
        Ok(t.data.clone())
    }
}

/// Seeded random parameters (for fixtures and tests): N(0, 1/fan_in) weights, BatchNorm at identity
/// with small random statistics so a wrong mapping shows up in outputs.
pub struct SeededInit {
    rng: ChaCha8Rng,
}

impl SeededInit {
    pub fn new(seed: u64) -> SeededInit {
        SeededInit { rng: ChaCha8Rng::seed_from_u64(seed) }
    }
}

impl Weights for SeededInit {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let n: usize = shape.iter().product();
        let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
        let mut normal = |s: f32| -> f32 {
            let z: f32 = StandardNormal.sample(&mut self.rng);
            z * s
        };
        Ok(if name.ends_with("running_var") {
            (0..n).map(|_| 1.0 + 0.1 * normal(1.0).abs()).collect()
        } else if name.ends_with("running_mean") || name.ends_with(".bias") {
            (0..n).map(|_| normal(0.05)).collect()
        } else if shape.len() == 1 {
            (0..n).map(|_| 1.0 + normal(0.05)).collect()
        } else {
            let s = (1.0 / fan_in as f32).sqrt();
            (0..n).map(|_| normal(s)).collect()
        })
    }
}
