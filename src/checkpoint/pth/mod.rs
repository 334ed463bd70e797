//! Read PyTorch `state_dict` checkpoints (`torch.save`) in pure Rust, without libtorch and without
//! running anything from the file.
//!
//! Formats: the zip format (torch >= 1.6: `<name>/data.pkl`, `<name>/data/<key>`, `<name>/byteorder`)
//! and the legacy single-stream format (`_use_new_zipfile_serialization=False`). Tensors of
//! float32/float16/bfloat16/float64 and integer/bool types are returned as f32; see [`TensorData`].
//!
//! Safety: the pickle is run by [`super::pickle`], which only knows an allowlist of globals. Every
//! size claimed by the file (tensor shape, strides, storage length) is checked with overflow-checked
//! arithmetic against the limits in [`Limits`] and against the bytes actually present *before* any
//! buffer of that size is allocated.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};

pub use super::pickle::DType;
use super::pickle::{self, PickleLimits, Unpickled, Value};
use storage::{materialize, Budget, Source};

mod storage;

/// One tensor, materialised in row-major (C) order whatever its strides were in the file.
///
/// `data` is always f32: float16/bfloat16 convert exactly, float64 rounds to nearest, and integer
/// or bool tensors (e.g. BatchNorm's int64 `num_batches_tracked`) convert exactly up to 2^24 in
/// magnitude. `dtype` records what the file held, so such buffers can be told apart or skipped.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorData {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    pub dtype: DType,
}

impl TensorData {
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// Caps on what a checkpoint may make us read or allocate. Exceeding one is an error, raised before
/// the allocation.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Size of the file on disk.
    pub max_file_bytes: u64,
    /// Size of the pickle stream (`data.pkl`).
    pub max_pickle_bytes: u64,
    /// One tensor's f32 output, and one storage's bytes as read from the file.
    pub max_tensor_bytes: u64,
    /// All storages read plus all f32 outputs of one call.
    pub max_total_bytes: u64,
    pub pickle: PickleLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_bytes: 8 << 30,
            max_pickle_bytes: 256 << 20,
            // The converted ONNX model may hold at most 1 GiB per tensor and 1 GiB in all
            // (`ModelLimits`): a checkpoint that needs more could not become a gradable model.
            max_tensor_bytes: 1 << 30,
            max_total_bytes: 2 << 30,
            pickle: PickleLimits::default(),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct LoadOptions<'a> {
    /// Top-level key holding the state_dict (e.g. "state_dict", "model", "netG"). `None`: use the
    /// root if it is a dict of tensors, else the single top-level entry that is one.
    pub key: Option<&'a str>,
    pub limits: Limits,
    /// Remove a detected wrapper prefix (`module.`, `_orig_mod.`) from every name.
    pub strip_wrapper_prefix: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Zip,
    Legacy,
}

#[derive(Clone, Debug)]
pub struct Loaded {
    pub tensors: BTreeMap<String, TensorData>,
    /// The top-level key the state_dict was found under (`None`: the root was the state_dict).
    pub source_key: Option<String>,
    /// A prefix every name had, added by a wrapper: `module.` (DataParallel / DDP) or `_orig_mod.`
    /// (torch.compile), possibly stacked. Reported whether or not it was stripped.
    pub wrapper_prefix: Option<String>,
    pub format: Format,
    pub big_endian: bool,
}

/// Read the state_dict of a checkpoint with default limits, auto-detecting where it is.
pub fn read_state_dict(path: &Path) -> Result<BTreeMap<String, TensorData>> {
    read_state_dict_key(path, None)
}

/// Like [`read_state_dict`], with the top-level key holding the state_dict given (or `None`).
pub fn read_state_dict_key(path: &Path, key: Option<&str>) -> Result<BTreeMap<String, TensorData>> {
    Ok(load(path, &LoadOptions { key, ..Default::default() })?.tensors)
}

/// Read a checkpoint with full control and report where the state_dict was and how it was named.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Loaded> {
    let _loading = crate::memory::activity(format!("reading checkpoint {}", path.display()));
    load_inner(path, opts).with_context(|| format!("reading PyTorch checkpoint {}", path.display()))
}

