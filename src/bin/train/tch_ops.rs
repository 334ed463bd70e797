//! The tch executor of `gradekit::nn::Ops`: the same model definitions the ONNX recorder exports, run
//! by libtorch with autograd. Parameters are created on first use with PyTorch's default
//! initialisation (or DCGAN's N(0, 0.02)) and live in a `ParamStore` under their `state_dict` names.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use gradekit::nn::{Conv, Ops};
use tch::{Device, Kind, Tensor};

/// A tensor handle; cloning shares storage (tch's `shallow_clone`).
pub struct Tt(pub Tensor);

impl Clone for Tt {
    fn clone(&self) -> Self {
        Tt(self.0.shallow_clone())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// PyTorch's defaults: Conv/Linear U(+-1/sqrt(fan_in)), norms at identity, Embedding N(0, 1),
    /// MultiheadAttention's in_proj Xavier-uniform with zero biases.
    Torch,
    /// DCGAN's: convolutions N(0, 0.02), BatchNorm weight N(1, 0.02), bias 0.
    Dcgan,
}

/// Named parameters (trainable) and buffers (BatchNorm running statistics).
pub struct ParamStore {
    pub vars: BTreeMap<String, Tensor>,
    pub buffers: std::collections::BTreeSet<String>,
    pub device: Device,
    pub init: Init,
    /// Prepended to every name a definition asks for (`generator.` / `discriminator.` for GANs).
    pub prefix: String,
}

impl ParamStore {
    pub fn new(device: Device, init: Init) -> Self {
        ParamStore { vars: BTreeMap::new(), buffers: Default::default(), device, init, prefix: String::new() }
    }

    /// Every tensor (parameters and buffers) under its name, for checkpoints.
    pub fn named(&self) -> Vec<(String, Tensor)> {
        self.vars.iter().map(|(k, v)| (k.clone(), v.shallow_clone())).collect()
    }

    /// The trainable parameters, in name order.
    pub fn trainable(&self) -> Vec<(&String, &Tensor)> {
        self.vars.iter().filter(|(k, _)| !self.buffers.contains(*k)).collect()
    }

    /// The tensors whose names start with `prefix` (trainable only if `trainable`).
    pub fn group(&self, prefix: &str) -> Vec<String> {
        self.vars.keys().filter(|k| k.starts_with(prefix) && !self.buffers.contains(*k)).cloned().collect()
    }

    fn get_or_make(&mut self, name: &str, shape: &[i64], make: impl FnOnce(&[i64], Device) -> Tensor, buffer: bool) -> Result<Tensor> {
        let full = format!("{}{name}", self.prefix);
        let name = full.as_str();
        if let Some(t) = self.vars.get(name) {
            if t.size() != shape {
                bail!("{name}: stored shape {:?}, the architecture asks for {shape:?}", t.size());
            }
            return Ok(t.shallow_clone());
        }
        let t = tch::no_grad(|| make(shape, self.device));
        let t = if buffer { t } else { t.set_requires_grad(true) };
        if buffer {
            self.buffers.insert(name.to_string());
        }
        self.vars.insert(name.to_string(), t.shallow_clone());
        Ok(t)
    }

    fn uniform(shape: &[i64], dev: Device, bound: f64) -> Tensor {
        Tensor::empty(shape, (Kind::Float, dev)).uniform_(-bound, bound)
    }

    /// A convolution or linear weight; `fan_in` as PyTorch computes it for this layer.
    fn weight(&mut self, name: &str, shape: &[i64], fan_in: i64, conv: bool) -> Result<Tensor> {
        let init = self.init;
        self.get_or_make(
            name,
            shape,
            |s, d| {
                if init == Init::Dcgan && conv {
                    Tensor::empty(s, (Kind::Float, d)).normal_(0.0, 0.02)
                } else {
                    Self::uniform(s, d, 1.0 / (fan_in as f64).sqrt())
                }
            },
            false,
        )
    }

    fn bias(&mut self, name: &str, n: i64, fan_in: i64) -> Result<Tensor> {
        self.get_or_make(name, &[n], |s, d| Self::uniform(s, d, 1.0 / (fan_in as f64).sqrt()), false)
    }

    fn norm_weight(&mut self, name: &str, n: i64, batch_norm: bool) -> Result<Tensor> {
        let init = self.init;
        self.get_or_make(
            name,
            &[n],
            |s, d| {
                if init == Init::Dcgan && batch_norm {
                    Tensor::empty(s, (Kind::Float, d)).normal_(1.0, 0.02)
                } else {
                    Tensor::ones(s, (Kind::Float, d))
                }
            },
            false,
        )
    }

    fn zeros(&mut self, name: &str, shape: &[i64], buffer: bool) -> Result<Tensor> {
        self.get_or_make(name, shape, |s, d| Tensor::zeros(s, (Kind::Float, d)), buffer)
    }

