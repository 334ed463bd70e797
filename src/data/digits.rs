//! A digit folder in the homework's layout: `DIR/data/*.png` with `DIR/train.csv` and `DIR/val.csv`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::labels::{read_label_csv, LabelRow};

pub struct DigitSet {
    pub dir: PathBuf,
    pub split: String,
    pub rows: Vec<LabelRow>,
}

impl DigitSet {
    /// Opens `dir` and reads `dir/{split}.csv`; every listed image must exist in `dir/data/`.
    pub fn open(dir: &Path, split: &str) -> Result<DigitSet> {
        if !dir.is_dir() {
            bail!("data folder {} not found; unpack the homework data (see ../shared/data/README.md) or pass --data DIR", dir.display());
        }
        let csv = dir.join(format!("{split}.csv"));
        if !csv.is_file() {
            bail!("{} not found: a digit folder holds data/*.png plus train.csv and val.csv", csv.display());
        }
        let rows = read_label_csv(&csv, 10)?;
        if rows.is_empty() {
            bail!("{} lists no images", csv.display());
        }
        let missing: Vec<String> =
            rows.iter().filter(|r| !dir.join("data").join(&r.image).is_file()).map(|r| format!("{} (line {})", r.image, r.line)).collect();
        if !missing.is_empty() {
            bail!(
                "{}: {} listed image(s) missing from {}: {}{}",
                csv.display(),
                missing.len(),
                dir.join("data").display(),
                missing.iter().take(10).cloned().collect::<Vec<_>>().join(", "),
                if missing.len() > 10 { ", ..." } else { "" }
            );
        }
        Ok(DigitSet { dir: dir.to_path_buf(), split: split.to_string(), rows })
    }

    pub fn path(&self, row: &LabelRow) -> PathBuf {
        self.dir.join("data").join(&row.image)
    }
}
