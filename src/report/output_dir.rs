//! The one folder a grading run writes into. Every file goes through here, so nothing a submission
//! names (an image name, a CSV row) can place a file elsewhere, and an existing folder is reused
//! only with `--force`.

use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};

pub struct OutputDir {
    root: PathBuf,
}

impl OutputDir {
    /// Creates `root` (and parents). An existing non-empty folder is refused unless `force`.
    pub fn create(root: &Path, force: bool) -> Result<OutputDir> {
        if root.exists() {
            if !root.is_dir() {
                bail!("--out {} exists and is not a folder", root.display());
            }
            let non_empty = std::fs::read_dir(root).with_context(|| format!("cannot read {}", root.display()))?.next().is_some();
            if non_empty && !force {
                bail!(
                    "output folder {} already exists and is not empty; pass --force to overwrite it, or choose another --out",
                    root.display()
                );
            }
        }
        std::fs::create_dir_all(root).with_context(|| format!("cannot create output folder {}", root.display()))?;
        Ok(OutputDir { root: root.to_path_buf() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves a relative path inside the folder; anything that could escape is an error.
    pub fn path(&self, rel: &str) -> Result<PathBuf> {
        let p = Path::new(rel);
        if rel.is_empty() || p.components().any(|c| !matches!(c, Component::Normal(_))) {
            bail!("refusing to write {rel:?}: outputs stay inside {}", self.root.display());
        }
        Ok(self.root.join(p))
    }

    /// Creates a sub-folder.
    pub fn subdir(&self, rel: &str) -> Result<PathBuf> {
        let p = self.path(rel)?;
        std::fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
        Ok(p)
    }

    /// Writes a file atomically inside the folder.
    pub fn write(&self, rel: &str, bytes: &[u8]) -> Result<PathBuf> {
        let p = self.path(rel)?;
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        super::write_atomic(&p, bytes)?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_escapes_and_clobbering() {
        let tmp = tempfile::tempdir().unwrap();
        let out = OutputDir::create(&tmp.path().join("o"), false).unwrap();
        for bad in ["../x", "/etc/x", "a/../../x", "", "."] {
            assert!(out.write(bad, b"x").is_err(), "{bad} accepted");
        }
        out.write("a/b.txt", b"hi").unwrap();
        assert_eq!(std::fs::read(tmp.path().join("o/a/b.txt")).unwrap(), b"hi");
        let err = OutputDir::create(&tmp.path().join("o"), false).err().unwrap().to_string();
        assert!(err.contains("--force"), "{err}");
        assert!(OutputDir::create(&tmp.path().join("o"), true).is_ok());
    }
}
