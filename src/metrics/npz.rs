//! FID statistics files in pytorch-fid's format: an .npz (zip) holding `mu.npy` (float64, shape
//! (d,)) and `sigma.npy` (float64, shape (d, d)). pytorch-fid's `--save-stats` writes them with
//! `np.savez_compressed(path, mu=mu, sigma=sigma)` and reads them with `f['mu'][:], f['sigma'][:]`.
//!
//! Writing uses deflate like `np.savez_compressed`; reading accepts stored or deflated entries
//! (np.savez or np.savez_compressed), float32 or float64 in either byte order, C order only.

use std::io::{BufWriter, Read, Seek, Write};
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

use super::fid::Stats;

/// Writes `stats` atomically: a temporary file in the target's folder, renamed over `path`.
pub fn write_stats_npz(path: &Path, stats: &Stats) -> Result<()> {
    write_stats_npz_with_features(path, stats, None)
}

/// Like [`write_stats_npz`], plus the feature rows (`features.npy`, n x d, float64 holding the f32
/// values exactly) so a later run can compute KID without the images. pytorch-fid ignores the extra
/// array.
pub fn write_stats_npz_with_features(path: &Path, stats: &Stats, features: Option<(&[f32], usize)>) -> Result<()> {
    stats.check().context("refusing to write invalid stats")?;
    if let Some((f, n)) = features {
        ensure!(f.len() == n * stats.dim, "features: {} values for {n} rows of {}", f.len(), stats.dim);
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".stats-").suffix(".npz.tmp");
    // Like a file numpy creates (0o666 less the umask), not tempfile's private 0o600.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let tmp = builder.tempfile_in(dir).with_context(|| format!("creating a temporary file in {}", dir.display()))?;

    let mut zip = ZipWriter::new(BufWriter::new(tmp.as_file()));
    let options =
        SimpleFileOptions::default().compression_method(CompressionMethod::Deflated).large_file(stats.sigma.len() * 8 >= u32::MAX as usize);
    let d = stats.dim;
    let feats: Option<(Vec<f64>, usize)> = features.map(|(f, n)| (f.iter().map(|&v| f64::from(v)).collect(), n));
    let mut arrays = vec![("mu.npy", vec![d], &stats.mu), ("sigma.npy", vec![d, d], &stats.sigma)];
    if let Some((f, n)) = &feats {
        arrays.push(("features.npy", vec![*n, d], f));
    }
    for (name, shape, data) in arrays {
        zip.start_file(name, options)?;
        zip.write_all(&npy_header(&shape))?;
        let mut bytes = Vec::with_capacity(data.len() * 8);
        for v in data.iter() {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        zip.write_all(&bytes)?;
    }
    let mut buffered = zip.finish().context("finishing the zip archive")?;
    buffered.flush()?;
    drop(buffered);
    tmp.as_file().sync_all()?;
    tmp.persist(path).with_context(|| format!("renaming the temporary file to {}", path.display()))?;
    Ok(())
}

/// Reads pytorch-fid statistics; `n` is 0 because the files do not record the sample count.
pub fn read_stats_npz(path: &Path) -> Result<Stats> {
    let file = crate::safe_fs::open_regular(path, "statistics file").with_context(|| format!("opening {}", path.display()))?;
    let mut zip = ZipArchive::new(file).with_context(|| format!("{} is not an .npz (zip) file", path.display()))?;
    let (mu_shape, mu) = read_member(&mut zip, "mu").with_context(|| format!("{}: mu", path.display()))?;
    let (sigma_shape, sigma) = read_member(&mut zip, "sigma").with_context(|| format!("{}: sigma", path.display()))?;
    ensure!(mu_shape.len() == 1, "{}: mu has shape {mu_shape:?}, expected (d,)", path.display());
    let d = mu_shape[0];
    ensure!(sigma_shape == [d, d], "{}: sigma has shape {sigma_shape:?} but mu has {d} values, expected ({d}, {d})", path.display());
    let stats = Stats { mu, sigma, dim: d, n: 0 };
    stats.check().with_context(|| format!("{}", path.display()))?;
    Ok(stats)
}

/// The feature rows stored by [`write_stats_npz_with_features`], if the file has them.
pub fn read_features_npz(path: &Path) -> Result<Option<(Vec<f32>, usize)>> {
    let file = crate::safe_fs::open_regular(path, "statistics file").with_context(|| format!("opening {}", path.display()))?;
    let mut zip = ZipArchive::new(file).with_context(|| format!("{} is not an .npz (zip) file", path.display()))?;
    if zip.index_for_name("features.npy").is_none() {
        return Ok(None);
    }
    let (shape, v) = read_member(&mut zip, "features").with_context(|| format!("{}: features", path.display()))?;
    ensure!(shape.len() == 2, "{}: features has shape {shape:?}, expected (n, d)", path.display());
    Ok(Some((v.iter().map(|&x| x as f32).collect(), shape[0])))
}

/// `f[name]` as numpy resolves it: the member `name.npy`, or `name` itself.
fn read_member<R: Read + Seek>(zip: &mut ZipArchive<R>, name: &str) -> Result<(Vec<usize>, Vec<f64>)> {
    let member = [format!("{name}.npy"), name.to_string()]
        .into_iter()
        .find(|m| zip.index_for_name(m).is_some())
        .with_context(|| format!("no '{name}' array in the archive"))?;
    let mut entry = zip.by_name(&member)?;
    let size = entry.size();
    // numpy's savez stores members uncompressed (savez_compressed gains little on floats): a member
    // that inflates far beyond its stored bytes is a decompression bomb, refused from the zip header.
    ensure!(
        size <= 16 << 20 || size / entry.compressed_size().max(1) <= 8,
        "member {member} inflates {} compressed bytes to {size} bytes (more than 8x); refused before reading",
        entry.compressed_size()
    );
    read_npy(&mut entry, size)
}

/// Largest array read from a `.npz` (features of 100,000 images at 2048 float32 are 800 MB).
const MAX_NPY_BYTES: usize = 1 << 30;

fn npy_header(shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|s| s.to_string()).collect();
    // A 1-tuple needs its trailing comma, as Python writes it.
    let tuple = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut dict = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {tuple}, }}");
    // numpy pads with spaces and a final newline so the data starts on a 64-byte boundary.
    let total = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Parses one .npy stream of `available` bytes into (shape, values as f64).
