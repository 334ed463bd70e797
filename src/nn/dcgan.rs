//! The seed report's DCGAN generator (also its WGAN-GP generator): z [N, 100, 1, 1] ->
//! ConvT(100, 8w, 4, 1, 0) BN ReLU -> ConvT(8w, 4w, 4, 2, 1) BN ReLU -> ConvT(4w, 2w) BN ReLU ->
//! ConvT(2w, w) BN ReLU -> ConvT(w, 3) -> Tanh, no biases; w = 64 in the report. Names follow its
//! `nn.Sequential` (`net.0.weight`, `net.1.running_mean`, ...).

use anyhow::Result;

use super::{Conv, Ops};

pub const LATENT: usize = 100;

pub fn generator<O: Ops>(o: &mut O, z: &O::T, width: usize) -> Result<O::T> {
    let chans = [LATENT, 8 * width, 4 * width, 2 * width, width];
    let mut y = z.clone();
    for (i, pair) in chans.windows(2).enumerate() {
        let conv = Conv::new(pair[0], pair[1], 4).no_bias();
        let conv = if i == 0 { conv } else { conv.stride(2).pad(1, 1) };
        y = o.conv_transpose2d(&y, &format!("net.{}", 3 * i), conv)?;
        y = o.batch_norm(&y, &format!("net.{}", 3 * i + 1), pair[1], 1e-5)?;
        y = o.relu(&y);
    }
    y = o.conv_transpose2d(&y, "net.12", Conv::new(width, 3, 4).no_bias().stride(2).pad(1, 1))?;
    Ok(o.tanh(&y))
}

/// The generator-contract ONNX model (`z` [N, 100, 1, 1] -> `image` [N, 3, 64, 64] in [-1, 1]).
pub fn to_onnx(weights: &mut dyn super::weights::Weights, width: usize) -> Result<tract_onnx::pb::ModelProto> {
    use crate::onnx::writer::{Dim, Elem};
    let mut og = super::onnx_graph::OnnxGraph::new("dcgan_generator", weights);
    let n = Dim::Symbol("N");
    let z = og.g.input("z", Elem::F32, &[n.clone(), Dim::Fixed(LATENT), Dim::Fixed(1), Dim::Fixed(1)]);
    let y = generator(&mut og, &z, width)?;
    og.g.output("image", &y, Elem::F32, &[n, Dim::Fixed(3), Dim::Fixed(64), Dim::Fixed(64)]);
    og.g.metadata("kind", "generator");
    og.g.metadata("latent_dim", LATENT);
    og.g.metadata("output_range", "-1,1");
    og.g.metadata("width", width);
    Ok(og.g.build())
}

/// The seed's DCGAN discriminator (`critic = false`): Conv(3, w, 4, 2, 1) LeakyReLU(0.2) ->
/// Conv(w, 2w) BN LeakyReLU -> Conv(2w, 4w) BN LeakyReLU -> Conv(4w, 8w) BN LeakyReLU ->
/// Conv(8w, 1, 4, 1, 0) -> Sigmoid, no biases; [N, 3, 64, 64] -> [N, 1]. The WGAN-GP critic
/// (`critic = true`) is the same convolutions without batch norm and without the sigmoid, so its
/// `nn.Sequential` indices are 0, 2, 4, 6, 8. (The report's printout says BatchNorm2d(128) after
/// the 256- and 512-channel convolutions; norms here match their channels, as they must to run.)
pub fn discriminator<O: Ops>(o: &mut O, x: &O::T, width: usize, critic: bool) -> Result<O::T> {
    let chans = [3, width, 2 * width, 4 * width, 8 * width];
    let mut y = x.clone();
    let mut idx = 0;
    for (i, pair) in chans.windows(2).enumerate() {
        y = o.conv2d(&y, &format!("net.{idx}"), Conv::new(pair[0], pair[1], 4).no_bias().stride(2).pad(1, 1))?;
        idx += 1;
        if i > 0 && !critic {
            y = o.batch_norm(&y, &format!("net.{idx}"), pair[1], 1e-5)?;
            idx += 1;
        }
        y = o.leaky_relu(&y, 0.2);
        idx += 1;
    }
    y = o.conv2d(&y, &format!("net.{idx}"), Conv::new(8 * width, 1, 4).no_bias())?;
    let y = o.flatten(&y);
    Ok(if critic { y } else { o.sigmoid(&y) })
}

/// The discriminator or critic as an ONNX model (`image` [N, 3, 64, 64] in [-1, 1] -> `score` [N, 1]);
/// not graded, exported so a trained pair can be inspected and checked against tch.
pub fn discriminator_to_onnx(weights: &mut dyn super::weights::Weights, width: usize, critic: bool) -> Result<tract_onnx::pb::ModelProto> {
    use crate::onnx::writer::{Dim, Elem};
    let mut og = super::onnx_graph::OnnxGraph::new(if critic { "wgan_critic" } else { "dcgan_discriminator" }, weights);
    let n = Dim::Symbol("N");
    let x = og.g.input("image", Elem::F32, &[n.clone(), Dim::Fixed(3), Dim::Fixed(64), Dim::Fixed(64)]);
    let y = discriminator(&mut og, &x, width, critic)?;
    og.g.output("score", &y, Elem::F32, &[n, Dim::Fixed(1)]);
    og.g.metadata("kind", "discriminator");
    og.g.metadata("width", width);
    Ok(og.g.build())
}
