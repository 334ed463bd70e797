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
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context, Result};

pub use super::pickle::DType;
use super::pickle::{self, PickleLimits, StorageRef, TensorRef, Unpickled, Value};

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

/// Records and views up to this size are not checked for expansion (small buffers are harmless).
const MAX_INFLATED_RECORD: u64 = 16 << 20;
/// Largest inflation of a compressed storage record accepted (deflate of real weights gains ~1.1x).
const MAX_INFLATION_RATIO: u64 = 8;

struct Budget {
    used: u64,
    max: u64,
}

impl Budget {
    fn take(&mut self, n: u64, what: &str) -> Result<()> {
        let total = self
            .used
            .checked_add(n)
            .filter(|&t| t <= self.max)
            .ok_or_else(|| anyhow!("{what} ({n} bytes) would bring this load to more than the total limit of {} bytes", self.max))?;
        self.used = total;
        Ok(())
    }
}

/// Legacy format: storage key -> (byte offset, byte length) in the file.
type LegacyRecords = HashMap<String, (usize, u64)>;

/// Where storage bytes come from.
struct Source {
    pickle: Unpickled,
    format: Format,
    big_endian: bool,
    /// Zip format: the archive, the record prefix (`<archive>/`), and the file's length.
    zip: Option<(zip::ZipArchive<BufReader<File>>, String, u64)>,
    /// Legacy format: the whole file, and each storage key's (byte offset, byte length) in it.
    legacy: Option<(Vec<u8>, LegacyRecords)>,
}

impl Source {
    fn open_zip(file: File, file_len: u64, lim: &Limits, script: bool) -> Result<Source> {
        let mut za =
            zip::ZipArchive::new(BufReader::new(file)).map_err(|e| anyhow!("cannot read zip archive (truncated or corrupt file?): {e}"))?;
        // torch names every record `<archive>/...`; find the one `data.pkl` at that depth.
        let names: Vec<String> = za
            .file_names()
            .map(|n| n.map(|n| n.into_owned()))
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow!("bad record name in zip archive: {e}"))?;
        let pkl: Vec<String> = names
            .into_iter()
            .filter(|n| n.strip_suffix("data.pkl").is_some_and(|p| p.is_empty() || (p.ends_with('/') && p.matches('/').count() == 1)))
            .collect();
        let pkl_name = match pkl.as_slice() {
            [one] => one.clone(),
            [] => bail!("zip archive has no data.pkl record: not written by torch.save"),
            _ => bail!("zip archive has several data.pkl records: {pkl:?}"),
        };
        let prefix = pkl_name.strip_suffix("data.pkl").unwrap().to_string();

