//! The digit judge's penultimate features: the judge's own ONNX graph with the input of its last
//! linear layer (Gemm, or MatMul with or without a bias Add) exposed as the output, in memory. The
//! bundled LeNet gives 64 (relu(fc2)) per digit: a feature space trained on exactly these images, where
//! Inception's (trained on 299x299 photos) would not fit 28x28 digits. Used by the judge FID
//! (`digit_quality`) and the digit memorisation check (`tasks::integrity`).

use std::path::Path;

use anyhow::{bail, Context, Result};
use image::RgbImage;
use prost::Message;
use tract_onnx::pb;

use crate::onnx::writer::{value_info, Dim, Elem};
use crate::onnx::{ModelFile, ModelLimits};
use crate::runtime::{self, RuntimeOptions};
use crate::tasks::classify::Classifier;

/// The judge, answering with its penultimate features instead of logits.
pub struct DigitFeatures {
    clf: Classifier,
    pub dim: usize,
}

/// Operators that pass the logits through unchanged in what they mean (walked back over).
const PASS_THROUGH: &[&str] = &["Identity", "Softmax", "LogSoftmax", "Flatten", "Reshape", "Squeeze"];

/// The tensor feeding the judge's last linear layer, and its width.
pub fn penultimate(proto: &pb::ModelProto, output: &str) -> Result<(String, usize)> {
    let graph = proto.graph.as_ref().context("the model has no graph")?;
    let producer = |name: &str| graph.node.iter().find(|n| n.output.iter().any(|o| o == name));
    let init_dims = |name: &str| graph.initializer.iter().find(|t| t.name == name).map(|t| t.dims.clone());
    let mut name = output.to_string();
    // Bounded: a graph cannot have more pass-through steps than nodes.
    for _ in 0..=graph.node.len() {
        let Some(node) = producer(&name) else { break };
        match node.op_type.as_str() {
            op if PASS_THROUGH.contains(&op) => name = node.input.first().cloned().unwrap_or_default(),
            "Gemm" => {
                let trans_b = node.attribute.iter().find(|a| a.name == "transB").map(|a| a.i).unwrap_or(0);
                let dims = node.input.get(1).and_then(|w| init_dims(w)).context("the last Gemm's weight is not a stored tensor")?;
                let width = if trans_b != 0 { dims.get(1) } else { dims.first() };
                return Ok((node.input[0].clone(), width.copied().context("the last Gemm's weight is not 2-D")? as usize));
            }
            "MatMul" => {
                let dims = node.input.get(1).and_then(|w| init_dims(w)).context("the last MatMul's weight is not a stored tensor")?;
                return Ok((node.input[0].clone(), *dims.first().context("the last MatMul's weight has no dimensions")? as usize));
            }
            "Add" => {
                // MatMul + Add (bias): follow the side that is not a stored tensor.
                let next = node.input.iter().find(|i| init_dims(i).is_none()).cloned();
                name = next.context("an Add of two stored tensors ends the graph")?;
            }
            other => bail!("the output comes from a {other} node, not a linear layer"),
        }
    }
    bail!("no linear layer found before the output {output}")
}

impl DigitFeatures {
    pub fn open(path: &Path, opts: &RuntimeOptions) -> Result<DigitFeatures> {
        let mut clf = Classifier::open(path, &Default::default(), opts, 256)?;
        let (feature, dim) = penultimate(&clf.file.proto, &clf.contract.output)
            .with_context(|| format!("{}: cannot find the judge's penultimate features for the judge FID", path.display()))?;
        if !(1..=65536).contains(&dim) {
            bail!("{}: the penultimate layer has {dim} features, outside 1..=65536", path.display());
        }
        let mut proto = clf.file.proto.clone();
        let batch = match clf.contract.fixed_batch {
            Some(b) => Dim::Fixed(b),
            None => Dim::Symbol("N"),
        };
        if let Some(g) = proto.graph.as_mut() {
            g.output = vec![value_info(&feature, Elem::F32, &[batch, Dim::Fixed(dim)])];
        }
        let file = ModelFile::from_bytes(path, proto.encode_to_vec(), &ModelLimits::default())?;
        clf.engine = runtime::open(&file, opts)?;
        clf.contract.output = feature;
        clf.classes = dim;
        Ok(DigitFeatures { clf, dim })
    }

    /// Features of each image (28x28), rows of `dim`, in order: (rows, dim).
    pub fn features(&mut self, images: &[RgbImage]) -> Result<(Vec<f32>, usize)> {
        if let Some(img) = images.iter().find(|i| i.dimensions() != (28, 28)) {
            bail!("digit features need 28x28 images, got {}x{}", img.width(), img.height());
        }
        let mut out = Vec::with_capacity(images.len() * self.dim);
        for chunk in images.chunks(256) {
            for row in self.clf.logits(chunk)? {
                out.extend_from_slice(&row);
            }
        }
        if let Some(k) = out.iter().position(|v| !v.is_finite()) {
            bail!("the judge's features are not finite (image {})", k / self.dim);
        }
        Ok((out, self.dim))
    }
}
