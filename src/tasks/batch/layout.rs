//! The class layout `grade batch` reads: one folder per student, named by the student's id, holding
//! the files each grader expects (docs/batch.md). Found with walkdir without following links: a
//! symlink anywhere in a student's folder makes that submission refused, so nothing a submission
//! names can point the grader outside the class folder.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use walkdir::WalkDir;

use crate::graders::Grader;
use crate::report::sanitize;

/// The graders `grade batch` knows, in scoreboard order, with the files that feed them (`onnx`, `csv`).
pub use crate::graders::GRADERS;

/// What one student handed in for one grader.
#[derive(Debug, Clone, PartialEq)]
pub enum Submission {
    Onnx(PathBuf),
    Csv(PathBuf),
}

impl Submission {
    pub fn path(&self) -> &Path {
        match self {
            Submission::Onnx(p) | Submission::Csv(p) => p,
        }
    }
}

/// One student folder.
#[derive(Debug, Clone)]
pub struct Student {
    pub id: String,
    pub dir: PathBuf,
    /// (grader, submission) for every grader file found.
    pub submissions: Vec<(Grader, Submission)>,
    /// Set when the folder itself is refused (a symlink, an unusable name); nothing is graded then.
    pub refused: Option<String>,
}

/// Student ids become folder names in the output: letters, digits, `.`, `_`, `-`, at most 64.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Every student folder directly under `root`, sorted by id.
pub fn discover(root: &Path) -> Result<Vec<Student>> {
    if !root.is_dir() {
        bail!("submissions folder {} not found (one sub-folder per student, see docs/batch.md)", root.display());
    }
    let mut students = vec![];
    for entry in WalkDir::new(root).min_depth(1).max_depth(1).follow_links(false).sort_by_file_name() {
        let entry = entry.with_context(|| format!("cannot read {}", root.display()))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let ft = entry.file_type();
        // Only folders are students (a symlink is one refused below). Files (a README, a roster),
        // FIFOs, sockets and devices next to the student folders are not submissions.
        if !ft.is_dir() && !ft.is_symlink() {
            continue;
        }
        // The id is shown on the terminal and in every report: a name that is not a usable id (control
        // characters, ANSI escapes, spaces...) is shown escaped, never raw.
        let id = if valid_id(&name) { name.clone() } else { name.escape_default().to_string() };
        let mut s = Student { id, dir: entry.path().to_path_buf(), submissions: vec![], refused: None };
        if ft.is_symlink() {
            s.refused = Some(format!(
                "{} is a symbolic link; student folders must be real folders inside {}",
                sanitize::line(&entry.path().display().to_string()),
                sanitize::line(&root.display().to_string())
            ));
        } else if !valid_id(&name) {
            s.refused = Some(format!("folder name {name:?} is not a usable student id (letters, digits, '.', '_', '-'; at most 64)"));
        } else {
            match scan_student(entry.path()) {
                Ok(subs) => s.submissions = subs,
                Err(e) => s.refused = Some(format!("{e:#}")),
            }
        }
        students.push(s);
    }
    Ok(students)
}

/// A student's grader files. Everything inside the folder must be a real folder or a regular file
/// with one link: a symlink could point outside the submission, and so could a hard link (another
/// student's file, the course data), which is indistinguishable from the file itself once made. A
/// FIFO, socket or device is refused too. Any of these refuses the whole submission.
fn scan_student(dir: &Path) -> Result<Vec<(Grader, Submission)>> {
    use std::os::unix::fs::MetadataExt;
    for entry in WalkDir::new(dir).min_depth(1).max_depth(8).follow_links(false) {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let shown = sanitize::line(&entry.path().display().to_string()).into_owned();
        let ft = entry.file_type();
        if ft.is_symlink() {
            bail!("{shown} is a symbolic link; submissions must hold real files (links could point outside the submission)");
        }
        if ft.is_dir() {
            continue;
        }
        if !ft.is_file() {
            bail!("{shown} is not a regular file (a FIFO, socket or device); submissions must hold real files");
        }
        let meta = entry.metadata().with_context(|| format!("cannot read {shown}"))?;
        if meta.nlink() > 1 {
            bail!(
                "{shown} is a hard link ({} names for one file); submissions must hold their own files \
                 (a hard link could be another student's file or the course data). Copy the file instead",
                meta.nlink()
            );
        }
    }
    let mut subs = vec![];
    for g in GRADERS {
        let onnx = dir.join(g.onnx);
        // symlink_metadata: what the walk above saw, not a link's target.
        let is_file = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file());
        if is_file(&onnx) {
            subs.push((g.grader, Submission::Onnx(onnx)));
        } else if let Some(csv) = g.csv.map(|c| dir.join(c)).filter(|c| is_file(c)) {
            subs.push((g.grader, Submission::Csv(csv)));
        }
    }
    Ok(subs)
}

