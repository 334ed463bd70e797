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
}