fn read_npy(r: &mut impl Read, available: u64) -> Result<(Vec<usize>, Vec<f64>)> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).context("truncated .npy header")?;
    ensure!(&magic[..6] == b"\x93NUMPY", "not a .npy array");
    let header_len = match magic[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b)?;
            u16::from_le_bytes(b) as usize
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b)?;
            u32::from_le_bytes(b) as usize
        }
        v => bail!("unsupported .npy format version {v}"),
    };
    ensure!(header_len <= 1 << 20, "implausible .npy header length {header_len}");
    let mut header = vec![0u8; header_len];
    r.read_exact(&mut header).context("truncated .npy header")?;
    let header = String::from_utf8(header).context(".npy header is not text")?;
    let (descr, fortran, shape) = parse_header(&header)?;
    ensure!(!fortran, "array is stored in Fortran order; only C order is supported");
    let (size, little) = match descr.as_str() {
        "<f8" => (8, true),
        ">f8" => (8, false),
        "<f4" => (4, true),
        ">f4" => (4, false),
        other => bail!("unsupported dtype '{other}': expected float32 or float64"),
    };
    let count = shape.iter().try_fold(1usize, |a, &s| a.checked_mul(s)).context("shape overflows")?;
    let bytes_needed = count.checked_mul(size).context("shape overflows")?;
    ensure!(
        bytes_needed <= MAX_NPY_BYTES,
        "array of shape {shape:?} needs {bytes_needed} bytes, over the limit of {MAX_NPY_BYTES} bytes; refused before reading"
    );
    let prefix = (if magic[6] == 1 { 10 } else { 12 } + header_len) as u64;
    ensure!(prefix + bytes_needed as u64 <= available, "array data is truncated: shape {shape:?} needs {bytes_needed} bytes");
    let mut raw = vec![0u8; bytes_needed];
    r.read_exact(&mut raw).context("array data is truncated")?;
    let values = if size == 8 {
        raw.chunks_exact(8)
            .map(|c| {
                let b: [u8; 8] = c.try_into().expect("chunk of 8");
                if little {
                    f64::from_le_bytes(b)
                } else {
                    f64::from_be_bytes(b)
                }
            })
            .collect()
    } else {
        raw.chunks_exact(4)
            .map(|c| {
                let b: [u8; 4] = c.try_into().expect("chunk of 4");
                f64::from(if little { f32::from_le_bytes(b) } else { f32::from_be_bytes(b) })
            })
            .collect()
    };
    Ok((shape, values))
}

