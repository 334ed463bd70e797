//! Model architectures written once against a small graph-building interface (`Ops`). The ONNX
//! recorder (`onnx_graph`) turns a definition into an ONNX graph without libtorch; the trainer's tch
//! executor implements the same trait. Parameter names follow PyTorch's `state_dict` for the same
//! modules, so weights from a `.pth` file map one to one.

pub mod dann;
pub mod dcgan;
pub mod inception;
pub mod lenet;
pub mod onnx_graph;
pub mod unet;
pub mod weights;

use anyhow::Result;

/// A 2-D convolution's hyper-parameters (PyTorch's `nn.Conv2d`).
#[derive(Debug, Clone, Copy)]
pub struct Conv {
    pub cin: usize,
    pub cout: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub pad: (usize, usize),
    pub bias: bool,
}

impl Conv {
    pub fn new(cin: usize, cout: usize, k: usize) -> Conv {
        Conv { cin, cout, kernel: (k, k), stride: (1, 1), pad: (0, 0), bias: true }
    }
    pub fn kernel(mut self, kh: usize, kw: usize) -> Conv {
        self.kernel = (kh, kw);
        self
    }
    pub fn stride(mut self, s: usize) -> Conv {
        self.stride = (s, s);
        self
    }
    pub fn pad(mut self, ph: usize, pw: usize) -> Conv {
        self.pad = (ph, pw);
        self
    }
    pub fn no_bias(mut self) -> Conv {
        self.bias = false;
        self
    }
}

/// The operations model definitions are written with. `name` arguments are `state_dict` prefixes:
/// a conv named `conv1` owns `conv1.weight` and `conv1.bias`.
pub trait Ops {
    type T: Clone;
    fn conv2d(&mut self, x: &Self::T, name: &str, c: Conv) -> Result<Self::T>;
    /// Inference-mode batch norm with running statistics (`name.weight/bias/running_mean/running_var`).
    fn batch_norm(&mut self, x: &Self::T, name: &str, channels: usize, eps: f32) -> Result<Self::T>;
    fn linear(&mut self, x: &Self::T, name: &str, fin: usize, fout: usize, bias: bool) -> Result<Self::T>;
    /// `nn.Linear` applied to the last axis of a [N, L, fin] tensor (ONNX's Gemm takes matrices only).
    fn linear_tokens(&mut self, x: &Self::T, name: &str, fin: usize, fout: usize) -> Result<Self::T>;
    /// Transposed convolution, no output padding (PyTorch's `nn.ConvTranspose2d`, weight [cin, cout, kh, kw]).
    fn conv_transpose2d(&mut self, x: &Self::T, name: &str, c: Conv) -> Result<Self::T>;
    fn relu(&mut self, x: &Self::T) -> Self::T;
    fn tanh(&mut self, x: &Self::T) -> Self::T;
    fn max_pool(&mut self, x: &Self::T, k: usize, stride: usize, pad: usize) -> Self::T;
    /// Average pool; `count_include_pad = false` divides by the number of real pixels only.
    fn avg_pool(&mut self, x: &Self::T, k: usize, stride: usize, pad: usize, count_include_pad: bool) -> Self::T;
    /// Mean over H and W, keeping [N, C, 1, 1].
    fn global_avg_pool(&mut self, x: &Self::T) -> Self::T;
    /// Concatenation along channels.
    fn concat(&mut self, xs: &[Self::T]) -> Self::T;
    /// [N, ...] -> [N, prod(...)].
    fn flatten(&mut self, x: &Self::T) -> Self::T;

