//! Reading an ONNX file safely: size limits, protobuf decoding, and a summary of what the model
//! declares (inputs, outputs, metadata, operators, weights). Everything that comes from a student is
//! checked here before any runtime sees it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use prost::Message;
use tract_onnx::pb::{self, tensor_proto::DataType, tensor_shape_proto::dimension};

/// Limits applied before anything is allocated for a model.
#[derive(Debug, Clone, Copy)]
pub struct ModelLimits {
    /// Largest model file accepted.
    pub max_file_bytes: u64,
    /// Largest single tensor (initializer, constant or declared input/output at batch 1), in bytes.
    pub max_tensor_bytes: u64,
}

impl Default for ModelLimits {
    fn default() -> Self {
        // The seed's largest model (the UNet) is ~18 MB; InceptionV3 is ~95 MB. 1 GiB leaves room for
        // any reasonable homework model while refusing absurd files.
        ModelLimits { max_file_bytes: 1 << 30, max_tensor_bytes: 1 << 30 }
    }
}

/// A dimension as declared in the file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub enum DeclaredDim {
    Fixed(i64),
    Symbol(String),
    Unknown,
}

impl std::fmt::Display for DeclaredDim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeclaredDim::Fixed(v) => write!(f, "{v}"),
            DeclaredDim::Symbol(s) => write!(f, "{s}"),
            DeclaredDim::Unknown => write!(f, "?"),
        }
    }
}

/// A graph input or output.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Port {
    pub name: String,
    /// ONNX element type name (`float`, `int64`, ...).
    pub elem: String,
    /// `None` when the file gives no shape at all.
    pub dims: Option<Vec<DeclaredDim>>,
}

impl Port {
    pub fn shape_string(&self) -> String {
        match &self.dims {
            None => "unknown".into(),
            Some(d) => format!("[{}]", d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
        }
    }
}

/// A decoded model and what it declares.
pub struct ModelFile {
    pub path: PathBuf,
    pub bytes: Vec<u8>,
    pub proto: pb::ModelProto,
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
    pub metadata: BTreeMap<String, String>,
    /// Operator types used, as `Op` for the default domain and `domain::Op` otherwise.
    pub ops: BTreeSet<String>,
    pub opset: Option<i64>,
    pub parameters: u64,
}

pub fn elem_name(code: i32) -> String {
    DataType::try_from(code)
        .map(|d| d.as_str_name().to_lowercase())
        .unwrap_or_else(|_| format!("unknown({code})"))
}

fn elem_size(code: i32) -> Option<u64> {
    Some(match DataType::try_from(code).ok()? {
        DataType::Float | DataType::Int32 | DataType::Uint32 => 4,
        DataType::Double | DataType::Int64 | DataType::Uint64 | DataType::Complex64 => 8,
        DataType::Float16 | DataType::Bfloat16 | DataType::Int16 | DataType::Uint16 => 2,
        DataType::Uint8 | DataType::Int8 | DataType::Bool => 1,
        DataType::Complex128 => 16,
        _ => return None,
    })
}

fn port(v: &pb::ValueInfoProto) -> Port {
    let (elem, dims) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(pb::type_proto::Value::TensorType(t)) => (
            elem_name(t.elem_type),
            t.shape.as_ref().map(|s| {
                s.dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(dimension::Value::DimValue(v)) => DeclaredDim::Fixed(*v),
                        Some(dimension::Value::DimParam(p)) if !p.is_empty() => DeclaredDim::Symbol(p.clone()),
                        _ => DeclaredDim::Unknown,
                    })
                    .collect()
            }),
        ),
        None => ("unknown".into(), None),
    };
    Port { name: v.name.clone(), elem, dims }
}