        let big_endian = match read_entry(&mut za, &format!("{prefix}byteorder"), 16, file_len) {
            Ok(Some(b)) => match b.as_slice() {
                b"little" => false,
                b"big" => true,
                other => bail!("unknown byteorder record {:?}", String::from_utf8_lossy(other)),
            },
            Ok(None) => false, // files before torch 1.10 have no record; they were all little-endian
            Err(e) => return Err(e.context("reading the byteorder record")),
        };
        let data = read_entry(&mut za, &pkl_name, lim.max_pickle_bytes, file_len)?.expect("listed above");
        let pickle = if script { pickle::unpickle_script(&data, &lim.pickle) } else { pickle::unpickle(&data, &lim.pickle) }
            .context("in data.pkl")?;
        Ok(Source { pickle, format: Format::Zip, big_endian, zip: Some((za, prefix, file_len)), legacy: None })
    }

    /// Legacy layout: pickle(magic) pickle(protocol) pickle(sys_info) pickle(obj) pickle(keys),
    /// then for each key: int64 element count followed by the raw elements.
    fn open_legacy(mut file: File, len: u64, lim: &Limits) -> Result<Source> {
        ensure!(len <= lim.max_total_bytes, "legacy-format file is {len} bytes, over the total limit of {} bytes", lim.max_total_bytes);
        let mut buf = Vec::with_capacity(len as usize);
        file.seek(SeekFrom::Start(0))?; // the format sniffing read the first bytes
        (&mut file).take(len).read_to_end(&mut buf)?;
        let mut pos = 0usize;
        let next = |what: &str, pos: &mut usize, buf: &[u8]| -> Result<Unpickled> {
            let end = (*pos as u64).saturating_add(lim.max_pickle_bytes).min(buf.len() as u64) as usize;
            let u = pickle::unpickle(&buf[*pos..end], &lim.pickle).with_context(|| format!("legacy format: {what}"))?;
            *pos += u.consumed;
            Ok(u)
        };
        let magic = next("magic number", &mut pos, &buf)?;
        const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
        ensure!(
            matches!(&magic.root, Value::BigInt(b) if **b == MAGIC),
            "not a PyTorch checkpoint: a pickle without torch's legacy magic number (plain pickles are not accepted)"
        );
        let proto = next("protocol version", &mut pos, &buf)?;
        ensure!(matches!(proto.root, Value::Int(1001)), "unsupported legacy protocol version");
        let sys = next("sys_info", &mut pos, &buf)?;
        let big_endian = match sys.dict(&sys.root).and_then(|d| d.get_str("little_endian")) {
            Some(Value::Bool(little)) => !little,
            _ => false,
        };
        let pickle = next("object", &mut pos, &buf)?;
        let keys = next("storage keys", &mut pos, &buf)?;
        let Some(pickle::Obj::List(key_list)) = keys.obj(&keys.root) else { bail!("legacy format: storage key list is not a list") };
        // Each key's element size comes from the persistent ids that named it.
        let mut item_size: HashMap<&str, usize> = HashMap::new();
        for s in &pickle.storages {
            item_size.insert(&s.key, s.stype.item_size);
        }
        let mut records = HashMap::new();
        for k in key_list {
            let Value::Str(k) = k else { bail!("legacy format: storage key is not a string") };
            let size = *item_size.get(&**k).ok_or_else(|| anyhow!("legacy format: storage {k:?} is not used by any tensor"))?;
            let hdr = buf.get(pos..pos + 8).ok_or_else(|| anyhow!("legacy format: file ends before storage {k:?}"))?;
            let numel = if big_endian { u64::from_be_bytes(hdr.try_into().unwrap()) } else { u64::from_le_bytes(hdr.try_into().unwrap()) };
            let bytes = numel.checked_mul(size as u64).ok_or_else(|| anyhow!("legacy storage {k:?} size overflows"))?;
            pos += 8;
            let end = (pos as u64)
                .checked_add(bytes)
                .filter(|&e| e <= buf.len() as u64)
                .ok_or_else(|| anyhow!("legacy format: storage {k:?} claims {bytes} bytes but the file ends first (truncated?)"))?;
            records.insert(k.to_string(), (pos, bytes));
            pos = end as usize;
        }
        Ok(Source { pickle, format: Format::Legacy, big_endian, zip: None, legacy: Some((buf, records)) })
    }

    /// The raw bytes of storage `s`, exactly `numel * item_size` of them.
    fn storage_bytes(&mut self, s: &StorageRef, lim: &Limits, budget: &mut Budget) -> Result<Vec<u8>> {
        let want = s.numel.checked_mul(s.stype.item_size as u64).ok_or_else(|| anyhow!("storage {} size overflows", s.key))?;
        ensure!(
            want <= lim.max_tensor_bytes,
            "storage {} is {want} bytes, over the per-tensor limit of {} bytes",
            s.key,
            lim.max_tensor_bytes
        );
        if let Some((za, prefix, file_len)) = &mut self.zip {
            let name = format!("{prefix}data/{}", s.key);
            let mut f = za.by_name(&name).map_err(|e| anyhow!("storage record {name} missing: {e}"))?;
            ensure!(
                f.size() >= want,
                "storage record {name} holds {} bytes but the checkpoint says it has {} x {} = {want} bytes (truncated?)",
                f.size(),
                s.numel,
                s.stype.name
            );
            // torch.save stores records uncompressed. A compressed record that inflates far beyond
            // its stored bytes is a decompression bomb: refused from the zip header, before inflating.
            ensure!(
                want <= MAX_INFLATED_RECORD || want / f.compressed_size().max(1) <= MAX_INFLATION_RATIO,
                "storage record {name} inflates {} compressed bytes to {want} bytes (more than {MAX_INFLATION_RATIO}x); \
                 torch.save does not compress its records, so this is not a checkpoint it wrote. Refused before reading",
                f.compressed_size()
            );
            budget.take(want, &format!("storage {}", s.key))?;
            // Reserve no more than the file could hold: the header's size is only a claim.
            let mut out = Vec::with_capacity(want.min(*file_len) as usize);
            (&mut f).take(want).read_to_end(&mut out).with_context(|| format!("reading {name}"))?;
            // The header may lie about the size; what counts is what was read.
            ensure!(out.len() as u64 == want, "storage record {name} ended after {} of {want} bytes", out.len());
            Ok(out)
        } else if let Some((buf, records)) = &self.legacy {
            let &(off, len) = records.get(&s.key).ok_or_else(|| anyhow!("legacy storage {} has no data record", s.key))?;
            ensure!(len >= want, "legacy storage {} holds {len} bytes, needs {want}", s.key);
            budget.take(want, &format!("storage {}", s.key))?;
            Ok(buf[off..off + want as usize].to_vec())
        } else {
            unreachable!("a Source has either a zip or a legacy buffer")
        }
    }
}