    fn leaky_relu(&mut self, x: &Self::T, slope: f32) -> Self::T;
    fn sigmoid(&mut self, x: &Self::T) -> Self::T;
    /// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))` (PyTorch's default `approximate='none'`).
    fn gelu(&mut self, x: &Self::T) -> Self::T;
    fn silu(&mut self, x: &Self::T) -> Self::T;
    fn add(&mut self, a: &Self::T, b: &Self::T) -> Self::T;
    /// Log-softmax over the last axis.
    fn log_softmax(&mut self, x: &Self::T) -> Self::T;
    /// Dropout with probability `p` while training; the identity otherwise (and in every export).
    fn dropout(&mut self, x: &Self::T, p: f64) -> Self::T;
    /// `nn.Dropout2d`: drops whole channels while training; the identity otherwise.
    fn dropout2d(&mut self, x: &Self::T, p: f64) -> Self::T;
    /// Gradient reversal (DANN): the identity forward; backward multiplies the gradient by -lambda,
    /// where lambda is the executor's current setting. The identity in every export.
    fn grad_reverse(&mut self, x: &Self::T) -> Self::T;
    /// `nn.GroupNorm(1, channels)`: normalise each sample over C, H, W, then a per-channel affine.
    fn group_norm1(&mut self, x: &Self::T, name: &str, channels: usize, eps: f32) -> Result<Self::T>;
    /// `nn.LayerNorm(dim)` over the last axis.
    fn layer_norm(&mut self, x: &Self::T, name: &str, dim: usize, eps: f32) -> Result<Self::T>;
    /// [N, C, H, W] -> [N, H*W, C] (dome272's `view(-1, C, H*W).swapaxes(1, 2)`).
    fn to_tokens(&mut self, x: &Self::T) -> Self::T;
    /// [N, H*W, C] -> [N, C, H, W].
    fn from_tokens(&mut self, x: &Self::T, h: usize, w: usize) -> Self::T;
    /// `nn.MultiheadAttention(dim, heads, batch_first=True)` self-attention on [N, L, dim]
    /// (`name.in_proj_weight/in_proj_bias/out_proj.weight/out_proj.bias`).
    fn self_attention(&mut self, x: &Self::T, name: &str, dim: usize, heads: usize) -> Result<Self::T>;
    /// `nn.Upsample(scale_factor=2, mode='bilinear', align_corners=True)` of an [N, C, h, w] map.
    fn upsample2x(&mut self, x: &Self::T, h: usize, w: usize) -> Self::T;
    /// x [N, C, H, W] + v [N, C] broadcast over H and W.
    fn add_channels(&mut self, x: &Self::T, v: &Self::T) -> Self::T;
    /// dome272's sinusoidal embedding of integer timesteps t [N]: `cat(sin(t f), cos(t f))` with
    /// `f = 1 / 10000^(arange(0, dim, 2) / dim)`, [N, dim].
    fn timestep_embedding(&mut self, t: &Self::T, dim: usize) -> Self::T;
    /// `nn.Embedding(num, dim)` lookup of labels [N] (int64); the label `num` (the null label of
    /// classifier-free guidance) maps to zeros, i.e. no conditioning.
    fn embedding_or_null(&mut self, labels: &Self::T, name: &str, num: usize, dim: usize) -> Result<Self::T>;
}

/// The interpolation matrix of a 1-D linear resize from `n` to `2n` samples with
/// `align_corners=True` (row i holds the weights of output sample i). Bilinear 2-D upsampling is
/// `A_h X A_w^T`, which both executors compute the same way in the ONNX export (MatMul only).
pub fn upsample_matrix(n: usize) -> Vec<f32> {
    let m = 2 * n;
    let mut a = vec![0f32; m * n];
    for i in 0..m {
        // align_corners: output i sits at input position i * (n - 1) / (m - 1).
        let pos = if m > 1 { i as f64 * (n as f64 - 1.0) / (m as f64 - 1.0) } else { 0.0 };
        let lo = (pos.floor() as usize).min(n - 1);
        let hi = (lo + 1).min(n - 1);
        let frac = pos - lo as f64;
        a[i * n + lo] += (1.0 - frac) as f32;
        a[i * n + hi] += frac as f32;
    }
    a
}

/// dome272's inverse frequencies for the sinusoidal timestep embedding.
pub fn timestep_frequencies(dim: usize) -> Vec<f32> {
    // In f32 like PyTorch's `1.0 / 10000 ** (arange(0, dim, 2).float() / dim)`.
    (0..dim / 2).map(|i| 1.0 / 10000f32.powf((2 * i) as f32 / dim as f32)).collect()
}
