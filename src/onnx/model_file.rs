//! Reading an ONNX file safely: size limits, protobuf decoding, and a summary of what the model
//! declares (inputs, outputs, metadata, operators, weights). Everything that comes from a student is
//! checked here before any runtime sees it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
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
    DataType::try_from(code).map(|d| d.as_str_name().to_lowercase()).unwrap_or_else(|_| format!("unknown({code})"))
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
        count = count.saturating_mul(d as u64);
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
        let stored =
            t.float_data.len() + t.int32_data.len() + t.int64_data.len() + t.double_data.len() + t.uint64_data.len() + t.string_data.len();
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

/// Walks every part of a model that can hold a tensor, a graph or an operator: the main graph,
/// every subgraph (`If`/`Loop`/`Scan` bodies, graph attributes), every model-local function, and
/// every attribute. Anything that can hold data and is not walked here is refused: sparse tensors
/// (`sparse_initializer`, `sparse_tensor`/`sparse_tensors` attributes) and training graphs
/// (`training_info`). Runtimes get the model re-encoded from what was walked
/// ([`ModelFile::runtime_bytes`]), so fields this reader does not know never reach them.
struct Walker<'a> {
    limits: &'a ModelLimits,
    path: &'a Path,
    ops: BTreeSet<String>,
    params: u64,
}

/// Most int64 values kept per constant for the fold check (shapes, repeats, scalars).
const FOLD_INTS: usize = 64;

/// What is statically known about a value computed from constants only (ONNX Runtime folds such
/// nodes when it builds a session, allocating their outputs before any input is seen).
#[derive(Clone)]
struct Folded {
    shape: Vec<u64>,
    /// Its int values, when small and integer.
    ints: Option<Vec<i64>>,
}

/// A node as errors name it: its name, or its first output when it has none.
fn node_label(n: &pb::NodeProto) -> String {
    match (n.name.is_empty(), n.output.first()) {
        (false, _) => format!("node '{}'", n.name),
        (true, Some(o)) if !o.is_empty() => format!("the node making '{o}'"),
        _ => "an unnamed node".into(),
    }
}

fn op_name(domain: &str, op: &str) -> String {
    if domain.is_empty() || domain == "ai.onnx" {
        op.to_string()
    } else {
        format!("{domain}::{op}")
    }
}

fn tensor_ints(t: &pb::TensorProto) -> Option<Vec<i64>> {
    let n = t.dims.iter().fold(1u64, |a, &d| a.saturating_mul(d.max(0) as u64));
    if n as usize > FOLD_INTS {
        return None;
    }
    match DataType::try_from(t.data_type).ok()? {
        DataType::Int64 if !t.raw_data.is_empty() => {
            Some(t.raw_data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect())
        }
        DataType::Int64 => Some(t.int64_data.clone()),
        DataType::Int32 if !t.raw_data.is_empty() => {
            Some(t.raw_data.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect())
        }
        DataType::Int32 => Some(t.int32_data.iter().map(|&v| v as i64).collect()),
        _ => None,
    }
}

fn broadcast(shapes: &[&Vec<u64>]) -> Vec<u64> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    (0..rank).map(|i| shapes.iter().map(|s| if i + s.len() >= rank { s[i + s.len() - rank] } else { 1 }).max().unwrap_or(1)).collect()
}

/// Element-wise operators whose output has the broadcast shape of their inputs.
const ELEMENTWISE: &[&str] = &[
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "Where",
    "And",
    "Or",
    "Xor",
    "Equal",
    "Less",
    "Greater",
    "LessOrEqual",
    "GreaterOrEqual",
    "Mod",
    "BitShift",
    "Cast",
    "CastLike",
    "Neg",
    "Abs",
    "Exp",
    "Log",
    "Sqrt",
    "Relu",
    "Sigmoid",
    "Tanh",
    "Identity",
    "Not",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Reciprocal",
    "Clip",
    "Sin",
    "Cos",
    "Erf",
    "LeakyRelu",
    "Softplus",
];