/// Names that the wrapper prefixes stack into, e.g. `module.` or `_orig_mod.module.`.
const WRAPPER_PREFIXES: &[&str] = &["module.", "_orig_mod."];

/// The wrapper prefix shared by *all* names, if any (`module.`, `_orig_mod.`, or a stack of them).
/// A real submodule name shared by all keys (e.g. `net.`) is not reported: it is part of the model.
pub fn detect_wrapper_prefix<'a, I>(names: I) -> Option<String>
where
    I: IntoIterator<Item = &'a String>,
    I::IntoIter: Clone,
{
    let names = names.into_iter();
    names.clone().next()?;
    let mut prefix = String::new();
    'outer: loop {
        for w in WRAPPER_PREFIXES {
            let cand = format!("{prefix}{w}");
            if names.clone().all(|n| n.starts_with(&cand) && n.len() > cand.len()) {
                prefix = cand;
                continue 'outer;
            }
        }
        break;
    }
    (!prefix.is_empty()).then_some(prefix)
}

/// Remove `prefix` from every name that has it (names without it are kept as they are). Two names
/// that become equal is an error rather than a silent overwrite.
pub fn strip_prefix(tensors: BTreeMap<String, TensorData>, prefix: &str) -> Result<BTreeMap<String, TensorData>> {
    let mut out = BTreeMap::new();
    for (name, t) in tensors {
        let new = name.strip_prefix(prefix).unwrap_or(&name).to_string();
        if out.insert(new.clone(), t).is_some() {
            bail!("stripping prefix {prefix:?} makes two tensors named {new:?}");
        }
    }
    Ok(out)
}

fn load_inner(path: &Path, opts: &LoadOptions<'_>) -> Result<Loaded> {
    let lim = &opts.limits;
    let file = crate::safe_fs::open_regular(path, "checkpoint")?;
    let len = file.metadata()?.len();
    ensure!(len > 0, "empty file (0 bytes): not a PyTorch checkpoint");
    ensure!(len <= lim.max_file_bytes, "file is {len} bytes, over the limit of {} bytes", lim.max_file_bytes);
    let mut head = [0u8; 4];
    let n = (&file).read(&mut head)?;
    let head = &head[..n];
    let mut src = if head.starts_with(b"PK\x03\x04") {
        Source::open_zip(file, len, lim, false)?
    } else if head.first() == Some(&0x80) {
        Source::open_legacy(file, len, lim)?
    } else if head.starts_with(b"PK") {
        bail!("zip archive that does not start with a local file header (empty or unusual zip); not written by torch.save")
    } else {
        bail!("not a PyTorch checkpoint: starts with bytes {head:02x?} (expected a zip archive or a pickle)")
    };

    let (sd, source_key) = select_state_dict(&src.pickle, opts.key)?;
    let mut budget = Budget { used: 0, max: lim.max_total_bytes };
    let mut cache: HashMap<String, Vec<u8>> = HashMap::new();
    let mut tensors = BTreeMap::new();
    for (name, v) in sd {
        let t = src.pickle.tensor(&v).expect("select_state_dict only returns tensors").clone();
        let td = materialize(&mut src, &t, lim, &mut budget, &mut cache).with_context(|| format!("tensor `{name}`"))?;
        tensors.insert(name, td);
    }
    let wrapper_prefix = detect_wrapper_prefix(tensors.keys());
    if opts.strip_wrapper_prefix {
        if let Some(p) = &wrapper_prefix {
            tensors = strip_prefix(tensors, p)?;
        }
    }
    Ok(Loaded { tensors, source_key, wrapper_prefix, format: src.format, big_endian: src.big_endian })
}

/// One module of a TorchScript archive (`torch.jit.save`), read as data: its tensors and integer
/// attributes in the order the archive lists them. Its code is never run (nor read).
#[derive(Clone, Debug)]
pub struct ScriptModule {
    /// Attribute path from the root, e.g. `net.layers.mixed_9.tower_conv` (empty for the root).
    pub path: String,
    pub class: &'static str,
    pub tensors: Vec<(String, TensorData)>,
    /// `int` and `List[int]` attributes (stride, padding, ...).
    pub ints: Vec<(String, Vec<i64>)>,
}

