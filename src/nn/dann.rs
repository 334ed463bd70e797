//! DANN for 28x28 digits (the widely used PyTorch DANN the seed names; module names as its
//! `CNNModel`): feature extractor Conv(3, 64, 5) BN MaxPool2 ReLU Conv(64, 50, 5) BN Dropout2d MaxPool2
//! ReLU -> 800 features; label classifier 800-100 (BN, ReLU, Dropout) -100 (BN, ReLU) -10, LogSoftmax;
//! domain classifier behind a gradient reversal layer 800-100 (BN, ReLU) -2, LogSoftmax.

use anyhow::Result;

use super::{Conv, Ops};

pub const FEATURES: usize = 800;

pub fn features<O: Ops>(o: &mut O, x: &O::T) -> Result<O::T> {
    let y = o.conv2d(x, "feature.f_conv1", Conv::new(3, 64, 5))?;
    let y = o.batch_norm(&y, "feature.f_bn1", 64, 1e-5)?;
    let y = o.max_pool(&y, 2, 2, 0);
    let y = o.relu(&y);
    let y = o.conv2d(&y, "feature.f_conv2", Conv::new(64, 50, 5))?;
    let y = o.batch_norm(&y, "feature.f_bn2", 50, 1e-5)?;
    let y = o.dropout2d(&y, 0.5);
    let y = o.max_pool(&y, 2, 2, 0);
    let y = o.relu(&y);
    Ok(o.flatten(&y))
}

/// Label log-probabilities [N, 10] from features [N, 800].
pub fn label_head<O: Ops>(o: &mut O, f: &O::T) -> Result<O::T> {
    let y = o.linear(f, "class_classifier.c_fc1", FEATURES, 100, true)?;
    let y = o.batch_norm(&y, "class_classifier.c_bn1", 100, 1e-5)?;
    let y = o.relu(&y);
    let y = o.dropout(&y, 0.5);
    let y = o.linear(&y, "class_classifier.c_fc2", 100, 100, true)?;
    let y = o.batch_norm(&y, "class_classifier.c_bn2", 100, 1e-5)?;
    let y = o.relu(&y);
    let y = o.linear(&y, "class_classifier.c_fc3", 100, 10, true)?;
    Ok(o.log_softmax(&y))
}

/// Domain log-probabilities [N, 2] (0 = source, 1 = target), through the gradient reversal layer.
pub fn domain_head<O: Ops>(o: &mut O, f: &O::T) -> Result<O::T> {
    let r = o.grad_reverse(f);
    let y = o.linear(&r, "domain_classifier.d_fc1", FEATURES, 100, true)?;
    let y = o.batch_norm(&y, "domain_classifier.d_bn1", 100, 1e-5)?;
    let y = o.relu(&y);
    let y = o.linear(&y, "domain_classifier.d_fc2", 100, 2, true)?;
    Ok(o.log_softmax(&y))
}

/// The classifier-contract export: feature extractor + label classifier (`image` -> `logits`, here
/// log-probabilities), inputs normalised with mean 0.5 / std 0.5.
pub fn to_onnx(weights: &mut dyn super::weights::Weights) -> Result<tract_onnx::pb::ModelProto> {
    use crate::onnx::writer::{Dim, Elem};
    let mut og = super::onnx_graph::OnnxGraph::new("dann", weights);
    let n = Dim::Symbol("N");
    let x = og.g.input("image", Elem::F32, &[n.clone(), Dim::Fixed(3), Dim::Fixed(28), Dim::Fixed(28)]);
    let f = features(&mut og, &x)?;
    let y = label_head(&mut og, &f)?;
    og.g.output("logits", &y, Elem::F32, &[n, Dim::Fixed(10)]);
    og.g.metadata("kind", "classifier");
    og.g.metadata("architecture", "dann");
    og.g.metadata("input_mean", "0.5,0.5,0.5");
    og.g.metadata("input_std", "0.5,0.5,0.5");
    Ok(og.g.build())
}

/// The feature extractor alone (`image` -> `features` [N, 800]), for pictures of the feature space
/// (t-SNE by class and by domain, `examples/dann_tsne.rs`); same weights and normalisation as `to_onnx`.
pub fn features_to_onnx(weights: &mut dyn super::weights::Weights) -> Result<tract_onnx::pb::ModelProto> {
    use crate::onnx::writer::{Dim, Elem};
    let mut og = super::onnx_graph::OnnxGraph::new("dann-features", weights);
    let n = Dim::Symbol("N");
    let x = og.g.input("image", Elem::F32, &[n.clone(), Dim::Fixed(3), Dim::Fixed(28), Dim::Fixed(28)]);
    let f = features(&mut og, &x)?;
    og.g.output("features", &f, Elem::F32, &[n, Dim::Fixed(FEATURES)]);
    Ok(og.g.build())
}