    fn ones_buffer(&mut self, name: &str, n: i64) -> Result<Tensor> {
        self.get_or_make(name, &[n], |s, d| Tensor::ones(s, (Kind::Float, d)), true)
    }
}

/// Runs model definitions on a `ParamStore`. `train` switches BatchNorm to batch statistics (and
/// updates the running ones) and enables dropout; `grl_lambda` is the gradient-reversal weight.
pub struct TchOps<'a> {
    pub p: &'a mut ParamStore,
    pub train: bool,
    pub grl_lambda: f64,
}

impl<'a> TchOps<'a> {
    pub fn new(p: &'a mut ParamStore, train: bool) -> Self {
        TchOps { p, train, grl_lambda: 1.0 }
    }
}

fn i(v: usize) -> i64 {
    v as i64
}

impl Ops for TchOps<'_> {
    type T = Tt;

    fn conv2d(&mut self, x: &Tt, name: &str, c: Conv) -> Result<Tt> {
        let fan_in = i(c.cin * c.kernel.0 * c.kernel.1);
        let w = self.p.weight(&format!("{name}.weight"), &[i(c.cout), i(c.cin), i(c.kernel.0), i(c.kernel.1)], fan_in, true)?;
        let b = if c.bias { Some(self.p.bias(&format!("{name}.bias"), i(c.cout), fan_in)?) } else { None };
        Ok(Tt(x.0.conv2d(&w, b.as_ref(), [i(c.stride.0), i(c.stride.1)], [i(c.pad.0), i(c.pad.1)], [1, 1], 1)))
    }

    fn batch_norm(&mut self, x: &Tt, name: &str, channels: usize, eps: f32) -> Result<Tt> {
        let n = i(channels);
        let w = self.p.norm_weight(&format!("{name}.weight"), n, true)?;
        let b = self.p.zeros(&format!("{name}.bias"), &[n], false)?;
        let m = self.p.zeros(&format!("{name}.running_mean"), &[n], true)?;
        let v = self.p.ones_buffer(&format!("{name}.running_var"), n)?;
        Ok(Tt(x.0.batch_norm(Some(&w), Some(&b), Some(&m), Some(&v), self.train, 0.1, eps as f64, false)))
    }

    fn linear(&mut self, x: &Tt, name: &str, fin: usize, fout: usize, bias: bool) -> Result<Tt> {
        let w = self.p.weight(&format!("{name}.weight"), &[i(fout), i(fin)], i(fin), false)?;
        let b = if bias { Some(self.p.bias(&format!("{name}.bias"), i(fout), i(fin))?) } else { None };
        Ok(Tt(x.0.linear(&w, b.as_ref())))
    }

    fn linear_tokens(&mut self, x: &Tt, name: &str, fin: usize, fout: usize) -> Result<Tt> {
        self.linear(x, name, fin, fout, true)
    }

    fn conv_transpose2d(&mut self, x: &Tt, name: &str, c: Conv) -> Result<Tt> {
        // PyTorch's fan-in for a transposed conv weight [cin, cout, kh, kw] is cout * kh * kw.
        let fan_in = i(c.cout * c.kernel.0 * c.kernel.1);
        let w = self.p.weight(&format!("{name}.weight"), &[i(c.cin), i(c.cout), i(c.kernel.0), i(c.kernel.1)], fan_in, true)?;
        let b = if c.bias { Some(self.p.bias(&format!("{name}.bias"), i(c.cout), fan_in)?) } else { None };
        Ok(Tt(x.0.conv_transpose2d(&w, b.as_ref(), [i(c.stride.0), i(c.stride.1)], [i(c.pad.0), i(c.pad.1)], [0, 0], 1, [1, 1])))
    }

    fn relu(&mut self, x: &Tt) -> Tt {
        Tt(x.0.relu())
    }

    fn tanh(&mut self, x: &Tt) -> Tt {
        Tt(x.0.tanh())
    }

    fn max_pool(&mut self, x: &Tt, k: usize, stride: usize, pad: usize) -> Tt {
        Tt(x.0.max_pool2d([i(k), i(k)], [i(stride), i(stride)], [i(pad), i(pad)], [1, 1], false))
    }

    fn avg_pool(&mut self, x: &Tt, k: usize, stride: usize, pad: usize, count_include_pad: bool) -> Tt {
        Tt(x.0.avg_pool2d([i(k), i(k)], [i(stride), i(stride)], [i(pad), i(pad)], false, count_include_pad, None::<i64>))
    }

    fn global_avg_pool(&mut self, x: &Tt) -> Tt {
        Tt(x.0.adaptive_avg_pool2d([1, 1]))
    }

    fn concat(&mut self, xs: &[Tt]) -> Tt {
        let ts: Vec<&Tensor> = xs.iter().map(|t| &t.0).collect();
        Tt(Tensor::cat(&ts, 1))
    }

    fn flatten(&mut self, x: &Tt) -> Tt {
        Tt(x.0.flatten(1, -1))
    }

    fn leaky_relu(&mut self, x: &Tt, slope: f32) -> Tt {
        // max(x, a x) equals LeakyReLU for 0 <= a < 1 (tch's leaky_relu has no slope argument).
        Tt(x.0.maximum(&(&x.0 * slope as f64)))
    }

    fn sigmoid(&mut self, x: &Tt) -> Tt {
        Tt(x.0.sigmoid())
    }

    fn gelu(&mut self, x: &Tt) -> Tt {
        Tt(x.0.gelu("none"))
    }

    fn silu(&mut self, x: &Tt) -> Tt {
        Tt(x.0.silu())
    }

    fn add(&mut self, a: &Tt, b: &Tt) -> Tt {
        Tt(&a.0 + &b.0)
    }

    fn log_softmax(&mut self, x: &Tt) -> Tt {
        Tt(x.0.log_softmax(-1, Kind::Float))
    }

    fn dropout(&mut self, x: &Tt, p: f64) -> Tt {
        Tt(x.0.dropout(p, self.train))
    }

    fn dropout2d(&mut self, x: &Tt, p: f64) -> Tt {
        Tt(x.0.feature_dropout(p, self.train))
    }

    fn grad_reverse(&mut self, x: &Tt) -> Tt {
        // Forward: exactly x. Backward: -lambda times the incoming gradient.
        let d = x.0.detach();
        Tt(&d + (&x.0 - &d) * (-self.grl_lambda))
    }

    fn group_norm1(&mut self, x: &Tt, name: &str, channels: usize, eps: f32) -> Result<Tt> {
        let w = self.p.norm_weight(&format!("{name}.weight"), i(channels), false)?;
        let b = self.p.zeros(&format!("{name}.bias"), &[i(channels)], false)?;
        Ok(Tt(x.0.group_norm(1, Some(&w), Some(&b), eps as f64, false)))
    }

    fn layer_norm(&mut self, x: &Tt, name: &str, dim: usize, eps: f32) -> Result<Tt> {
        let w = self.p.norm_weight(&format!("{name}.weight"), i(dim), false)?;
        let b = self.p.zeros(&format!("{name}.bias"), &[i(dim)], false)?;
        Ok(Tt(x.0.layer_norm([i(dim)], Some(&w), Some(&b), eps as f64, false)))
    }

    fn to_tokens(&mut self, x: &Tt) -> Tt {
        Tt(x.0.flatten(2, -1).transpose(1, 2))
    }

    fn from_tokens(&mut self, x: &Tt, h: usize, w: usize) -> Tt {
        let c = x.0.size()[2];
        Tt(x.0.transpose(1, 2).reshape([-1, c, i(h), i(w)]))
    }

    fn self_attention(&mut self, x: &Tt, name: &str, dim: usize, heads: usize) -> Result<Tt> {
        let d = i(dim);
        let w_in = self.p.get_or_make(
            &format!("{name}.in_proj_weight"),
            &[3 * d, d],
            |s, dev| ParamStore::uniform(s, dev, (6.0 / (d + 3 * d) as f64).sqrt()),
            false,
        )?;
        let b_in = self.p.zeros(&format!("{name}.in_proj_bias"), &[3 * d], false)?;
        let w_out = self.p.weight(&format!("{name}.out_proj.weight"), &[d, d], d, false)?;
        let b_out = self.p.zeros(&format!("{name}.out_proj.bias"), &[d], false)?;
        let (n, l) = (x.0.size()[0], x.0.size()[1]);
        let h = i(heads);
        let qkv = x.0.linear(&w_in, Some(&b_in)).reshape([n, l, 3, h, d / h]).permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let o = Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, false, None::<f64>, false);
        let o = o.transpose(1, 2).reshape([n, l, d]);
        Ok(Tt(o.linear(&w_out, Some(&b_out))))
    }

    fn upsample2x(&mut self, x: &Tt, h: usize, w: usize) -> Tt {
        Tt(x.0.upsample_bilinear2d([2 * i(h), 2 * i(w)], true, None::<f64>, None::<f64>))
    }

    fn add_channels(&mut self, x: &Tt, v: &Tt) -> Tt {
        Tt(&x.0 + v.0.unsqueeze(-1).unsqueeze(-1))
    }

    fn timestep_embedding(&mut self, t: &Tt, dim: usize) -> Tt {
        let f = Tensor::from_slice(&gradekit::nn::timestep_frequencies(dim)).to_device(t.0.device());
        let a = t.0.to_kind(Kind::Float).unsqueeze(1) * f.unsqueeze(0);
        Tt(Tensor::cat(&[a.sin(), a.cos()], 1))
    }

    fn embedding_or_null(&mut self, labels: &Tt, name: &str, num: usize, dim: usize) -> Result<Tt> {
        let w = self.p.get_or_make(&format!("{name}.weight"), &[i(num), i(dim)], |s, d| Tensor::randn(s, (Kind::Float, d)), false)?;
        let table = Tensor::cat(&[w, Tensor::zeros([1, i(dim)], (Kind::Float, self.p.device))], 0);
        Ok(Tt(Tensor::embedding(&table, &labels.0, -1, false, false)))
    }
}
