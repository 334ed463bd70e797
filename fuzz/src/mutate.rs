//! A structure-aware mutator for the `model_contract` target (issue 25, classes 1 and 2): byte-level
//! mutation rarely keeps a protobuf decodable, so it seldom reaches the fields that were never walked
//! (model-local functions, sparse tensors, training graphs) or the numbers that size buffers
//! (metadata, a fixed batch, constant shapes). This decodes the model, makes one such change and
//! encodes it again. Also included by `tests/fuzz_regressions.rs`, which runs it over the corpus.

use prost::Message;
use tract_onnx::pb;

/// A small deterministic generator (xorshift), seeded by libFuzzer's seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Numbers at the edges of what a grader might size a buffer by.
const INTERESTING: &[i64] = &[-1, 0, 1, 1024, 1025, 65_536, 100_001, 1 << 31, (1 << 31) - 1, 1 << 40, i64::MAX, i64::MIN];

fn interesting(r: &mut Rng) -> i64 {
    INTERESTING[r.below(INTERESTING.len())]
}

fn external(name: &str) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: vec![4],
        data_type: pb::tensor_proto::DataType::Float as i32,
        data_location: Some(pb::tensor_proto::DataLocation::External as i32),
        external_data: vec![pb::StringStringEntryProto { key: "location".into(), value: "../secret.bin".into() }],
        ..Default::default()
    }
}

fn constant_node(out: &str, t: pb::TensorProto) -> pb::NodeProto {
    pb::NodeProto {
        op_type: "Constant".into(),
        output: vec![out.into()],
        attribute: vec![pb::AttributeProto { name: "value".into(), r#type: 4, t: Some(t), ..Default::default() }],
        ..Default::default()
    }
}

/// One structural change to the model in `data`; `None` when `data` is not a model with a graph.
pub fn mutate_model(data: &[u8], seed: u32) -> Option<Vec<u8>> {
    let mut m = pb::ModelProto::decode(data).ok()?;
    let mut r = Rng(0x9e37_79b9_7f4a_7c15 ^ seed as u64);
    let g = m.graph.as_mut()?;
    match r.below(10) {
        // Metadata that sizes buffers, set to an edge value.
        0 => {
            let key = ["timesteps", "latent_dim", "num_classes", "null_label", "guidance_scale"][r.below(5)];
            let value = interesting(&mut r).to_string();
            m.metadata_props.retain(|e| e.key != key);
            m.metadata_props.push(pb::StringStringEntryProto { key: key.into(), value });
        }
        // A fixed batch (or any dimension) of a port set to an edge value.
        1 => {
            let ports: Vec<&mut pb::ValueInfoProto> = g.input.iter_mut().chain(g.output.iter_mut()).collect();
            let n = ports.len();
            let p = ports.into_iter().nth(r.below(n))?;
            if let Some(pb::type_proto::Value::TensorType(t)) = p.r#type.as_mut().and_then(|t| t.value.as_mut()) {
                if let Some(s) = t.shape.as_mut() {
                    let k = r.below(s.dim.len());
                    if let Some(d) = s.dim.get_mut(k) {
                        d.value = Some(pb::tensor_shape_proto::dimension::Value::DimValue(interesting(&mut r)));
                    }
                }
            }
        }
        // A model-local function holding a graph node (with its attribute tensors), or one whose
        // Constant keeps its data in an external file.
        2 | 3 => {
            let node = if r.below(2) == 0 && !g.node.is_empty() {
                g.node[r.below(g.node.len())].clone()
            } else {
                constant_node("y", external("leak"))
            };
            m.functions.push(pb::FunctionProto {
                name: Some(format!("F{}", r.below(100))),
                domain: Some("local".into()),
                output: node.output.clone(),
                node: vec![node],
                ..Default::default()
            });
        }
        // A sparse tensor: in a Constant's attribute or as a sparse initializer, dense size at the edge.
        4 => {
            let values = pb::TensorProto { dims: vec![1], data_type: 1, float_data: vec![1.0], ..Default::default() };
            let indices = pb::TensorProto { dims: vec![1], data_type: 7, int64_data: vec![0], ..Default::default() };
            let sparse = pb::SparseTensorProto {
                values: Some(values),
                indices: Some(indices),
                dims: vec![interesting(&mut r).max(1), r.below(40_000) as i64 + 1],
            };
            if r.below(2) == 0 {
                g.sparse_initializer.push(sparse);
            } else {
                g.node.insert(
                    0,
                    pb::NodeProto {
                        op_type: "Constant".into(),
                        output: vec!["sparse_out".into()],
                        attribute: vec![pb::AttributeProto {
                            name: "sparse_value".into(),
                            r#type: 11,
                            sparse_tensor: Some(sparse),
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                );
            }
        }
        // A constant whose folded size is at the edge: ConstantOfShape, Tile or Expand of a constant.
        5 | 6 => {
            let shape = pb::TensorProto {
                name: "fold_shape".into(),
                dims: vec![2],
                data_type: 7,
                int64_data: vec![interesting(&mut r).clamp(0, 1 << 20), interesting(&mut r).clamp(0, 1 << 20)],
                ..Default::default()
            };
            let small =
                pb::TensorProto { name: "fold_small".into(), dims: vec![1, 1], data_type: 1, float_data: vec![1.0], ..Default::default() };
            g.initializer.push(shape);
            g.initializer.push(small);
            let (op, ins) = [
                ("ConstantOfShape", vec!["fold_shape"]),
                ("Tile", vec!["fold_small", "fold_shape"]),
                ("Expand", vec!["fold_small", "fold_shape"]),
            ][r.below(3)]
            .clone();
            g.node.insert(
                0,
                pb::NodeProto {
                    op_type: op.into(),
                    input: ins.iter().map(|s| s.to_string()).collect(),
                    output: vec!["fold_out".into()],
                    ..Default::default()
                },
            );
        }
        // A training graph (not walked: must be refused).
        7 => {
            let copy = g.clone();
            m.training_info.push(pb::TrainingInfoProto { initialization: Some(copy), ..Default::default() });
        }
        // A stored tensor moved outside the file, or given edge dimensions.
        _ => {
            if g.initializer.is_empty() {
                g.initializer.push(external("w_ext"));
            } else {
                let k = r.below(g.initializer.len());
                let t = &mut g.initializer[k];
                if r.below(2) == 0 {
                    let name = t.name.clone();
                    *t = external(&name);
                } else {
                    let j = r.below(t.dims.len().max(1));
                    if t.dims.is_empty() {
                        t.dims.push(interesting(&mut r));
                    } else {
                        t.dims[j] = interesting(&mut r);
                    }
                }
            }
        }
    }
    Some(m.encode_to_vec())
}