/// Read a small zip record whole, refusing one over `max` bytes. `Ok(None)` if it is absent.
fn read_entry(za: &mut zip::ZipArchive<BufReader<File>>, name: &str, max: u64, file_len: u64) -> Result<Option<Vec<u8>>> {
    let mut f = match za.by_name(name) {
        Ok(f) => f,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => bail!("cannot open zip record {name}: {e}"),
    };
    ensure!(f.size() <= max, "zip record {name} is {} bytes, over the limit of {max} bytes", f.size());
    let mut out = Vec::with_capacity(f.size().min(file_len) as usize);
    // take(max + 1): a record whose header understates its size is caught instead of read on and on.
    (&mut f).take(max.saturating_add(1)).read_to_end(&mut out).with_context(|| format!("reading zip record {name}"))?;
    ensure!(out.len() as u64 <= max, "zip record {name} is larger than the limit of {max} bytes");
    Ok(Some(out))
}

fn materialize(
    src: &mut Source,
    t: &TensorRef,
    lim: &Limits,
    budget: &mut Budget,
    cache: &mut HashMap<String, Vec<u8>>,
) -> Result<TensorData> {
    let s = src.pickle.storages[t.storage].clone();
    let dtype = s.stype.dtype.ok_or_else(|| anyhow!("unsupported storage type torch.{}", s.stype.name))?;
    let numel = t.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or_else(|| anyhow!("shape {:?} overflows", t.shape))?;
    let out_bytes = numel.checked_mul(4).ok_or_else(|| anyhow!("shape {:?} overflows", t.shape))?;
    ensure!(
        out_bytes <= lim.max_tensor_bytes,
        "shape {:?} has {numel} elements ({out_bytes} bytes as f32), over the per-tensor limit of {} bytes",
        t.shape,
        lim.max_tensor_bytes
    );
    let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect(); // fits: product checked above
    if numel == 0 {
        return Ok(TensorData { shape, data: Vec::new(), dtype });
    }
    // Highest element index the view touches; it must lie inside the storage.
    let mut last = t.offset;
    for (&d, &st) in t.shape.iter().zip(&t.stride) {
        last = (d - 1).checked_mul(st).and_then(|x| last.checked_add(x)).ok_or_else(|| anyhow!("offset/stride arithmetic overflows"))?;
    }
    ensure!(
        last < s.numel,
        "view (offset {}, shape {:?}, stride {:?}) reaches element {last} but storage {} has only {} elements",
        t.offset,
        t.shape,
        t.stride,
        s.key,
        s.numel
    );
    // A view that repeats storage elements (a zero or overlapping stride) expands a small storage
    // into a large tensor; a saved state_dict holds parameters, which never share elements.
    ensure!(
        numel <= s.numel || out_bytes <= MAX_INFLATED_RECORD,
        "view (shape {:?}, stride {:?}) repeats the {} elements of storage {} into {numel} elements ({out_bytes} bytes as f32): \
         a zero or overlapping stride, which a saved parameter never has. Refused before allocating (save tensor.contiguous())",
        t.shape,
        t.stride,
        s.numel,
        s.key
    );
    if !cache.contains_key(&s.key) {
        let b = src.storage_bytes(&s, lim, budget)?;
        cache.insert(s.key.clone(), b);
    }
    let bytes = &cache[&s.key];
    // A key shared by storages of different dtypes is legal; re-check against this dtype's length.
    let need = (last + 1).checked_mul(dtype.size() as u64);
    ensure!(need.is_some_and(|n| n <= bytes.len() as u64), "storage {} is too short for this view", s.key);
    budget.take(out_bytes, "tensor output")?;

    let big = src.big_endian;
    let mut data = Vec::with_capacity(numel as usize);
    let rank = shape.len();
    if rank == 0 {
        data.push(decode(bytes, t.offset as usize, dtype, big));
    } else {
        // Odometer over all but the last dim; the inner loop walks the last dim by its stride.
        let inner = shape[rank - 1];
        let inner_stride = t.stride[rank - 1] as usize;
        let mut idx = vec![0usize; rank - 1];
        loop {
            let base = t.offset as usize + idx.iter().zip(&t.stride).map(|(&i, &st)| i * st as usize).sum::<usize>();
            for j in 0..inner {
                data.push(decode(bytes, base + j * inner_stride, dtype, big));
            }
            let mut d = rank - 1;
            loop {
                if d == 0 {
                    return Ok(TensorData { shape, data, dtype });
                }
                d -= 1;
                idx[d] += 1;
                if idx[d] < shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
    }
    Ok(TensorData { shape, data, dtype })
}

/// Element `i` of a storage as f32. Bounds were checked by the caller.
fn decode(b: &[u8], i: usize, dt: DType, big: bool) -> f32 {
    let sz = dt.size();
    let s = &b[i * sz..i * sz + sz];
    macro_rules! num {
        ($t:ty) => {{
            let a = s.try_into().unwrap();
            if big {
                <$t>::from_be_bytes(a)
            } else {
                <$t>::from_le_bytes(a)
            }
        }};
    }
    match dt {
        DType::F32 => num!(f32),
        DType::F64 => num!(f64) as f32,
        DType::F16 => half::f16::from_bits(num!(u16)).to_f32(),
        DType::BF16 => half::bf16::from_bits(num!(u16)).to_f32(),
        DType::I64 => num!(i64) as f32,
        DType::I32 => num!(i32) as f32,
        DType::I16 => num!(i16) as f32,
        DType::I8 => s[0] as i8 as f32,
        DType::U8 => s[0] as f32,
        DType::Bool => (s[0] != 0) as u8 as f32,
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

    #[test]
    fn decode_dtypes() {
        assert_eq!(decode(&1.5f32.to_le_bytes(), 0, DType::F32, false), 1.5);
        assert_eq!(decode(&1.5f32.to_be_bytes(), 0, DType::F32, true), 1.5);
        assert_eq!(decode(&[0x00, 0x3c], 0, DType::F16, false), 1.0); // f16 1.0 = 0x3c00
        assert_eq!(decode(&[0x80, 0x3f], 0, DType::BF16, false), 1.0); // bf16 1.0 = 0x3f80
        assert_eq!(decode(&(-7i64).to_le_bytes(), 0, DType::I64, false), -7.0);
        assert_eq!(decode(&[0xff], 0, DType::I8, false), -1.0);
        assert_eq!(decode(&[0xff], 0, DType::U8, false), 255.0);
        assert_eq!(decode(&[2], 0, DType::Bool, false), 1.0);
    }
}