/// The file names that feed `grader`, for "missing" messages.
pub fn expected_files(grader: Grader) -> String {
    match grader.info() {
        crate::graders::GraderInfo { onnx, csv: Some(c), .. } => format!("{onnx} or {c}"),
        g => g.onnx.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_safe_folder_names() {
        for ok in ["alice", "b07902001", "r11-922.x_y"] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "..", "a b", "é", &"x".repeat(65)] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn finds_files_and_refuses_links() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("alice/extra")).unwrap();
        std::fs::write(root.join("alice/ddpm.onnx"), b"x").unwrap();
        std::fs::write(root.join("alice/dann-usps.csv"), b"x").unwrap();
        std::fs::create_dir_all(root.join("bob")).unwrap();
        std::fs::write(root.join("bob/dann-usps.onnx"), b"x").unwrap();
        std::fs::write(root.join("bob/dann-usps.csv"), b"x").unwrap();
        std::fs::create_dir_all(root.join("carol")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("carol/gan.onnx")).unwrap();
        std::os::unix::fs::symlink(root.join("bob"), root.join("dave")).unwrap();
        std::fs::write(root.join("roster.txt"), b"x").unwrap();
        let s = discover(root).unwrap();
        let ids: Vec<&str> = s.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["alice", "bob", "carol", "dave"]);
        assert_eq!(s[0].submissions.len(), 2);
        assert!(matches!(s[0].submissions[1], (Grader::DannMnistmUsps, Submission::Csv(_))));
        // A model wins over a CSV for the same grader.
        assert!(matches!(s[1].submissions[..], [(Grader::DannMnistmUsps, Submission::Onnx(_))]));
        assert!(s[2].refused.as_deref().unwrap().contains("symbolic link"), "{:?}", s[2].refused);
        assert!(s[3].refused.as_deref().unwrap().contains("symbolic link"));
        assert!(discover(&root.join("nope")).is_err());
    }

    /// Only folders are students; hard links, FIFOs and symlinks inside a submission refuse it; an
    /// id that is not usable is shown escaped, whatever kind of entry it is.
    #[test]
    fn only_folders_are_students_and_only_own_files_are_graded() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("class");
        let mkfifo = |p: &Path| {
            let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        };
        std::fs::create_dir_all(root.join("ann")).unwrap();
        std::fs::write(root.join("ann/gan.onnx"), b"x").unwrap();
        std::fs::write(tmp.path().join("outside.onnx"), b"x").unwrap();
        std::fs::create_dir_all(root.join("hal")).unwrap();
        std::fs::hard_link(tmp.path().join("outside.onnx"), root.join("hal/gan.onnx")).unwrap();
        std::fs::create_dir_all(root.join("kit")).unwrap();
        mkfifo(&root.join("kit/gan.onnx"));
        mkfifo(&root.join("pipe"));
        std::os::unix::fs::symlink(root.join("ann"), root.join("x\x1b[2Jy")).unwrap();
        let s = discover(&root).unwrap();
        let ids: Vec<&str> = s.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["ann", "hal", "kit", "x\\u{1b}[2Jy"]);
        assert!(s[0].refused.is_none() && s[0].submissions.len() == 1);
        assert!(s[1].refused.as_deref().unwrap().contains("hard link"), "{:?}", s[1].refused);
        assert!(s[2].refused.as_deref().unwrap().contains("not a regular file"), "{:?}", s[2].refused);
        let why = s[3].refused.as_deref().unwrap();
        assert!(why.contains("symbolic link") && !why.contains('\x1b'), "{why:?}");
    }
}
