//! Features of 28x28 digits from a digit classifier's penultimate layer (the bundled judge's 64-wide
//! `relu(fc2)`): the classifier's ONNX graph is cut before its last linear layer, in memory, so any
//! judge of the usual shape (... -> Gemm/MatMul [-> Add] [-> (Log)Softmax] [-> Identity] -> logits)
//! gives a feature extractor without a second model file. Used by the digit memorisation check.

use std::path::Path;

use anyhow::{bail, Context, Result};
use image::RgbImage;
use prost::Message;
use tract_onnx::pb;

use crate::onnx::{Contract, ModelFile, ModelKind, ModelLimits};
use crate::runtime::{self, Engine, Input, RuntimeOptions};

/// Cuts `model` before its last linear layer: the graph's only output becomes `features`, the input
/// of that layer; nodes no longer needed are dropped.
pub fn truncate_to_penultimate(model: &pb::ModelProto) -> Result<pb::ModelProto> {
    let mut m = model.clone();
    let g = m.graph.as_mut().context("the model has no graph")?;
    let out = g.output.first().context("the model has no output")?.name.clone();
    let producer = |name: &str| g.node.iter().position(|n| n.output.iter().any(|o| o == name));
    let mut value = out.clone();
    let feature = loop {
        let Some(i) = producer(&value) else { bail!("nothing in the graph produces {value}") };
        let n = &g.node[i];
        match n.op_type.as_str() {
            "Identity" | "LogSoftmax" | "Softmax" => value = n.input[0].clone(),
            "Add" => {
                // MatMul + Add (bias): follow the operand a node produces.
                value = n.input.iter().find(|x| producer(x).is_some()).cloned().context("an Add with no computed input")?;
            }
            "Gemm" | "MatMul" => break n.input[0].clone(),
            other => bail!("the layer before the output is {other}, not a linear layer (Gemm/MatMul): no penultimate features"),
        }
    };
    // Keep only what `feature` needs.
    let mut needed: std::collections::HashSet<String> = [feature.clone()].into();
    let mut keep = vec![false; g.node.len()];
    for (i, n) in g.node.iter().enumerate().rev() {
        if n.output.iter().any(|o| needed.contains(o)) {
            keep[i] = true;
            needed.extend(n.input.iter().cloned());
        }
    }
    let nodes = std::mem::take(&mut g.node);
    g.node = nodes.into_iter().zip(keep).filter_map(|(n, k)| k.then_some(n)).collect();
    g.initializer.retain(|t| needed.contains(&t.name));
    let mut info = g.output[0].clone();
    info.name = "features".into();
    if let Some(pb::type_proto::Value::TensorType(t)) = info.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        // Batch kept, width unknown (the judge's hidden size).
        if let Some(s) = t.shape.as_mut() {
            s.dim.truncate(1);
            s.dim.push(pb::tensor_shape_proto::Dimension { value: Some(pb::tensor_shape_proto::dimension::Value::DimParam("F".into())), ..Default::default() });
        }
    }
    g.output = vec![info];
    g.node.push(pb::NodeProto { op_type: "Identity".into(), input: vec![feature], output: vec!["features".into()], name: "penultimate_features".into(), ..Default::default() });
    Ok(m)
}

/// A digit classifier cut to its penultimate layer.
pub struct DigitFeatures {
    engine: Box<dyn Engine>,
    input: String,
    mean: Vec<f32>,
    std: Vec<f32>,
    name: String,
    pub batch: usize,
}

impl DigitFeatures {
    pub fn open(classifier: &Path, rt: &RuntimeOptions) -> Result<DigitFeatures> {
        let file = ModelFile::open(classifier, &ModelLimits::default())?;
        let contract = Contract::resolve(&file, ModelKind::Classifier, &Default::default());
        contract.ensure_ok(&file)?;
        let mean = contract.meta_f32_list("input_mean", 3)?;
        let std = contract.meta_f32_list("input_std", 3)?;
        let cut = truncate_to_penultimate(&file.proto).with_context(|| format!("{}: no penultimate layer", classifier.display()))?;
        let cut_file = ModelFile::from_bytes(classifier, cut.encode_to_vec(), &ModelLimits::default())?;
        let engine = runtime::open(&cut_file, rt)?;
        Ok(DigitFeatures { engine, input: contract.inputs[0].clone(), mean, std, name: classifier.display().to_string(), batch: 256 })
    }

    /// Features of 28x28 images: (rows, width).
    pub fn features(&mut self, images: &[RgbImage]) -> Result<(Vec<f32>, usize)> {
        let mut all = vec![];
        let mut dim = 0;
        for chunk in images.chunks(self.batch) {
            let plane = 3 * 28 * 28;
            let mut x = vec![0f32; chunk.len() * plane];
            for (i, img) in chunk.iter().enumerate() {
                if img.dimensions() != (28, 28) {
                    bail!("digit features need 28x28 images, got {}x{}", img.width(), img.height());
                }
                crate::data::images::to_chw(img, &self.mean, &self.std, &mut x[i * plane..(i + 1) * plane]);
            }
            let out = self.engine.run(&[Input::f32(&self.input, &[chunk.len(), 3, 28, 28], &x)], "features")?;
            if out.shape.len() != 2 || out.shape[0] != chunk.len() {
                bail!("{}: penultimate features have shape {:?}, expected [{}, F]", self.name, out.shape, chunk.len());
            }
            dim = out.shape[1];
            all.extend_from_slice(&out.data);
        }
        Ok((all, dim))
    }
}
