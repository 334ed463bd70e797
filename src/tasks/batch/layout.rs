//! The class layout `grade batch` reads: one folder per student, named by the student's id, holding
//! the files each grader expects (docs/batch.md). Found with walkdir without following links: a
//! symlink anywhere in a student's folder makes that submission refused, so nothing a submission
//! names can point the grader outside the class folder.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use walkdir::WalkDir;

/// The graders `grade batch` knows, in scoreboard order, with the files that feed them.
pub const GRADERS: &[GraderFiles] = &[
    GraderFiles { grader: "gan", onnx: "gan.onnx", csv: None },
    GraderFiles { grader: "ddpm", onnx: "ddpm.onnx", csv: None },
    GraderFiles { grader: "dann-mnistm-svhn", onnx: "dann-svhn.onnx", csv: Some("dann-svhn.csv") },
    GraderFiles { grader: "dann-mnistm-usps", onnx: "dann-usps.onnx", csv: Some("dann-usps.csv") },
];

pub struct GraderFiles {
    pub grader: &'static str,
    /// The model file: graded by running it.
    pub onnx: &'static str,
    /// Predictions already made (image_name,label): graded against the split's labels when no model is given.
    pub csv: Option<&'static str>,
}

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
    pub submissions: Vec<(&'static str, Submission)>,
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
        if ft.is_file() {
            continue; // a README or a roster next to the student folders
        }
        let mut s = Student { id: name.clone(), dir: entry.path().to_path_buf(), submissions: vec![], refused: None };
        if ft.is_symlink() {
            s.refused = Some(format!("{} is a symbolic link; student folders must be real folders inside {}", entry.path().display(), root.display()));
        } else if !valid_id(&name) {
            s.id = name.escape_default().to_string();
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

/// A student's grader files; any symlink inside the folder refuses the whole submission.
fn scan_student(dir: &Path) -> Result<Vec<(&'static str, Submission)>> {
    for entry in WalkDir::new(dir).min_depth(1).max_depth(8).follow_links(false) {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        if entry.file_type().is_symlink() {
            bail!(
                "{} is a symbolic link; submissions must hold real files (links could point outside the submission)",
                entry.path().display()
            );
        }
    }
    let mut subs = vec![];
    for g in GRADERS {
        let onnx = dir.join(g.onnx);
        if onnx.is_file() {
            subs.push((g.grader, Submission::Onnx(onnx)));
        } else if let Some(csv) = g.csv.map(|c| dir.join(c)).filter(|c| c.is_file()) {
            subs.push((g.grader, Submission::Csv(csv)));
        }
    }
    Ok(subs)
}

/// The file names that feed `grader`, for "missing" messages.
pub fn expected_files(grader: &str) -> String {
    match GRADERS.iter().find(|g| g.grader == grader) {
        Some(GraderFiles { onnx, csv: Some(c), .. }) => format!("{onnx} or {c}"),
        Some(g) => g.onnx.to_string(),
        None => "?".into(),
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
        assert!(matches!(s[0].submissions[1], ("dann-mnistm-usps", Submission::Csv(_))));
        // A model wins over a CSV for the same grader.
        assert!(matches!(s[1].submissions[..], [("dann-mnistm-usps", Submission::Onnx(_))]));
        assert!(s[2].refused.as_deref().unwrap().contains("symbolic link"), "{:?}", s[2].refused);
        assert!(s[3].refused.as_deref().unwrap().contains("symbolic link"));
        assert!(discover(&root.join("nope")).is_err());
    }
}
