//! Builds ONNX models from Rust: the exporter, the fixtures and the tests all go through here.
//!
//! The prost types come from `tract_onnx::pb`, so the grader needs no other protobuf code. Models are
//! written with IR version 8 and opset 17: the pair that loads in tract, in ONNX Runtime and passes
//! `onnx.checker` (see STACK.md).

use std::path::Path;

use anyhow::{Context, Result};
use prost::Message;
use tract_onnx::pb::{self, attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension, type_proto};

pub const IR_VERSION: i64 = 8;
pub const OPSET: i64 = 17;

/// One dimension of a graph input or output: a fixed size or a named symbol (the dynamic batch `N`).
#[derive(Debug, Clone, PartialEq)]
pub enum Dim {
    Fixed(usize),
    Symbol(&'static str),
}

/// The element types the contract uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    F32,
    I64,
}

impl Elem {
    fn data_type(self) -> DataType {
        match self {
            Elem::F32 => DataType::Float,
            Elem::I64 => DataType::Int64,
        }
    }
}

/// A node attribute.
#[derive(Debug, Clone)]
pub enum Attr {
    Int(&'static str, i64),
    Ints(&'static str, Vec<i64>),
    Float(&'static str, f32),
    Str(&'static str, String),
}

impl Attr {
    fn to_proto(&self) -> pb::AttributeProto {
        let mut a = pb::AttributeProto::default();
        match self {
            Attr::Int(n, v) => {
                a.name = n.to_string();
                a.r#type = AttributeType::Int as i32;
                a.i = *v;
            }
            Attr::Ints(n, v) => {
                a.name = n.to_string();
                a.r#type = AttributeType::Ints as i32;
                a.ints = v.clone();
            }
            Attr::Float(n, v) => {
                a.name = n.to_string();
                a.r#type = AttributeType::Float as i32;
                a.f = *v;
            }
            Attr::Str(n, v) => {
                a.name = n.to_string();
                a.r#type = AttributeType::String as i32;
                a.s = v.as_bytes().to_vec();
            }
        }
        a
    }
}

/// Accumulates nodes, weights, inputs and outputs, then produces a `ModelProto`.
#[derive(Default)]
pub struct GraphBuilder {
    name: String,
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    inputs: Vec<pb::ValueInfoProto>,
    outputs: Vec<pb::ValueInfoProto>,
    metadata: Vec<(String, String)>,
    counter: usize,
}

pub(crate) fn value_info(name: &str, elem: Elem, dims: &[Dim]) -> pb::ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| pb::tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Fixed(v) => dimension::Value::DimValue(*v as i64),
                Dim::Symbol(s) => dimension::Value::DimParam(s.to_string()),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem.data_type() as i32,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl GraphBuilder {
    pub fn new(name: &str) -> Self {
        GraphBuilder { name: name.to_string(), ..Default::default() }
    }

    /// Declares a graph input and returns its value name.
    pub fn input(&mut self, name: &str, elem: Elem, dims: &[Dim]) -> String {
        self.inputs.push(value_info(name, elem, dims));
        name.to_string()
    }

    /// Exposes `value` as the graph output `name` (adding an Identity when the names differ).
    pub fn output(&mut self, name: &str, value: &str, elem: Elem, dims: &[Dim]) {
        if value != name {
            self.nodes.push(pb::NodeProto {
                op_type: "Identity".into(),
                input: vec![value.to_string()],
                output: vec![name.to_string()],
                name: format!("{name}_identity"),
                ..Default::default()
            });
        }
        self.outputs.push(value_info(name, elem, dims));
    }

    /// Adds an f32 weight tensor (row-major, little-endian raw data) and returns its name.
    pub fn weight(&mut self, name: &str, shape: &[usize], data: &[f32]) -> String {
        let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, shape, data.len(), DataType::Float, raw)
    }

    /// Adds an i64 constant tensor (shapes for Reshape, axes, ...) and returns its name.
    pub fn const_i64(&mut self, name: &str, shape: &[usize], data: &[i64]) -> String {
        let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializer(name, shape, data.len(), DataType::Int64, raw)
    }

    fn initializer(&mut self, name: &str, shape: &[usize], len: usize, dt: DataType, raw: Vec<u8>) -> String {
        assert_eq!(shape.iter().product::<usize>(), len, "initializer {name}: shape and data disagree");
        self.initializers.push(pb::TensorProto {
            name: name.to_string(),
            dims: shape.iter().map(|&d| d as i64).collect(),
            data_type: dt as i32,
            raw_data: raw,
            ..Default::default()
        });
        name.to_string()
    }

    /// Adds a node with one output and returns the output's (generated) name.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: &[Attr]) -> String {
        self.counter += 1;
        let out = format!("{}_{}", op.to_lowercase(), self.counter);
        self.nodes.push(pb::NodeProto {
            op_type: op.to_string(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            name: format!("{op}_{}", self.counter),
            attribute: attrs.iter().map(Attr::to_proto).collect(),
            ..Default::default()
        });
        out
    }

    /// A unique name with the given prefix, for weights of repeated blocks.
    pub fn fresh(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}_{}", self.counter)
    }

    /// Records a `metadata_props` entry (the keys graders read are listed in graders/CONTRACT.md).
    pub fn metadata(&mut self, key: &str, value: impl ToString) {
        self.metadata.push((key.to_string(), value.to_string()));
    }

    pub fn build(self) -> pb::ModelProto {
        pb::ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: OPSET }],
            producer_name: "gradekit".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            graph: Some(pb::GraphProto {
                name: self.name,
                node: self.nodes,
                initializer: self.initializers,
                input: self.inputs,
                output: self.outputs,
                ..Default::default()
            }),
            metadata_props: self.metadata.into_iter().map(|(key, value)| pb::StringStringEntryProto { key, value }).collect(),
            ..Default::default()
        }
    }
}

/// Serialises a model to bytes.
pub fn to_bytes(model: &pb::ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Writes a model atomically (temporary file in the same folder, then rename).
pub fn save(model: &pb::ModelProto, path: &Path) -> Result<()> {
    crate::report::write_atomic(path, &to_bytes(model)).with_context(|| format!("writing ONNX model {}", path.display()))
}
