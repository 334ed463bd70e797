//! `image_name,label` CSV files: the course's label files and prediction files share this format.
//! Student-made CSVs arrive with BOMs, CRLF line ends, stray spaces and worse; every problem is an
//! error naming the file and the line.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// One row: the image's file name (no folders) and its digit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelRow {
    pub image: String,
    pub label: u8,
    /// 1-based line number in the file, for error messages.
    pub line: u64,
}

/// Largest label file accepted (the biggest real split has 44,800 rows, about 1 MB).
const MAX_CSV_BYTES: u64 = 64 << 20;

/// Checks that a CSV-provided name is a plain file name: no folders, no `..`, nothing absolute.
pub fn check_image_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("empty image name".into());
    }
    if name.contains('/') || name.contains('\\') || name == "." || name == ".." || name.contains('\0') {
        return Err(format!("image name {name:?} is not a plain file name (no folders, '..' or absolute paths)"));
    }
    // pred.csv is written unquoted (name,label): a comma or quote in a name would make it unreadable.
    if name.contains(',') || name.contains('"') {
        return Err(format!("image name {name:?} contains a comma or a quote, which the course's CSV files never do"));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(format!("image name {name:?} contains control characters"));
    }
    Ok(())
}

/// Reads an `image_name,label` file with labels in `0..num_classes`.
pub fn read_label_csv(path: &Path, num_classes: u8) -> Result<Vec<LabelRow>> {
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}: check the path", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a file", path.display());
    }
    if meta.len() > MAX_CSV_BYTES {
        bail!("{} is {} bytes, over the {MAX_CSV_BYTES}-byte limit for a label file", path.display(), meta.len());
    }
    let bytes = crate::safe_fs::read_regular(path, MAX_CSV_BYTES, "label file")?;
    parse_label_csv(&bytes, num_classes).with_context(|| format!("in {}", path.display()))
}

/// Parses the CSV text. Public for the fuzz target and tests.
pub fn parse_label_csv(bytes: &[u8], num_classes: u8) -> Result<Vec<LabelRow>> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
            bail!("line {line}: not valid UTF-8 text (save the file as UTF-8)");
        }
    };
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).trim(csv::Trim::All).from_reader(text.as_bytes());
    let mut rows = Vec::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut header_seen = false;
    // Lines counted so far, up to byte `counted`: counting from the start for every record was
    // quadratic (a 700 KB file with 50,000 rows took minutes).
    let (mut counted, mut newlines) = (0usize, 0u64);
    for rec in reader.records() {
        let rec = rec.map_err(|e| anyhow::anyhow!("malformed CSV: {e}"))?;
        // Line numbers from the byte offset: the csv crate's own count treats CRLF files differently.
        // (With CRLF a record's position can point at the previous line's '\n': skip line ends.)
        let mut byte = rec.position().map(|p| p.byte() as usize).unwrap_or(0).min(text.len());
        while byte < text.len() && matches!(text.as_bytes()[byte], b'\r' | b'\n') {
            byte += 1;
        }
        let count = |r: std::ops::Range<usize>| text.as_bytes()[r].iter().filter(|&&b| b == b'\n').count() as u64;
        if byte >= counted {
            newlines += count(counted..byte);
        } else {
            newlines -= count(byte..counted);
        }
        counted = byte;
        let line = newlines + 1;
        if rec.iter().all(|f| f.is_empty()) {
            continue;
        }
        if !header_seen {
            header_seen = true;
            let fields: Vec<String> = rec.iter().map(|f| f.to_ascii_lowercase()).collect();
            if fields != ["image_name", "label"] {
                bail!(
                    "line {line}: the first line must be the header `image_name,label`, found {:?}",
                    rec.iter().collect::<Vec<_>>().join(",")
                );
            }
            continue;
        }
        if rec.len() != 2 {
            bail!("line {line}: expected 2 fields (image_name,label), found {}", rec.len());
        }
        let image = rec[0].to_string();
        check_image_name(&image).map_err(|m| anyhow::anyhow!("line {line}: {m}"))?;
        let label: u8 = match rec[1].parse::<i64>() {
            Ok(v) if (0..num_classes as i64).contains(&v) => v as u8,
            Ok(v) => bail!("line {line}: label {v} for {image} is outside 0..{}", num_classes - 1),
            Err(_) => bail!("line {line}: label {:?} for {image} is not an integer", &rec[1]),
        };
        if let Some(first) = seen.insert(image.clone(), line) {
            bail!("line {line}: {image} appears twice (first on line {first})");
        }
        rows.push(LabelRow { image, label, line });
    }
    if !header_seen {
        bail!("the file is empty: expected the header `image_name,label` and one row per image");
    }
    Ok(rows)
}

/// Writes predictions in the course's format (sorted as given).
pub fn write_label_csv(rows: &[(String, u8)]) -> Vec<u8> {
    let mut out = String::from("image_name,label\n");
    for (name, label) in rows {
        out.push_str(name);
        out.push(',');
        out.push_str(&label.to_string());
        out.push('\n');
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bom_crlf_and_spaces() {
        let rows = parse_label_csv(b"\xEF\xBB\xBFimage_name,label\r\n a.png , 3\r\nb.png,0\r\n\r\n", 10).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].image, "a.png");
        assert_eq!(rows[0].label, 3);
        assert_eq!(rows[1].line, 3);
    }

    #[test]
    fn rejects_bad_rows_with_line_numbers() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "empty"),
            (b"a.png,1\n", "header"),
            (b"image_name,label\na.png,1\na.png,2\n", "appears twice"),
            (b"image_name,label\na.png,12\n", "outside"),
            (b"image_name,label\na.png,x\n", "not an integer"),
            (b"image_name,label\n../a.png,1\n", "plain file name"),
            (b"image_name,label\n/etc/passwd,1\n", "plain file name"),
            (b"image_name,label\na.png,1,2\n", "expected 2 fields"),
            (b"image_name,label\na\xff.png,1\n", "UTF-8"),
        ];
        for (input, want) in cases {
            let err = format!("{:#}", parse_label_csv(input, 10).unwrap_err());
            assert!(err.contains(want), "{input:?}: {err}");
        }
        let err = format!("{:#}", parse_label_csv(b"image_name,label\na.png,1\nb.png,-1\n", 10).unwrap_err());
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn written_csv_reads_back() {
        let rows = vec![("x.png".to_string(), 4u8), ("y.png".to_string(), 9)];
        let back = parse_label_csv(&write_label_csv(&rows), 10).unwrap();
        assert_eq!(back.iter().map(|r| (r.image.clone(), r.label)).collect::<Vec<_>>(), rows);
    }
}