/// True when `path` is a zip whose records include TorchScript's `code/` folder: a `torch.jit.save`
/// archive rather than a `torch.save` checkpoint.
pub fn is_torchscript_archive(path: &Path) -> bool {
    let Ok(f) = crate::safe_fs::open_regular(path, "checkpoint") else { return false };
    let Ok(za) = zip::ZipArchive::new(BufReader::new(f)) else { return false };
    let found = za.file_names().flatten().any(|n| {
        let mut parts = n.split('/');
        parts.next().is_some() && parts.next() == Some("code") && parts.next().is_some()
    });
    found
}

/// Every module of a TorchScript archive in module order (depth first, attributes in file order),
/// with its tensors materialised under the same limits as [`load`]. Only the module classes the
/// pickle reader allows ([`pickle::resolve_script_global`]) can appear.
pub fn read_script_modules(path: &Path, lim: &Limits) -> Result<Vec<ScriptModule>> {
    read_script_inner(path, lim).with_context(|| format!("reading TorchScript archive {}", path.display()))
}

fn read_script_inner(path: &Path, lim: &Limits) -> Result<Vec<ScriptModule>> {
    let file = crate::safe_fs::open_regular(path, "checkpoint")?;
    let len = file.metadata()?.len();
    ensure!(len <= lim.max_file_bytes, "file is {len} bytes, over the limit of {} bytes", lim.max_file_bytes);
    let mut src = Source::open_zip(file, len, lim, true)?;
    let root = src.pickle.root.clone();
    ensure!(
        matches!(src.pickle.obj(&root), Some(pickle::Obj::Module { .. })),
        "data.pkl holds a {}, not a TorchScript module",
        src.pickle.type_name(&root)
    );
    let mut budget = Budget { used: 0, max: lim.max_total_bytes };
    let mut cache: HashMap<String, Vec<u8>> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    // Explicit stack, children pushed in reverse: pre-order in file order without recursion.
    let mut stack = vec![(String::new(), root)];
    while let Some((mpath, v)) = stack.pop() {
        let Value::Obj(idx) = v else { unreachable!("only modules are pushed") };
        // A module reached twice (shared, or a cycle made with the memo) is not a tree of layers.
        ensure!(seen.insert(idx), "module {mpath:?} appears twice in the archive");
        let Some(pickle::Obj::Module { class, state }) = src.pickle.objects.get(idx).cloned() else {
            unreachable!("only modules are pushed")
        };
        let state = state.ok_or_else(|| anyhow!("module {mpath:?} ({class}) has no attributes"))?;
        let items = src.pickle.dict(&state).map(|d| d.items.clone()).unwrap_or_default();
        let mut m = ScriptModule { path: mpath.clone(), class, tensors: Vec::new(), ints: Vec::new() };
        let mut children = Vec::new();
        for (k, val) in items {
            let Value::Str(k) = k else { bail!("module {mpath:?} has an attribute name that is not a string") };
            let child = if mpath.is_empty() { k.to_string() } else { format!("{mpath}.{k}") };
            match (&val, src.pickle.obj(&val)) {
                (_, Some(pickle::Obj::Module { .. })) => children.push((child, val.clone())),
                (_, Some(pickle::Obj::Tensor(t))) => {
                    let t = t.clone();
                    let td = materialize(&mut src, &t, lim, &mut budget, &mut cache).with_context(|| format!("tensor `{child}`"))?;
                    m.tensors.push((k.to_string(), td));
                }
                (Value::Int(i), _) => m.ints.push((k.to_string(), vec![*i])),
                (_, Some(pickle::Obj::List(l))) if !l.is_empty() && l.iter().all(|x| matches!(x, Value::Int(_))) => {
                    let l = l.iter().map(|x| if let Value::Int(i) = x { *i } else { 0 }).collect();
                    m.ints.push((k.to_string(), l));
                }
                _ => {} // flags such as `training`: no bearing on the weights
            }
        }
        out.push(m);
        stack.extend(children.into_iter().rev());
    }
    Ok(out)
}

/// (name, tensor value) pairs of the chosen state_dict, in file order.
type NamedTensors = Vec<(String, Value)>;

