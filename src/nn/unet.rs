//! The seed's `Diffusion_UNet_Small`: the class-conditional noise model of the diffusion task
//! (28x28 RGB, 10 labels), after dome272/Diffusion-Models-pytorch's `UNet_conditional` cut to two
//! down and two up blocks. Names follow the report's printout; `width` scales the channel plan
//! (64 = the seed: 64/128/256; smaller widths give CPU-sized variants). The time embedding stays
//! 256-d at every width.
//!
//! Details the printout does not show are dome272's: residual blocks `conv.0..4` are Conv3x3 ->
//! GroupNorm(1) -> GELU -> Conv3x3 -> GroupNorm(1) without conv biases, and only the first block of
//! each down/up block is residual (`GELU(x + f(x))`); `init_conv`, `mid1`, `mid2` are not. Down and
//! up blocks add `time_emb_mlp(t)` (SiLU, Linear) over H, W after their convolutions; self-attention
//! is LayerNorm -> 4-head MultiheadAttention -> + input, then LayerNorm-Linear-GELU-Linear + input,
//! over (batch, H*W, C); upsampling is bilinear with `align_corners=True` and the skip comes first in
//! the concatenation; the label embedding is added to the sinusoidal timestep embedding, and the label
//! `NUM_CLASSES` (the null label) adds nothing.

use anyhow::Result;

use super::{Conv, Ops};

pub const TIME_DIM: usize = 256;
pub const NUM_CLASSES: usize = 10;
pub const HEADS: usize = 4;
pub const SIZE: usize = 28;
/// The seed's width.
pub const SEED_WIDTH: usize = 64;

fn residual_block<O: Ops>(o: &mut O, x: &O::T, name: &str, cin: usize, mid: usize, cout: usize, residual: bool) -> Result<O::T> {
    let y = o.conv2d(x, &format!("{name}.conv.0"), Conv::new(cin, mid, 3).pad(1, 1).no_bias())?;
    let y = o.group_norm1(&y, &format!("{name}.conv.1"), mid, 1e-5)?;
    let y = o.gelu(&y);
    let y = o.conv2d(&y, &format!("{name}.conv.3"), Conv::new(mid, cout, 3).pad(1, 1).no_bias())?;
    let y = o.group_norm1(&y, &format!("{name}.conv.4"), cout, 1e-5)?;
    Ok(if residual {
        let s = o.add(x, &y);
        o.gelu(&s)
    } else {
        y
    })
}

fn time_mlp<O: Ops>(o: &mut O, x: &O::T, temb: &O::T, name: &str, cout: usize) -> Result<O::T> {
    let e = o.silu(temb);
    let e = o.linear(&e, &format!("{name}.time_emb_mlp.1"), TIME_DIM, cout, true)?;
    Ok(o.add_channels(x, &e))
}

fn down<O: Ops>(o: &mut O, x: &O::T, temb: &O::T, name: &str, cin: usize, cout: usize) -> Result<O::T> {
    let y = o.max_pool(x, 2, 2, 0);
    let y = residual_block(o, &y, &format!("{name}.conv.1"), cin, cin, cin, true)?;
    let y = residual_block(o, &y, &format!("{name}.conv.2"), cin, cout, cout, false)?;
    time_mlp(o, &y, temb, name, cout)
}

#[allow(clippy::too_many_arguments)]
fn up<O: Ops>(o: &mut O, x: &O::T, skip: &O::T, temb: &O::T, name: &str, cin: usize, cout: usize, hw: usize) -> Result<O::T> {
    let u = o.upsample2x(x, hw, hw);
    let y = o.concat(&[skip.clone(), u]);
    let y = residual_block(o, &y, &format!("{name}.conv.0"), cin, cin, cin, true)?;
    let y = residual_block(o, &y, &format!("{name}.conv.1"), cin, cin / 2, cout, false)?;
    time_mlp(o, &y, temb, name, cout)
}

