//! Model architectures written once against a small graph-building interface (`Ops`). The ONNX
//! recorder (`onnx_graph`) turns a definition into an ONNX graph without libtorch; the trainer's tch
//! executor implements the same trait. Parameter names follow PyTorch's `state_dict` for the same
//! modules, so weights from a `.pth` file map one to one.

pub mod dcgan;
pub mod inception;
pub mod lenet;
pub mod onnx_graph;
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
}
