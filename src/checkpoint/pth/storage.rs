//! Where a checkpoint's tensor bytes come from (the zip records of torch >= 1.6, or the legacy single
//! stream), read under the byte budget, and how a tensor is materialised from its storage: strides,
//! offsets and dtypes checked against the bytes present before anything of that size is allocated.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};

use anyhow::{anyhow, bail, ensure, Context, Result};

use super::super::pickle::{self, DType, StorageRef, TensorRef, Unpickled, Value};
use super::{Format, Limits, TensorData};

/// Records and views up to this size are not checked for expansion (small buffers are harmless).
pub(super) const MAX_INFLATED_RECORD: u64 = 16 << 20;
/// Largest inflation of a compressed storage record accepted (deflate of real weights gains ~1.1x).
pub(super) const MAX_INFLATION_RATIO: u64 = 8;

pub(super) struct Budget {
    pub(super) used: u64,
    pub(super) max: u64,
}

impl Budget {
    pub(super) fn take(&mut self, n: u64, what: &str) -> Result<()> {
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
pub(super) type LegacyRecords = HashMap<String, (usize, u64)>;

/// Where storage bytes come from.
pub(super) struct Source {
    pub(super) pickle: Unpickled,
    pub(super) format: Format,
    pub(super) big_endian: bool,
    /// Zip format: the archive, the record prefix (`<archive>/`), and the file's length.
    zip: Option<(zip::ZipArchive<BufReader<File>>, String, u64)>,
    /// Legacy format: the whole file, and each storage key's (byte offset, byte length) in it.
    legacy: Option<(Vec<u8>, LegacyRecords)>,
}

impl Source {
    pub(super) fn open_zip(file: File, file_len: u64, lim: &Limits, script: bool) -> Result<Source> {
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
    pub(super) fn open_legacy(mut file: File, len: u64, lim: &Limits) -> Result<Source> {
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
    pub(super) fn storage_bytes(&mut self, s: &StorageRef, lim: &Limits, budget: &mut Budget) -> Result<Vec<u8>> {
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
pub(super) fn read_entry(za: &mut zip::ZipArchive<BufReader<File>>, name: &str, max: u64, file_len: u64) -> Result<Option<Vec<u8>>> {
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

pub(super) fn materialize(
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
pub(super) fn decode(b: &[u8], i: usize, dt: DType, big: bool) -> f32 {
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
