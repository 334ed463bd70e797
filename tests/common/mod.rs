//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(rel: &str) -> PathBuf {
    root().join("fixtures").join(rel)
}

/// The `grade` binary, run from `dir`.
pub fn grade(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("grade").unwrap();
    c.current_dir(dir);
    c
}

/// The ONNX Runtime library the install script puts in .mldeps; tests that compare backends need it.
pub fn ort_library() -> PathBuf {
    gradekit::runtime::ort_backend::find_library()
        .expect("ONNX Runtime library not found: run `bash scripts/setup.sh` first (the README's test command does)")
}

/// The reference Python (onnx, numpy, scipy) installed by scripts/install-python-tools.sh.
pub fn python() -> PathBuf {
    let p = root().join(".mldeps/py/bin/python");
    assert!(p.is_file(), "{} missing: run `bash scripts/setup.sh` first (the README's test command does)", p.display());
    p
}

/// Copies a fixture digit folder so a test can damage it.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

pub fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
}

/// The PyTorch venv (torch + pytorch-fid) installed by scripts/install-torch.sh.
pub fn torch_python() -> PathBuf {
    let p = root().join(".mldeps/torch/bin/python");
    assert!(p.is_file(), "{} missing: run `bash scripts/setup.sh` first (the README's test command does)", p.display());
    p
}

/// Writes `n` seeded, smooth 64x64 RGB images (colour blobs on gradients) into `dir`.
pub fn blob_images(dir: &Path, n: usize, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 33) as f32 / (1u64 << 31) as f32
    };
    for i in 0..n {
        let (cx, cy, r) = (16.0 + 32.0 * next(), 16.0 + 32.0 * next(), 6.0 + 14.0 * next());
        let col = [next(), next(), next()];
        let bg = [next(), next(), next()];
        let img = image::RgbImage::from_fn(64, 64, |x, y| {
            let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
            let t = (1.0 - (d / r)).clamp(0.0, 1.0);
            let g = y as f32 / 63.0;
            image::Rgb(std::array::from_fn(|c| ((bg[c] * (0.5 + 0.5 * g) * (1.0 - t) + col[c] * t) * 255.0) as u8))
        });
        img.save(dir.join(format!("{i:03}.png"))).unwrap();
    }
}

/// A classifier (`image` [N,3,28,28] -> `logits` [N,10]) of `layers` 3x3 convolutions with
/// `channels` channels: as slow as one likes, in memory that grows with `channels` only.
pub fn slow_classifier(layers: usize, channels: usize) -> tract_onnx::pb::ModelProto {
    use gradekit::onnx::writer::{Attr, Dim, Elem, GraphBuilder};
    let mut g = GraphBuilder::new("slow");
    let x = g.input("image", Elem::F32, &[Dim::Symbol("N"), Dim::Fixed(3), Dim::Fixed(28), Dim::Fixed(28)]);
    let mut y = x.clone();
    let mut cin = 3;
    for i in 0..layers {
        let w = g.weight(&format!("c{i}"), &[channels, cin, 3, 3], &vec![0.001; channels * cin * 9]);
        y = g.node("Conv", &[&y, &w], &[Attr::Ints("kernel_shape", vec![3, 3]), Attr::Ints("pads", vec![1, 1, 1, 1])]);
        cin = channels;
    }
    let y = g.node("GlobalAveragePool", &[&y], &[]);
    let y = g.node("Flatten", &[&y], &[Attr::Int("axis", 1)]);
    let w = g.weight("fc", &[10, channels], &vec![0.01; 10 * channels]);
    let y = g.node("Gemm", &[&y, &w], &[Attr::Int("transB", 1)]);
    g.output("logits", &y, Elem::F32, &[Dim::Symbol("N"), Dim::Fixed(10)]);
    g.build()
}

/// A classifier whose logits add the sum of a constant tensor of `floats` zeros (ConstantOfShape):
/// a memory hog of 4 x `floats` bytes.
pub fn memory_hog_classifier(floats: i64) -> tract_onnx::pb::ModelProto {
    use gradekit::onnx::writer::{Attr, Dim, Elem, GraphBuilder};
    let mut g = GraphBuilder::new("hog");
    let x = g.input("image", Elem::F32, &[Dim::Symbol("N"), Dim::Fixed(3), Dim::Fixed(28), Dim::Fixed(28)]);
    let shape = g.const_i64("big_shape", &[1], &[floats]);
    let big = g.node("ConstantOfShape", &[&shape], &[]);
    let s = g.node("ReduceSum", &[&big], &[Attr::Int("keepdims", 0)]);
    let f = g.node("Flatten", &[&x], &[Attr::Int("axis", 1)]);
    let w = g.weight("w", &[10, 2352], &vec![0.0; 23520]);
    let y = g.node("Gemm", &[&f, &w], &[Attr::Int("transB", 1)]);
    let y = g.node("Add", &[&y, &s], &[]);
    g.output("logits", &y, Elem::F32, &[Dim::Symbol("N"), Dim::Fixed(10)]);
    g.build()
}

/// A classifier that allocates `per_item` floats per image at run time (ConstantOfShape of
/// [N, per_item]): its size depends on the batch, so no check of the file's declarations refuses it.
pub fn batch_sized_memory_hog_classifier(per_item: i64) -> tract_onnx::pb::ModelProto {
    use gradekit::onnx::writer::{Attr, Dim, Elem, GraphBuilder};
    let mut g = GraphBuilder::new("hog");
    let x = g.input("image", Elem::F32, &[Dim::Symbol("N"), Dim::Fixed(3), Dim::Fixed(28), Dim::Fixed(28)]);
    let shape = g.node("Shape", &[&x], &[]);
    let zero = g.const_i64("zero", &[1], &[0]);
    let n = g.node("Gather", &[&shape, &zero], &[Attr::Int("axis", 0)]);
    let per = g.const_i64("per_item", &[1], &[per_item]);
    let big_shape = g.node("Concat", &[&n, &per], &[Attr::Int("axis", 0)]);
    let big = g.node("ConstantOfShape", &[&big_shape], &[]);
    let s = g.node("ReduceSum", &[&big], &[Attr::Int("keepdims", 0)]);
    let f = g.node("Flatten", &[&x], &[Attr::Int("axis", 1)]);
    let w = g.weight("w", &[10, 2352], &vec![0.0; 23520]);
    let y = g.node("Gemm", &[&f, &w], &[Attr::Int("transB", 1)]);
    let y = g.node("Add", &[&y, &s], &[]);
    g.output("logits", &y, Elem::F32, &[Dim::Symbol("N"), Dim::Fixed(10)]);
    g.build()
}

/// A `grade batch` class.json's students without the timings (which differ from run to run).
pub fn class_results_without_time(p: &Path) -> serde_json::Value {
    let mut v = read_json(p)["students"].clone();
    for s in v.as_array_mut().unwrap() {
        s["seconds"] = 0.into();
        for g in s["graders"].as_array_mut().unwrap() {
            g["seconds"] = 0.into();
        }
    }
    v
}