/// Checks one stored tensor: no external data, sane dimensions, size within limits, and stored bytes
/// that match the declared shape (a runtime would otherwise read past them or allocate blindly).
fn check_tensor(t: &pb::TensorProto, limits: &ModelLimits, path: &Path) -> Result<u64> {
    let name = if t.name.is_empty() { "<unnamed>" } else { t.name.as_str() };
    if t.data_location == Some(pb::tensor_proto::DataLocation::External as i32) || !t.external_data.is_empty() {
        bail!(
            "{}: tensor '{name}' keeps its data in an external file, which the grader does not read \
             (a submission must be one self-contained file). Re-export with the weights embedded, \
             e.g. torch.onnx.export(..., external_data=False), or onnx.save(model, path, save_as_external_data=False).",
            path.display()
        );
    }
    let mut count: u64 = 1;
    // The product of the non-zero dimensions: a runtime sizes buffers by it even for an empty tensor
    // ([2^57, 8, 0] made tract panic on overflow).
    let mut extent: u64 = 1;
    for &d in &t.dims {
        if d < 0 {
            bail!("{}: tensor '{name}' has a negative dimension ({d})", path.display());
        }
        count = count.checked_mul(d as u64).unwrap_or(u64::MAX);
        extent = extent.saturating_mul((d as u64).max(1));
    }
    let size = elem_size(t.data_type);
    if extent.saturating_mul(size.unwrap_or(1)) > limits.max_tensor_bytes {
        bail!(
            "{}: tensor '{name}' has dimensions {:?}, over the limit of {} bytes even without its zero dimensions; refused before loading",
            path.display(),
            t.dims,
            limits.max_tensor_bytes
        );
    }
    let bytes = size.map(|s| count.saturating_mul(s)).unwrap_or(0);
    if bytes > limits.max_tensor_bytes {
        bail!(
            "{}: tensor '{name}' declares {count} elements ({bytes} bytes), over the limit of {} bytes; refused before loading",
            path.display(),
            limits.max_tensor_bytes
        );
    }
    if !t.raw_data.is_empty() {
        // ONNX forbids raw_data for STRING and UNDEFINED tensors (tract panics on them).
        if size.is_none() && matches!(DataType::try_from(t.data_type), Ok(DataType::String | DataType::Undefined) | Err(_)) {
            bail!(
                "{}: tensor '{name}' stores raw bytes for element type {}, which ONNX does not allow; the file is corrupt",
                path.display(),
                elem_name(t.data_type)
            );
        }
        if let Some(s) = size {
            if t.raw_data.len() as u64 != count * s {
                bail!(
                    "{}: tensor '{name}' has {} bytes of data but its shape {:?} needs {}; the file is corrupt",
                    path.display(),
                    t.raw_data.len(),
                    t.dims,
                    count * s
                );
            }
        }
    } else {
        let stored = t.float_data.len() + t.int32_data.len() + t.int64_data.len() + t.double_data.len()
            + t.uint64_data.len() + t.string_data.len();
        if stored as u64 != count && !(stored == 0 && count == 0) {
            bail!(
                "{}: tensor '{name}' stores {stored} values but its shape {:?} needs {count}; the file is corrupt",
                path.display(),
                t.dims
            );
        }
    }
    Ok(count)
}

fn walk_graph(
    g: &pb::GraphProto,
    limits: &ModelLimits,
    path: &Path,
    ops: &mut BTreeSet<String>,
    params: &mut u64,
    depth: usize,
) -> Result<()> {
    if depth > 16 {
        bail!("{}: subgraphs nested more than 16 deep", path.display());
    }
    for t in &g.initializer {
        *params += check_tensor(t, limits, path)?;
    }
    if !g.sparse_initializer.is_empty() {
        bail!("{}: sparse initializers are not supported; export dense weights", path.display());
    }
    for n in &g.node {
        ops.insert(if n.domain.is_empty() || n.domain == "ai.onnx" {
            n.op_type.clone()
        } else {
            format!("{}::{}", n.domain, n.op_type)
        });
        for a in &n.attribute {
            if let Some(t) = &a.t {
                check_tensor(t, limits, path)?;
            }
            for t in &a.tensors {
                check_tensor(t, limits, path)?;
            }
            if let Some(sub) = &a.g {
                walk_graph(sub, limits, path, ops, params, depth + 1)?;
            }
            for sub in &a.graphs {
                walk_graph(sub, limits, path, ops, params, depth + 1)?;
            }
        }
    }
    Ok(())
}

