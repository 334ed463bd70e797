//! The ONNX recorder: runs a model definition and writes the operations it makes as an ONNX graph,
//! with weights pulled from a `Weights` source.

use anyhow::Result;

use super::weights::Weights;
use super::{Conv, Ops};
use crate::onnx::writer::{Attr, GraphBuilder};

pub struct OnnxGraph<'w> {
    pub g: GraphBuilder,
    weights: &'w mut dyn Weights,
}

impl<'w> OnnxGraph<'w> {
    pub fn new(name: &str, weights: &'w mut dyn Weights) -> Self {
        OnnxGraph { g: GraphBuilder::new(name), weights }
    }

    fn param(&mut self, name: &str, shape: &[usize]) -> Result<String> {
        let data = self.weights.get(name, shape)?;
        Ok(self.g.weight(name, shape, &data))
    }

    /// Conv or ConvTranspose with `name.weight` of shape `[w0, w1, kh, kw]` and an optional bias.
    fn conv_op(&mut self, op: &str, x: &str, name: &str, [w0, w1]: [usize; 2], c: Conv) -> Result<String> {
        let w = self.param(&format!("{name}.weight"), &[w0, w1, c.kernel.0, c.kernel.1])?;
        let mut ins = vec![x, w.as_str()];
        let b;
        if c.bias {
            b = self.param(&format!("{name}.bias"), &[c.cout])?;
            ins.push(&b);
        }
        Ok(self.g.node(
            op,
            &ins,
            &[
                Attr::Ints("kernel_shape", vec![c.kernel.0 as i64, c.kernel.1 as i64]),
                Attr::Ints("strides", vec![c.stride.0 as i64, c.stride.1 as i64]),
                Attr::Ints("pads", pads(c.pad)),
            ],
        ))
    }
}

impl OnnxGraph<'_> {
    /// A scalar f32 constant (broadcasts in elementwise ops).
    fn scalar(&mut self, v: f32) -> String {
        let name = self.g.fresh("const");
        self.g.weight(&name, &[], &[v])
    }

    fn ints(&mut self, v: &[i64]) -> String {
        let name = self.g.fresh("shape");
        self.g.const_i64(&name, &[v.len()], v)
    }

    fn reshape(&mut self, x: &str, shape: &[i64]) -> String {
        let s = self.ints(shape);
        self.g.node("Reshape", &[x, &s], &[])
    }

    fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.g.node("Transpose", &[x], &[Attr::Ints("perm", perm.to_vec())])
    }

    /// (x - mean) / sqrt(var + eps) over `axes` (biased variance, as PyTorch's norms).
    fn normalise(&mut self, x: &str, axes: &[i64], eps: f32) -> String {
        let mean = self.g.node("ReduceMean", &[x], &[Attr::Ints("axes", axes.to_vec()), Attr::Int("keepdims", 1)]);
        let d = self.g.node("Sub", &[x, &mean], &[]);
        let sq = self.g.node("Mul", &[&d, &d], &[]);
        let var = self.g.node("ReduceMean", &[&sq], &[Attr::Ints("axes", axes.to_vec()), Attr::Int("keepdims", 1)]);
        let e = self.scalar(eps);
        let ve = self.g.node("Add", &[&var, &e], &[]);
        let sd = self.g.node("Sqrt", &[&ve], &[]);
        self.g.node("Div", &[&d, &sd], &[])
    }

    /// x @ W^T + b for a [.., fin] tensor, with W [fout, fin] stored transposed for MatMul.
    fn matmul_linear(&mut self, x: &str, wname: &str, w: &[f32], fin: usize, fout: usize, b: Option<(&str, &[f32])>) -> String {
        let mut wt = vec![0f32; fin * fout];
        for o in 0..fout {
            for i in 0..fin {
                wt[i * fout + o] = w[o * fin + i];
            }
        }
        let wt = self.g.weight(&format!("{wname}.T"), &[fin, fout], &wt);
        let y = self.g.node("MatMul", &[x, &wt], &[]);
        match b {
            Some((bname, bdata)) => {
                let b = self.g.weight(bname, &[fout], bdata);
                self.g.node("Add", &[&y, &b], &[])
            }
            None => y,
        }
    }
}