/// Reads `descr`, `fortran_order` and `shape` from the Python dict literal of a .npy header.
fn parse_header(h: &str) -> Result<(String, bool, Vec<usize>)> {
    let value_after = |key: &str| -> Result<&str> {
        let at = h
            .find(&format!("'{key}'"))
            .or_else(|| h.find(&format!("\"{key}\"")))
            .with_context(|| format!(".npy header lacks '{key}': {h}"))?;
        let rest = &h[at + key.len() + 2..];
        let colon = rest.find(':').with_context(|| format!("malformed .npy header: {h}"))?;
        Ok(rest[colon + 1..].trim_start())
    };

    let d = value_after("descr")?;
    let quote = d.chars().next().filter(|c| *c == '\'' || *c == '"');
    let Some(q) = quote else {
        bail!("unsupported dtype (structured or non-string descr): {h}");
    };
    let end = d[1..].find(q).with_context(|| format!("malformed descr: {h}"))?;
    let descr = d[1..1 + end].to_string();

    let f = value_after("fortran_order")?;
    let fortran = if f.starts_with("True") {
        true
    } else if f.starts_with("False") {
        false
    } else {
        bail!("malformed fortran_order: {h}");
    };

    let s = value_after("shape")?;
    ensure!(s.starts_with('('), "malformed shape: {h}");
    let close = s.find(')').with_context(|| format!("malformed shape: {h}"))?;
    let shape = s[1..close]
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.trim_end_matches('L').parse::<usize>().with_context(|| format!("bad shape entry '{t}'")))
        .collect::<Result<Vec<_>>>()?;
    Ok((descr, fortran, shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_aligned_and_parsable() {
        for shape in [vec![3], vec![2048], vec![2048, 2048]] {
            let h = npy_header(&shape);
            assert_eq!(h.len() % 64, 0);
            assert_eq!(*h.last().unwrap(), b'\n');
            let text = std::str::from_utf8(&h[10..]).unwrap();
            assert_eq!(parse_header(text).unwrap(), ("<f8".to_string(), false, shape));
        }
        assert!(std::str::from_utf8(&npy_header(&[3])[10..]).unwrap().contains("'shape': (3,), }"));
    }

    #[test]
    fn parses_other_header_spellings() {
        let h = "{\"shape\": (2, 3), \"fortran_order\": True, \"descr\": \">f4\"}";
        assert_eq!(parse_header(h).unwrap(), (">f4".to_string(), true, vec![2, 3]));
        assert_eq!(parse_header("{'descr': '<f8', 'fortran_order': False, 'shape': (), }").unwrap().2, Vec::<usize>::new());
        assert!(parse_header("{'descr': [('a', '<f8')], 'fortran_order': False, 'shape': (1,), }").is_err());
        assert!(parse_header("{'descr': '<f8', 'shape': (1,), }").is_err());
    }

    #[test]
    fn big_endian_f32_is_converted() {
        let header = "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }";
        let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
        bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&1.5f32.to_be_bytes());
        bytes.extend_from_slice(&(-2.0f32).to_be_bytes());
        let n = bytes.len() as u64;
        assert_eq!(read_npy(&mut bytes.as_slice(), n).unwrap(), (vec![2], vec![1.5, -2.0]));
        // One byte short: an error, not a panic.
        let short = &bytes[..bytes.len() - 1];
        assert!(read_npy(&mut &short[..], n - 1).unwrap_err().to_string().contains("truncated"));
    }
}