impl ModelFile {
    /// Reads and checks a model file. Every failure names the file and says what to do.
    pub fn open(path: &Path, limits: &ModelLimits) -> Result<ModelFile> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot read model {}: check the path", path.display()))?;
        if !meta.is_file() {
            bail!("model {} is not a file", path.display());
        }
        if meta.len() > limits.max_file_bytes {
            bail!(
                "model {} is {} bytes, over the limit of {} bytes",
                path.display(),
                meta.len(),
                limits.max_file_bytes
            );
        }
        let bytes = std::fs::read(path).with_context(|| format!("cannot read model {}", path.display()))?;
        Self::from_bytes(path, bytes, limits)
    }

    pub fn from_bytes(path: &Path, bytes: Vec<u8>, limits: &ModelLimits) -> Result<ModelFile> {
        if bytes.is_empty() {
            bail!("model {} is empty (0 bytes): export the model again", path.display());
        }
        let proto = pb::ModelProto::decode(bytes.as_slice()).map_err(|e| {
            anyhow::anyhow!(
                "{} is not a readable ONNX model ({e}); the file may be truncated or not ONNX at all. \
                 Export it with torch.onnx.export(model, example_input, path)",
                path.display()
            )
        })?;
        let Some(graph) = proto.graph.as_ref() else {
            bail!("{} holds no graph: it is not an ONNX model (or an empty one)", path.display());
        };
        if graph.input.is_empty() || graph.output.is_empty() || graph.node.is_empty() {
            bail!(
                "{} has {} inputs, {} outputs and {} nodes: not a usable ONNX model",
                path.display(),
                graph.input.len(),
                graph.output.len(),
                graph.node.len()
            );
        }
        // Every graph output must come from an input, an initializer or a node (tract panics otherwise).
        let produced: BTreeSet<&str> = graph
            .input
            .iter()
            .map(|v| v.name.as_str())
            .chain(graph.initializer.iter().map(|t| t.name.as_str()))
            .chain(graph.node.iter().flat_map(|n| n.output.iter().map(String::as_str).filter(|o| !o.is_empty())))
            .collect();
        if let Some(o) = graph.output.iter().find(|o| !produced.contains(o.name.as_str())) {
            bail!(
                "{}: graph output '{}' is not produced by any node, input or initializer; the file is corrupt",
                path.display(),
                o.name
            );
        }
        let opset = proto
            .opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map(|o| o.version);
        let mut ops = BTreeSet::new();
        let mut parameters = 0;
        walk_graph(graph, limits, path, &mut ops, &mut parameters, 0)?;
        let initializers: BTreeSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        // Older exporters list weights among the inputs; those are not inputs the grader feeds.
        let inputs: Vec<Port> =
            graph.input.iter().filter(|v| !initializers.contains(v.name.as_str())).map(port).collect();
        let outputs: Vec<Port> = graph.output.iter().map(port).collect();
        for p in inputs.iter().chain(outputs.iter()) {
            if let Some(dims) = &p.dims {
                let mut n: u64 = 4;
                for d in dims {
                    if let DeclaredDim::Fixed(v) = d {
                        if *v < 0 {
                            bail!("{}: '{}' declares a negative dimension {v}", path.display(), p.name);
                        }
                        n = n.saturating_mul(*v as u64);
                    }
                }
                if n > limits.max_tensor_bytes {
                    bail!(
                        "{}: '{}' declares shape {} ({n} bytes per batch item), over the limit of {} bytes; refused before allocating",
                        path.display(),
                        p.name,
                        p.shape_string(),
                        limits.max_tensor_bytes
                    );
                }
            }
        }
        let metadata = proto.metadata_props.iter().map(|e| (e.key.clone(), e.value.clone())).collect();
        Ok(ModelFile {
            path: path.to_path_buf(),
            bytes,
            inputs,
            outputs,
            metadata,
            ops,
            opset,
            parameters,
            proto,
        })
    }

    pub fn input(&self, name: &str) -> Option<&Port> {
        self.inputs.iter().find(|p| p.name == name)
    }

    pub fn output(&self, name: &str) -> Option<&Port> {
        self.outputs.iter().find(|p| p.name == name)
    }
}