fn pads(p: (usize, usize)) -> Vec<i64> {
    vec![p.0 as i64, p.1 as i64, p.0 as i64, p.1 as i64]
}

impl Ops for OnnxGraph<'_> {
    type T = String;

    fn conv2d(&mut self, x: &String, name: &str, c: Conv) -> Result<String> {
        self.conv_op("Conv", x, name, [c.cout, c.cin], c)
    }

    fn batch_norm(&mut self, x: &String, name: &str, channels: usize, eps: f32) -> Result<String> {
        let s = self.param(&format!("{name}.weight"), &[channels])?;
        let b = self.param(&format!("{name}.bias"), &[channels])?;
        let m = self.param(&format!("{name}.running_mean"), &[channels])?;
        let v = self.param(&format!("{name}.running_var"), &[channels])?;
        Ok(self.g.node("BatchNormalization", &[x, &s, &b, &m, &v], &[Attr::Float("epsilon", eps)]))
    }

    fn linear(&mut self, x: &String, name: &str, fin: usize, fout: usize, bias: bool) -> Result<String> {
        let w = self.param(&format!("{name}.weight"), &[fout, fin])?;
        let mut ins = vec![x.as_str(), w.as_str()];
        let b;
        if bias {
            b = self.param(&format!("{name}.bias"), &[fout])?;
            ins.push(&b);
        }
        Ok(self.g.node("Gemm", &ins, &[Attr::Int("transB", 1)]))
    }

    fn linear_tokens(&mut self, x: &String, name: &str, fin: usize, fout: usize) -> Result<String> {
        let w = self.weights.get(&format!("{name}.weight"), &[fout, fin])?;
        let b = self.weights.get(&format!("{name}.bias"), &[fout])?;
        let bname = format!("{name}.bias");
        Ok(self.matmul_linear(x, &format!("{name}.weight"), &w, fin, fout, Some((&bname, &b))))
    }

    fn conv_transpose2d(&mut self, x: &String, name: &str, c: Conv) -> Result<String> {
        // PyTorch and ONNX both lay transposed-convolution weights out as [cin, cout, kh, kw].
        self.conv_op("ConvTranspose", x, name, [c.cin, c.cout], c)
    }

    fn relu(&mut self, x: &String) -> String {
        self.g.node("Relu", &[x], &[])
    }

    fn tanh(&mut self, x: &String) -> String {
        self.g.node("Tanh", &[x], &[])
    }

    fn max_pool(&mut self, x: &String, k: usize, stride: usize, pad: usize) -> String {
        self.g.node(
            "MaxPool",
            &[x],
            &[
                Attr::Ints("kernel_shape", vec![k as i64, k as i64]),
                Attr::Ints("strides", vec![stride as i64, stride as i64]),
                Attr::Ints("pads", pads((pad, pad))),
            ],
        )
    }

    fn avg_pool(&mut self, x: &String, k: usize, stride: usize, pad: usize, count_include_pad: bool) -> String {
        self.g.node(
            "AveragePool",
            &[x],
            &[
                Attr::Ints("kernel_shape", vec![k as i64, k as i64]),
                Attr::Ints("strides", vec![stride as i64, stride as i64]),
                Attr::Ints("pads", pads((pad, pad))),
                Attr::Int("count_include_pad", count_include_pad as i64),
            ],
        )
    }

    fn global_avg_pool(&mut self, x: &String) -> String {
        self.g.node("GlobalAveragePool", &[x], &[])
    }

    fn concat(&mut self, xs: &[String]) -> String {
        let refs: Vec<&str> = xs.iter().map(String::as_str).collect();
        self.g.node("Concat", &refs, &[Attr::Int("axis", 1)])
    }

    fn flatten(&mut self, x: &String) -> String {
        self.g.node("Flatten", &[x], &[Attr::Int("axis", 1)])
    }

    fn leaky_relu(&mut self, x: &String, slope: f32) -> String {
        self.g.node("LeakyRelu", &[x], &[Attr::Float("alpha", slope)])
    }

    fn sigmoid(&mut self, x: &String) -> String {
        self.g.node("Sigmoid", &[x], &[])
    }

    fn gelu(&mut self, x: &String) -> String {
        // GELU is an ONNX op only from opset 20: 0.5 x (1 + erf(x / sqrt 2)).
        let r = self.scalar(std::f32::consts::FRAC_1_SQRT_2);
        let xs = self.g.node("Mul", &[x, &r], &[]);
        let e = self.g.node("Erf", &[&xs], &[]);
        let one = self.scalar(1.0);
        let e1 = self.g.node("Add", &[&e, &one], &[]);
        let half = self.scalar(0.5);
        let xh = self.g.node("Mul", &[x, &half], &[]);
        self.g.node("Mul", &[&xh, &e1], &[])
    }

    fn silu(&mut self, x: &String) -> String {
        let s = self.g.node("Sigmoid", &[x], &[]);
        self.g.node("Mul", &[x, &s], &[])
    }

    fn add(&mut self, a: &String, b: &String) -> String {
        self.g.node("Add", &[a, b], &[])
    }

    fn log_softmax(&mut self, x: &String) -> String {
        self.g.node("LogSoftmax", &[x], &[Attr::Int("axis", -1)])
    }

    fn dropout(&mut self, x: &String, _p: f64) -> String {
        x.clone()
    }

    fn dropout2d(&mut self, x: &String, _p: f64) -> String {
        x.clone()
    }

    fn grad_reverse(&mut self, x: &String) -> String {
        x.clone()
    }

    fn group_norm1(&mut self, x: &String, name: &str, channels: usize, eps: f32) -> Result<String> {
        // GroupNormalization is an ONNX op only from opset 18 (and changed in 21): decomposed.
        let w = self.weights.get(&format!("{name}.weight"), &[channels])?;
        let b = self.weights.get(&format!("{name}.bias"), &[channels])?;
        let y = self.normalise(x, &[1, 2, 3], eps);
        let w = self.g.weight(&format!("{name}.weight"), &[channels, 1, 1], &w);
        let b = self.g.weight(&format!("{name}.bias"), &[channels, 1, 1], &b);
        let y = self.g.node("Mul", &[&y, &w], &[]);
        Ok(self.g.node("Add", &[&y, &b], &[]))
    }

    fn layer_norm(&mut self, x: &String, name: &str, dim: usize, eps: f32) -> Result<String> {
        let w = self.param(&format!("{name}.weight"), &[dim])?;
        let b = self.param(&format!("{name}.bias"), &[dim])?;
        let y = self.normalise(x, &[-1], eps);
        let y = self.g.node("Mul", &[&y, &w], &[]);
        Ok(self.g.node("Add", &[&y, &b], &[]))
    }

    fn to_tokens(&mut self, x: &String) -> String {
        let y = self.reshape(x, &[0, 0, -1]);
        self.transpose(&y, &[0, 2, 1])
    }

    fn from_tokens(&mut self, x: &String, h: usize, w: usize) -> String {
        let y = self.transpose(x, &[0, 2, 1]);
        self.reshape(&y, &[0, 0, h as i64, w as i64])
    }

    fn self_attention(&mut self, x: &String, name: &str, dim: usize, heads: usize) -> Result<String> {
        // Written with MatMul/Softmax only (ONNX's Attention op is opset 23): per head
        // softmax(q k^T / sqrt(d)) v, heads concatenated, then the output projection.
        anyhow::ensure!(dim.is_multiple_of(heads), "{name}: {dim} channels do not split into {heads} heads");
        let d = dim / heads;
        let w_in = self.weights.get(&format!("{name}.in_proj_weight"), &[3 * dim, dim])?;
        let b_in = self.weights.get(&format!("{name}.in_proj_bias"), &[3 * dim])?;
        let w_out = self.weights.get(&format!("{name}.out_proj.weight"), &[dim, dim])?;
        let b_out = self.weights.get(&format!("{name}.out_proj.bias"), &[dim])?;
        let mut qkv = Vec::new();
        for (k, part) in ["q", "k", "v"].iter().enumerate() {
            let w = &w_in[k * dim * dim..(k + 1) * dim * dim];
            let b = &b_in[k * dim..(k + 1) * dim];
            let bname = format!("{name}.in_proj_bias.{part}");
            let y = self.matmul_linear(x, &format!("{name}.in_proj_weight.{part}"), w, dim, dim, Some((&bname, b)));
            qkv.push(self.reshape(&y, &[0, 0, heads as i64, d as i64]));
        }
        let q = self.transpose(&qkv[0], &[0, 2, 1, 3]);
        let kt = self.transpose(&qkv[1], &[0, 2, 3, 1]);
        let v = self.transpose(&qkv[2], &[0, 2, 1, 3]);
        let s = self.g.node("MatMul", &[&q, &kt], &[]);
        let scale = self.scalar(1.0 / (d as f32).sqrt());
        let s = self.g.node("Mul", &[&s, &scale], &[]);
        let p = self.g.node("Softmax", &[&s], &[Attr::Int("axis", -1)]);
        let o = self.g.node("MatMul", &[&p, &v], &[]);
        let o = self.transpose(&o, &[0, 2, 1, 3]);
        let o = self.reshape(&o, &[0, 0, dim as i64]);
        let bname = format!("{name}.out_proj.bias");
        Ok(self.matmul_linear(&o, &format!("{name}.out_proj.weight"), &w_out, dim, dim, Some((&bname, &b_out))))
    }

    fn upsample2x(&mut self, x: &String, h: usize, w: usize) -> String {
        // Resize with align_corners is patchy across runtimes: bilinear 2x as A_h X A_w^T (MatMul).
        let ah = super::upsample_matrix(h);
        let aw = super::upsample_matrix(w);
        let mut awt = vec![0f32; w * 2 * w];
        for i in 0..2 * w {
            for j in 0..w {
                awt[j * 2 * w + i] = aw[i * w + j];
            }
        }
        let an = self.g.fresh("upsample_h");
        let ah = self.g.weight(&an, &[2 * h, h], &ah);
        let wn = self.g.fresh("upsample_wT");
        let awt = self.g.weight(&wn, &[w, 2 * w], &awt);
        let y = self.g.node("MatMul", &[x, &awt], &[]);
        self.g.node("MatMul", &[&ah, &y], &[])
    }

    fn add_channels(&mut self, x: &String, v: &String) -> String {
        let axes = self.ints(&[2, 3]);
        let v4 = self.g.node("Unsqueeze", &[v, &axes], &[]);
        self.g.node("Add", &[x, &v4], &[])
    }

    fn timestep_embedding(&mut self, t: &String, dim: usize) -> String {
        let f = super::timestep_frequencies(dim);
        let tf = self.g.node("Cast", &[t], &[Attr::Int("to", 1)]); // 1 = FLOAT
        let axes = self.ints(&[1]);
        let t2 = self.g.node("Unsqueeze", &[&tf, &axes], &[]);
        let fname = self.g.fresh("timestep_freqs");
        let fw = self.g.weight(&fname, &[1, dim / 2], &f);
        let a = self.g.node("Mul", &[&t2, &fw], &[]);
        let s = self.g.node("Sin", &[&a], &[]);
        let c = self.g.node("Cos", &[&a], &[]);
        self.g.node("Concat", &[&s, &c], &[Attr::Int("axis", 1)])
    }

    fn embedding_or_null(&mut self, labels: &String, name: &str, num: usize, dim: usize) -> Result<String> {
        // The table gets one extra row of zeros at index `num`: the null label adds nothing.
        let mut table = self.weights.get(&format!("{name}.weight"), &[num, dim])?;
        table.extend(std::iter::repeat_n(0.0, dim));
        let t = self.g.weight(&format!("{name}.weight_with_null"), &[num + 1, dim], &table);
        Ok(self.g.node("Gather", &[&t, labels], &[Attr::Int("axis", 0)]))
    }
}
