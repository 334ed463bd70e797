//! The course's digit classifier (`digit_classifier.py`, the judge of the diffusion task): a LeNet on
//! 28x28 RGB input normalised with mean 0.5 / std 0.5. Names as in the official `Classifier.pth`.

use anyhow::Result;

use super::{Conv, Ops};

pub fn lenet<O: Ops>(o: &mut O, x: &O::T) -> Result<O::T> {
    let y = o.conv2d(x, "conv1", Conv::new(3, 6, 5))?;
    let y = o.relu(&y);
    let y = o.max_pool(&y, 2, 2, 0);
    let y = o.conv2d(&y, "conv2", Conv::new(6, 16, 5))?;
    let y = o.relu(&y);
    let y = o.max_pool(&y, 2, 2, 0);
    let y = o.flatten(&y);
    let y = o.linear(&y, "fc1", 256, 128, true)?;
    let y = o.relu(&y);
    let y = o.linear(&y, "fc2", 128, 64, true)?;
    let y = o.relu(&y);
    o.linear(&y, "fc3", 64, 10, true)
}

/// The classifier-contract ONNX model (`image` [N, 3, 28, 28] -> `logits` [N, 10]).
pub fn to_onnx(weights: &mut dyn super::weights::Weights) -> Result<tract_onnx::pb::ModelProto> {
    use crate::onnx::writer::{Dim, Elem};
    let mut og = super::onnx_graph::OnnxGraph::new("lenet", weights);
    let n = Dim::Symbol("N");
    let x = og.g.input("image", Elem::F32, &[n.clone(), Dim::Fixed(3), Dim::Fixed(28), Dim::Fixed(28)]);
    let y = lenet(&mut og, &x)?;
    og.g.output("logits", &y, Elem::F32, &[n, Dim::Fixed(10)]);
    og.g.metadata("kind", "classifier");
    og.g.metadata("input_mean", "0.5,0.5,0.5");
    og.g.metadata("input_std", "0.5,0.5,0.5");
    Ok(og.g.build())
}
