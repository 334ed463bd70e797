//! Planted cheats for the integrity checks' tests and calibration (RESULTS.md, "Integrity"):
//! a face generator that returns training images (a table of real images inside the ONNX, picked by
//! an index computed from the latent), optionally for only a fraction of its latents, and a
//! re-exported copy of a model (renamed nodes and values, reordered initializers, another opset, a
//! constant folded in, small weight noise).

use anyhow::{bail, ensure, Context, Result};
use image::RgbImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, StandardNormal};
use tract_onnx::pb::{self, attribute_proto::AttributeType, tensor_proto::DataType};

use crate::onnx::writer::{Dim, Elem, GraphBuilder};

fn node(op: &str, inputs: &[&str], output: &str, attrs: Vec<pb::AttributeProto>) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: format!("plant_{output}"),
        attribute: attrs,
        ..Default::default()
    }
}

fn int_attr(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i: v, ..Default::default() }
}

fn tensor(name: &str, dims: &[i64], dt: DataType, raw: Vec<u8>) -> pb::TensorProto {
    pb::TensorProto { name: name.into(), dims: dims.to_vec(), data_type: dt as i32, raw_data: raw, ..Default::default() }
}

fn f32_tensor(name: &str, dims: &[i64], v: &[f32]) -> pb::TensorProto {
    tensor(name, dims, DataType::Float, v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

/// The copying part: `z_flat` [N, L] -> a table row in [-1, 1] CHW, as value `copy`.
fn copier_nodes(g: &mut pb::GraphProto, z_flat: &str, table: &[RgbImage], latent_dim: usize, seed: u64) -> Result<()> {
    ensure!(!table.is_empty(), "the copier needs at least one training image");
    let (w, h) = table[0].dimensions();
    ensure!(table.iter().all(|t| t.dimensions() == (w, h)), "the table's images must share one size");
    let k = table.len();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let proj: Vec<f32> = (0..latent_dim * k).map(|_| StandardNormal.sample(&mut rng)).collect();
    let mut raw = Vec::with_capacity(k * 3 * (w * h) as usize);
    for img in table {
        for c in 0..3 {
            raw.extend(img.pixels().map(|p| p[c]));
        }
    }
    g.initializer.push(f32_tensor("plant_projection", &[latent_dim as i64, k as i64], &proj));
    g.initializer.push(tensor("plant_table", &[k as i64, 3, h as i64, w as i64], DataType::Uint8, raw));
    g.initializer.push(f32_tensor("plant_scale", &[], &[2.0 / 255.0]));
    g.initializer.push(f32_tensor("plant_shift", &[], &[-1.0]));
    g.node.push(node("MatMul", &[z_flat, "plant_projection"], "plant_scores", vec![]));
    g.node.push(node("ArgMax", &["plant_scores"], "plant_index", vec![int_attr("axis", 1), int_attr("keepdims", 0)]));
    g.node.push(node("Gather", &["plant_table", "plant_index"], "plant_rows", vec![int_attr("axis", 0)]));
    g.node.push(node("Cast", &["plant_rows"], "plant_rows_f", vec![int_attr("to", DataType::Float as i64)]));
    g.node.push(node("Mul", &["plant_rows_f", "plant_scale"], "plant_scaled", vec![]));
    g.node.push(node("Add", &["plant_scaled", "plant_shift"], "copy", vec![]));
    Ok(())
}

/// A generator (graders/CONTRACT.md: `z` [N, latent_dim] -> `image` [N, 3, H, W] in [-1, 1]) that
/// returns one of `table`'s images for every latent: the row is the ArgMax of a seeded projection of
/// the latent, so different latents pick different training images.
pub fn memorising_generator(table: &[RgbImage], latent_dim: usize, seed: u64) -> Result<pb::ModelProto> {
    let (w, h) = table.first().map(|t| t.dimensions()).context("empty table")?;
    let mut b = GraphBuilder::new("memorising_generator");
    b.input("z", Elem::F32, &[Dim::Symbol("N"), Dim::Fixed(latent_dim)]);
    b.metadata("kind", "generator");
    b.metadata("latent_dim", latent_dim);
    b.metadata("output_range", "-1,1");
    b.metadata("description", "planted memorising generator: returns training images picked by the latent");
    let mut m = b.build();
    let g = m.graph.as_mut().expect("graph");
    copier_nodes(g, "z", table, latent_dim, seed)?;
    g.output.push(output_info("image", h as usize, w as usize));
    g.node.push(node("Identity", &["copy"], "image", vec![]));
    Ok(m)
}

fn output_info(name: &str, h: usize, w: usize) -> pb::ValueInfoProto {
    // The writer's value-info shape: [N, 3, h, w] f32.
    let mut b = GraphBuilder::new("x");
    b.output(name, name, Elem::F32, &[Dim::Symbol("N"), Dim::Fixed(3), Dim::Fixed(h), Dim::Fixed(w)]);
    b.build().graph.expect("graph").output.remove(0)
}

/// `base` (a generator) that returns a training image instead of its own output for a `fraction` of
/// the latents (those whose first coordinate lies above the standard normal's 1 - fraction quantile).
pub fn partly_memorising_generator(base: &pb::ModelProto, table: &[RgbImage], fraction: f64, seed: u64) -> Result<pb::ModelProto> {
    ensure!((0.0..1.0).contains(&fraction) && fraction > 0.0, "fraction {fraction} must be in (0, 1)");
    let mut m = base.clone();
    let latent_dim: usize = m
        .metadata_props
        .iter()
        .find(|p| p.key == "latent_dim")
        .and_then(|p| p.value.parse().ok())
        .context("the base generator has no latent_dim metadata")?;
    let range = m.metadata_props.iter().find(|p| p.key == "output_range").map(|p| p.value.replace(' ', ""));
    ensure!(range.as_deref().is_none_or(|r| r == "-1,1"), "the base generator must output [-1, 1]");
    let g = m.graph.as_mut().context("no graph")?;
    let z = g.input.first().context("no input")?.name.clone();
    let out = g.output.first().context("no output")?.name.clone();
    // The base's output value becomes `plant_honest`.
    for n in g.node.iter_mut() {
        for o in n.output.iter_mut().chain(n.input.iter_mut()) {
            if *o == out {
                *o = "plant_honest".into();
            }
        }
    }
    g.node.push(node("Flatten", &[&z], "plant_z", vec![int_attr("axis", 1)]));
    copier_nodes(g, "plant_z", table, latent_dim, seed)?;
    let threshold = inverse_normal_cdf(1.0 - fraction) as f32;
    g.initializer.push(tensor("plant_first", &[1], DataType::Int64, 0i64.to_le_bytes().to_vec()));
    g.initializer.push(f32_tensor("plant_threshold", &[], &[threshold]));
    g.initializer.push(tensor("plant_mask_shape", &[4], DataType::Int64, [-1i64, 1, 1, 1].iter().flat_map(|v| v.to_le_bytes()).collect()));
    g.node.push(node("Gather", &["plant_z", "plant_first"], "plant_z0", vec![int_attr("axis", 1)]));
    g.node.push(node("Greater", &["plant_z0", "plant_threshold"], "plant_mask2", vec![]));
    g.node.push(node("Reshape", &["plant_mask2", "plant_mask_shape"], "plant_mask", vec![]));
    g.node.push(node("Where", &["plant_mask", "copy", "plant_honest"], &out, vec![]));
    Ok(m)
}

/// Acklam's rational approximation of the standard normal quantile (relative error < 1.2e-9).
pub fn inverse_normal_cdf(p: f64) -> f64 {
    const A: [f64; 6] =
        [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.383_577_518_672_69e2, -3.066479806614716e1, 2.506628277459239];
    const B: [f64; 5] = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
    const C: [f64; 6] =
        [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
    const D: [f64; 4] = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5]) / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// What a re-export changes.
#[derive(Debug, Clone)]
pub struct Reexport {
    /// Standard deviation of the Gaussian noise added to every float weight (absolute).
    pub noise: f32,
    /// The opset to declare (None: keep).
    pub opset: Option<i64>,
    /// Multiply the output by a folded-in constant 1 (one more node and initializer).
    pub fold_constant: bool,
    pub seed: u64,
}

/// A copy of `model` as a student re-exporting someone else's model would hand it in: every node and
/// internal value renamed, initializers renamed and in reverse order, noise on the float weights,
/// optionally another opset and an extra constant node. Graph inputs and outputs keep their names
/// (the contract needs them).
pub fn reexport(model: &pb::ModelProto, how: &Reexport) -> Result<pb::ModelProto> {
    let mut m = model.clone();
    let g = m.graph.as_mut().context("no graph")?;
    let keep: Vec<String> = g.input.iter().chain(g.output.iter()).map(|v| v.name.clone()).collect();
    let mut map = std::collections::HashMap::<String, String>::new();
    for (i, t) in g.initializer.iter().enumerate() {
        map.insert(t.name.clone(), format!("param_{i:03}_{:x}", (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40));
    }
    for (i, n) in g.node.iter().enumerate() {
        for (j, o) in n.output.iter().enumerate() {
            if !keep.contains(o) && !o.is_empty() {
                map.insert(o.clone(), format!("tensor_{i}_{j}"));
            }
        }
    }
    let rename = |s: &mut String| {
        if let Some(n) = map.get(s.as_str()) {
            *s = n.clone();
        }
    };
    for (i, n) in g.node.iter_mut().enumerate() {
        n.name = format!("/renamed/op_{i}");
        n.input.iter_mut().for_each(rename);
        n.output.iter_mut().for_each(rename);
    }
    for v in g.value_info.iter_mut() {
        rename(&mut v.name);
    }
    let noise = Normal::new(0.0f32, how.noise.max(0.0)).context("noise")?;
    let mut rng = ChaCha8Rng::seed_from_u64(how.seed);
    for t in g.initializer.iter_mut() {
        rename(&mut t.name);
        if t.data_type == DataType::Float as i32 && how.noise > 0.0 {
            if !t.raw_data.is_empty() {
                let mut v: Vec<f32> = t.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                v.iter_mut().for_each(|x| *x += noise.sample(&mut rng));
                t.raw_data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            } else {
                t.float_data.iter_mut().for_each(|x| *x += noise.sample(&mut rng));
            }
        }
    }
    g.initializer.reverse();
    if how.fold_constant {
        let out = g.output.first().context("no output")?.name.clone();
        let Some(producer) = g.node.iter_mut().find(|n| n.output.contains(&out)) else { bail!("nothing produces {out}") };
        producer.output.iter_mut().filter(|o| **o == out).for_each(|o| *o = "folded_pre".into());
        g.initializer.push(f32_tensor("folded_one", &[], &[1.0]));
        g.node.push(node("Mul", &["folded_pre", "folded_one"], &out, vec![]));
    }
    if let Some(o) = how.opset {
        let from = m.opset_import.iter().find(|o| o.domain.is_empty()).map(|o| o.version).unwrap_or(1);
        // Opset 18 moved the Reduce* ops' `axes` from an attribute to an input (ReduceSum in 13).
        let g = m.graph.as_mut().context("no graph")?;
        let mut extra = vec![];
        for (i, n) in g.node.iter_mut().enumerate() {
            let moved = if n.op_type == "ReduceSum" { 13 } else { 18 };
            if n.op_type.starts_with("Reduce") && from < moved && o >= moved {
                if let Some(k) = n.attribute.iter().position(|a| a.name == "axes") {
                    let axes = n.attribute.remove(k).ints;
                    let name = format!("axes_{i}");
                    extra.push(tensor(&name, &[axes.len() as i64], DataType::Int64, axes.iter().flat_map(|v| v.to_le_bytes()).collect()));
                    n.input.push(name);
                }
            }
        }
        g.initializer.extend(extra);
        for op in m.opset_import.iter_mut().filter(|o| o.domain.is_empty()) {
            op.version = o;
        }
    }
    m.producer_name = "pytorch".into();
    m.producer_version = "2.11.0".into();
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_quantiles() {
        assert!((inverse_normal_cdf(0.9) - 1.2815515655).abs() < 1e-6);
        assert!((inverse_normal_cdf(0.5)).abs() < 1e-9);
        assert!((inverse_normal_cdf(0.01) + 2.3263478740).abs() < 1e-6);
    }
}