/// Find the state_dict: the root if every value is a tensor, else the one top-level entry that is a
/// dict of tensors (or the entry named by `key`). Returns (name, tensor value) pairs.
fn select_state_dict(u: &Unpickled, key: Option<&str>) -> Result<(NamedTensors, Option<String>)> {
    let root = u.dict(&u.root).ok_or_else(|| anyhow!("the checkpoint holds a {}, not a dict (state_dict)", u.type_name(&u.root)))?;
    if let Some(k) = key {
        let v = root.get_str(k).ok_or_else(|| anyhow!("key {k:?} not found; top-level keys: {}", describe_keys(u, &root.items)))?;
        let d = u.dict(v).ok_or_else(|| anyhow!("entry {k:?} is a {}, not a dict of tensors", u.type_name(v)))?;
        return Ok((tensor_entries(u, &d.items).with_context(|| format!("entry {k:?}"))?, Some(k.to_string())));
    }
    if is_tensor_dict(u, &root.items) {
        return Ok((tensor_entries(u, &root.items)?, None));
    }
    let candidates: Vec<(&str, &[(Value, Value)])> = root
        .items
        .iter()
        .filter_map(|(k, v)| match (k, u.dict(v)) {
            (Value::Str(k), Some(d)) if is_tensor_dict(u, &d.items) => Some((&**k, d.items.as_slice())),
            _ => None,
        })
        .collect();
    match candidates.as_slice() {
        [(k, items)] => Ok((tensor_entries(u, items)?, Some(k.to_string()))),
        [] => bail!(
            "no state_dict found: neither the root nor any top-level entry is a dict of tensors; top-level keys: {}",
            describe_keys(u, &root.items)
        ),
        many => bail!(
            "ambiguous checkpoint: {} top-level entries are dicts of tensors ({}); pass the key to use",
            many.len(),
            many.iter().map(|(k, _)| format!("{k:?}")).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn is_tensor_dict(u: &Unpickled, items: &[(Value, Value)]) -> bool {
    !items.is_empty() && items.iter().all(|(k, v)| matches!(k, Value::Str(_)) && u.tensor(v).is_some())
}

fn tensor_entries(u: &Unpickled, items: &[(Value, Value)]) -> Result<Vec<(String, Value)>> {
    ensure!(!items.is_empty(), "the state_dict is empty");
    items
        .iter()
        .map(|(k, v)| {
            let Value::Str(name) = k else { bail!("state_dict key is a {}, not a string", u.type_name(k)) };
            ensure!(u.tensor(v).is_some(), "state_dict entry {name:?} is a {}, not a tensor", u.type_name(v));
            Ok((name.to_string(), v.clone()))
        })
        .collect()
}

fn describe_keys(u: &Unpickled, items: &[(Value, Value)]) -> String {
    let mut parts: Vec<String> = items
        .iter()
        .take(20)
        .map(|(k, v)| match k {
            Value::Str(s) => format!("{s:?} ({})", u.type_name(v)),
            other => format!("<{}> ({})", u.type_name(other), u.type_name(v)),
        })
        .collect();
    if items.len() > 20 {
        parts.push(format!("... {} more", items.len() - 20));
    }
    if parts.is_empty() {
        "(none: empty dict)".into()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapper_prefix_detection() {
        let k = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(detect_wrapper_prefix(&k(&["module.a.weight", "module.b"])), Some("module.".into()));
        assert_eq!(detect_wrapper_prefix(&k(&["_orig_mod.module.a", "_orig_mod.module.b"])), Some("_orig_mod.module.".into()));
        assert_eq!(detect_wrapper_prefix(&k(&["module.a", "b"])), None);
        assert_eq!(detect_wrapper_prefix(&k(&["net.a", "net.b"])), None);
        assert_eq!(detect_wrapper_prefix(&k(&[])), None);
    }

    #[test]
    fn strip_prefix_refuses_collisions() {
        let t = TensorData { shape: vec![], data: vec![1.0], dtype: DType::F32 };
        let mut m = BTreeMap::new();
        m.insert("module.a".to_string(), t.clone());
        m.insert("a".to_string(), t.clone());
        assert!(strip_prefix(m.clone(), "module.").unwrap_err().to_string().contains("two tensors named \"a\""));
        m.remove("a");
        m.insert("b".into(), t);
        let s = strip_prefix(m, "module.").unwrap();
        assert_eq!(s.keys().collect::<Vec<_>>(), ["a", "b"]);
    }
}