impl Walker<'_> {
    fn fail<T>(&self, what: String) -> Result<T> {
        bail!("{}: {what}", self.path.display())
    }

    fn graph(&mut self, g: &pb::GraphProto, depth: usize, outer: &HashMap<String, Folded>) -> Result<()> {
        if depth > 16 {
            return self.fail("subgraphs nested more than 16 deep".into());
        }
        if !g.sparse_initializer.is_empty() {
            return self.fail(format!(
                "graph '{}' has {} sparse initializer(s) (sparse_initializer), which the grader does not read; export dense weights",
                g.name,
                g.sparse_initializer.len()
            ));
        }
        let mut known = outer.clone();
        for t in &g.initializer {
            self.params += check_tensor(t, self.limits, self.path)?;
            known.insert(t.name.clone(), Folded { shape: t.dims.iter().map(|&d| d as u64).collect(), ints: tensor_ints(t) });
        }
        // Graph inputs shadow initializers of the same name (older exporters list weights as inputs):
        // such a value can be fed, so it is not a constant.
        for i in &g.input {
            if !g.initializer.iter().any(|t| t.name == i.name) {
                known.remove(&i.name);
            }
        }
        self.nodes(&g.node, depth, &mut known)
    }

    fn nodes(&mut self, nodes: &[pb::NodeProto], depth: usize, known: &mut HashMap<String, Folded>) -> Result<()> {
        for n in nodes {
            self.ops.insert(op_name(&n.domain, &n.op_type));
            for a in &n.attribute {
                self.attribute(n, a, depth, known)?;
            }
            self.fold(n, known)?;
        }
        Ok(())
    }

    fn attribute(&mut self, n: &pb::NodeProto, a: &pb::AttributeProto, depth: usize, known: &HashMap<String, Folded>) -> Result<()> {
        if a.sparse_tensor.is_some() || !a.sparse_tensors.is_empty() {
            return self.fail(format!(
                "{} ({}) has a sparse tensor in attribute '{}' (sparse_tensor), which the grader does not read; \
                 export the constant as a dense tensor",
                node_label(n),
                n.op_type,
                a.name
            ));
        }
        if let Some(t) = &a.t {
            check_tensor(t, self.limits, self.path)?;
        }
        for t in &a.tensors {
            check_tensor(t, self.limits, self.path)?;
        }
        if let Some(sub) = &a.g {
            self.graph(sub, depth + 1, known)?;
        }
        for sub in &a.graphs {
            self.graph(sub, depth + 1, known)?;
        }
        Ok(())
    }

    fn function(&mut self, f: &pb::FunctionProto) -> Result<()> {
        // A function's values come from its inputs: nothing inside is known to be constant except what
        // its own Constant nodes make.
        let mut known = HashMap::new();
        self.nodes(&f.node, 1, &mut known)
    }

    /// Records what a node computes from constants only, refusing outputs that would be too large
    /// once folded (a `ConstantOfShape` to 2^30 floats, a `Tile` or `Expand` of a small constant...).
    fn fold(&self, n: &pb::NodeProto, known: &mut HashMap<String, Folded>) -> Result<()> {
        let attr = |name: &str| n.attribute.iter().find(|a| a.name == name);
        let ins: Option<Vec<&Folded>> = n.input.iter().filter(|i| !i.is_empty()).map(|i| known.get(i)).collect();
        let out: Option<Folded> = match (n.op_type.as_str(), ins) {
            ("Constant", _) => {
                if let Some(t) = attr("value").and_then(|a| a.t.as_ref()) {
                    Some(Folded { shape: t.dims.iter().map(|&d| d as u64).collect(), ints: tensor_ints(t) })
                } else if let Some(a) = attr("value_ints") {
                    Some(Folded { shape: vec![a.ints.len() as u64], ints: Some(a.ints.clone()).filter(|v| v.len() <= FOLD_INTS) })
                } else if let Some(a) = attr("value_int") {
                    Some(Folded { shape: vec![], ints: Some(vec![a.i]) })
                } else if let Some(a) = attr("value_floats") {
                    Some(Folded { shape: vec![a.floats.len() as u64], ints: None })
                } else {
                    attr("value_float").map(|_| Folded { shape: vec![], ints: None })
                }
            }
            (_, None) => None,
            ("ConstantOfShape", Some(ins)) => {
                let dims = ins.first().and_then(|s| s.ints.clone());
                dims.map(|d| Folded { shape: d.iter().map(|&v| v.max(0) as u64).collect(), ints: None })
            }
            ("Expand", Some(ins)) if ins.len() == 2 => ins[1].ints.as_ref().map(|d| {
                let target: Vec<u64> = d.iter().map(|&v| v.max(0) as u64).collect();
                Folded { shape: broadcast(&[&ins[0].shape, &target]), ints: None }
            }),
            ("Tile", Some(ins)) if ins.len() == 2 => ins[1].ints.as_ref().map(|r| Folded {
                shape: ins[0]
                    .shape
                    .iter()
                    .zip(r.iter().chain(std::iter::repeat(&1)))
                    .map(|(&d, &k)| d.saturating_mul(k.max(0) as u64))
                    .collect(),
                ints: None,
            }),
            ("Range", Some(ins)) if ins.len() == 3 => match (&ins[0].ints, &ins[1].ints, &ins[2].ints) {
                (Some(s), Some(l), Some(d)) if s.len() == 1 && l.len() == 1 && d.len() == 1 && d[0] != 0 => {
                    let n = (l[0] as i128 - s[0] as i128 + d[0] as i128 - d[0].signum() as i128) / d[0] as i128;
                    Some(Folded { shape: vec![n.clamp(0, u64::MAX as i128) as u64], ints: None })
                }
                _ => None,
            },
            ("MatMul", Some(ins)) if ins.len() == 2 && ins[0].shape.len() >= 2 && ins[1].shape.len() >= 2 => {
                let (a, b) = (&ins[0].shape, &ins[1].shape);
                let mut shape = broadcast(&[&a[..a.len() - 2].to_vec(), &b[..b.len() - 2].to_vec()]);
                shape.push(a[a.len() - 2]);
                shape.push(b[b.len() - 1]);
                Some(Folded { shape, ints: None })
            }
            ("Concat", Some(ins)) if !ins.is_empty() => {
                let rank = ins[0].shape.len() as i64;
                let axis = attr("axis").map(|a| a.i).unwrap_or(0);
                let axis = if axis < 0 { axis + rank } else { axis };
                if (0..rank).contains(&axis) && ins.iter().all(|f| f.shape.len() as i64 == rank) {
                    let mut shape = ins[0].shape.clone();
                    shape[axis as usize] = ins.iter().map(|f| f.shape[axis as usize]).fold(0u64, u64::saturating_add);
                    Some(Folded { shape, ints: None })
                } else {
                    None
                }
            }
            (op, Some(ins)) if ELEMENTWISE.contains(&op) && !ins.is_empty() => {
                let shapes: Vec<&Vec<u64>> = ins.iter().map(|f| &f.shape).collect();
                let ints = if matches!(op, "Identity" | "Cast") { ins[0].ints.clone() } else { None };
                Some(Folded { shape: broadcast(&shapes), ints })
            }
            _ => None,
        };
        let Some(out) = out else { return Ok(()) };
        let elems = out.shape.iter().fold(1u64, |a, &d| a.saturating_mul(d));
        if elems.saturating_mul(4) > self.limits.max_tensor_bytes {
            return self.fail(format!(
                "{} ({}) computes a constant of shape {:?} ({elems} elements) from constants alone; a runtime \
                 folds it when the model loads, over the limit of {} bytes per tensor. Refused before loading: \
                 compute it from the model's inputs, or make it smaller",
                node_label(n),
                n.op_type,
                out.shape,
                self.limits.max_tensor_bytes
            ));
        }
        if let Some(o) = n.output.first().filter(|o| !o.is_empty()) {
            known.insert(o.clone(), out);
        }
        Ok(())
    }
}

