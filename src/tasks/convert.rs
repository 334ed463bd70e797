//! `grade convert`: PyTorch `.pth` checkpoints of the known architectures to contract ONNX models,
//! without Python or libtorch.

use std::path::Path;

use anyhow::{Context, Result};

use crate::checkpoint::state_dict_from_pth;
use crate::nn;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConvertKind {
    /// pytorch-fid's InceptionV3 weights (pt_inception-2015-12-05-6726825d.pth) -> FID feature model.
    Inception,
    /// The course's LeNet digit classifier (Classifier.pth, state_dict under "state_dict").
    Classifier,
    /// The seed report's DCGAN / WGAN-GP generator (`net.0.weight` ... `net.12.weight`), width from the weights.
    Generator,
}

pub fn run(kind: ConvertKind, pth: &Path, key: Option<&str>, out: &Path) -> Result<Vec<String>> {
    let mut sd = state_dict_from_pth(pth, key)?;
    let model = match kind {
        ConvertKind::Inception => nn::inception::to_onnx(&mut sd),
        ConvertKind::Classifier => nn::lenet::to_onnx(&mut sd),
        ConvertKind::Generator => {
            // The first transposed convolution is [100, 8w, 4, 4]: read the width off it.
            let width = sd.shape("net.0.weight").and_then(|s| s.get(1).copied()).map(|c| c / 8).unwrap_or(64);
            nn::dcgan::to_onnx(&mut sd, width)
        }
    }
    .with_context(|| format!("{} does not hold the weights of a {kind:?} model", pth.display()))?;
    crate::onnx::writer::save(&model, out)?;
    Ok(sd.unused())
}