fn attention<O: Ops>(o: &mut O, x: &O::T, name: &str, c: usize, hw: usize) -> Result<O::T> {
    let tokens = o.to_tokens(x);
    let ln = o.layer_norm(&tokens, &format!("{name}.layer_norm"), c, 1e-5)?;
    let a = o.self_attention(&ln, &format!("{name}.attention_module"), c, HEADS)?;
    let a = o.add(&a, &tokens);
    let f = o.layer_norm(&a, &format!("{name}.ff.0"), c, 1e-5)?;
    let f = o.linear_tokens(&f, &format!("{name}.ff.1"), c, c)?;
    let f = o.gelu(&f);
    let f = o.linear_tokens(&f, &format!("{name}.ff.3"), c, c)?;
    let y = o.add(&f, &a);
    Ok(o.from_tokens(&y, hw, hw))
}

/// Predicted noise [N, 3, 28, 28] from x_t [N, 3, 28, 28], t [N] (int64) and labels [N] (int64,
/// `NUM_CLASSES` = unconditional).
pub fn forward<O: Ops>(o: &mut O, x: &O::T, t: &O::T, labels: &O::T, width: usize) -> Result<O::T> {
    let (w1, w2, w4) = (width, 2 * width, 4 * width);
    let temb = o.timestep_embedding(t, TIME_DIM);
    let lemb = o.embedding_or_null(labels, "label_emb", NUM_CLASSES, TIME_DIM)?;
    let temb = o.add(&temb, &lemb);

    let x1 = residual_block(o, x, "init_conv", 3, w1, w1, false)?;
    let x2 = down(o, &x1, &temb, "down1", w1, w2)?;
    let x2 = attention(o, &x2, "sa_d1", w2, SIZE / 2)?;
    let x3 = down(o, &x2, &temb, "down2", w2, w2)?;
    let x3 = attention(o, &x3, "sa_d2", w2, SIZE / 4)?;
    let x3 = residual_block(o, &x3, "mid1", w2, w4, w4, false)?;
    let x3 = residual_block(o, &x3, "mid2", w4, w2, w2, false)?;
    let y = up(o, &x3, &x2, &temb, "up1", w4, w1, SIZE / 4)?;
    let y = attention(o, &y, "sa_u1", w1, SIZE / 2)?;
    let y = up(o, &y, &x1, &temb, "up2", w2, w1, SIZE / 2)?;
    let y = attention(o, &y, "sa_u2", w1, SIZE)?;
    o.conv2d(&y, "out_conv", Conv::new(w1, 3, 1))
}

/// The schedule written into an export (graders/CONTRACT.md, `noise`).
#[derive(Debug, Clone)]
pub struct NoiseMeta {
    pub timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub guidance_scale: f64,
}

impl Default for NoiseMeta {
    fn default() -> Self {
        // dome272's schedule and its classifier-free guidance scale.
        NoiseMeta { timesteps: 1000, beta_start: 1e-4, beta_end: 0.02, guidance_scale: 3.0 }
    }
}

/// The noise-contract ONNX model (`x`, `t`, `label` -> `eps`).
pub fn to_onnx(weights: &mut dyn super::weights::Weights, width: usize, meta: &NoiseMeta) -> Result<tract_onnx::pb::ModelProto> {
    use crate::onnx::writer::{Dim, Elem};
    let mut og = super::onnx_graph::OnnxGraph::new("diffusion_unet_small", weights);
    let n = Dim::Symbol("N");
    let img = [n.clone(), Dim::Fixed(3), Dim::Fixed(SIZE), Dim::Fixed(SIZE)];
    let x = og.g.input("x", Elem::F32, &img);
    let t = og.g.input("t", Elem::I64, std::slice::from_ref(&n));
    let l = og.g.input("label", Elem::I64, std::slice::from_ref(&n));
    let y = forward(&mut og, &x, &t, &l, width)?;
    og.g.output("eps", &y, Elem::F32, &img);
    og.g.metadata("kind", "noise");
    og.g.metadata("architecture", "diffusion_unet_small");
    og.g.metadata("width", width);
    og.g.metadata("schedule", "linear");
    og.g.metadata("beta_start", meta.beta_start);
    og.g.metadata("beta_end", meta.beta_end);
    og.g.metadata("timesteps", meta.timesteps);
    og.g.metadata("num_classes", NUM_CLASSES);
    og.g.metadata("null_label", NUM_CLASSES);
    og.g.metadata("guidance_scale", meta.guidance_scale);
    Ok(og.g.build())
}