impl ModelFile {
    /// Reads and checks a model file. Every failure names the file and says what to do.
    pub fn open(path: &Path, limits: &ModelLimits) -> Result<ModelFile> {
        let _loading = crate::memory::activity(format!("reading model {}", path.display()));
        let bytes = crate::safe_fs::read_regular(path, limits.max_file_bytes, "model")?;
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
            bail!("{}: graph output '{}' is not produced by any node, input or initializer; the file is corrupt", path.display(), o.name);
        }
        let opset = proto.opset_import.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map(|o| o.version);
        if !proto.training_info.is_empty() {
            bail!(
                "{}: the model carries training graphs (training_info), which the grader does not read; export the inference model only",
                path.display()
            );
        }
        let mut walker = Walker { limits, path, ops: BTreeSet::new(), params: 0 };
        walker.graph(graph, 0, &HashMap::new())?;
        for f in &proto.functions {
            walker.function(f)?;
        }
        let (ops, parameters) = (walker.ops, walker.params);
        let initializers: BTreeSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        // Older exporters list weights among the inputs; those are not inputs the grader feeds.
        let inputs: Vec<Port> = graph.input.iter().filter(|v| !initializers.contains(v.name.as_str())).map(port).collect();
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
        Ok(ModelFile { path: path.to_path_buf(), bytes, inputs, outputs, metadata, ops, opset, parameters, proto })
    }

    /// The model as runtimes get it: re-encoded from the proto that was decoded and walked, so a field
    /// this reader does not know (and so never checked) cannot reach ONNX Runtime.
    pub fn runtime_bytes(&self) -> Vec<u8> {
        self.proto.encode_to_vec()
    }

    pub fn input(&self, name: &str) -> Option<&Port> {
        self.inputs.iter().find(|p| p.name == name)
    }

    pub fn output(&self, name: &str) -> Option<&Port> {
        self.outputs.iter().find(|p| p.name == name)
    }
}
