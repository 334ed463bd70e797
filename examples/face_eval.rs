//! Measurement tool for the face metric (not part of the grader API).
//!
//!   face_eval synth SRC_DIR OUT_DIR N SEED      generated-like images from the first N faces of SRC_DIR
//!   face_eval count DETECTOR OUT.csv INPUT...   per-image counts (-1 unreadable, -2 detector failed)
//!   face_eval compare A.csv B.csv               per-folder exact-one rates and per-image agreement
//!   face_eval sweep REF.csv OUT.csv INPUT...    rustface settings grid vs a reference CSV
//!
//! DETECTOR: rustface | rustface:up=2,thr=2,pyr=0.8,step=4,min=0 | dlib | dlib:up=1 (feature "dlib").
//! INPUT: image files, folders (searched recursively for png/jpg), or @LIST (one path per line).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use gradekit::metrics::faces::{grade_images, load_rgb, tally, FaceDetector, ImageOutcome, RustfaceDetector, RustfaceSettings};
use image::{Rgb, RgbImage};
use rayon::prelude::*;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("synth") if args.len() == 5 => synth(Path::new(&args[1]), Path::new(&args[2]), args[3].parse()?, args[4].parse()?),
        Some("count") if args.len() >= 4 => count(&args[1], Path::new(&args[2]), &args[3..]),
        Some("compare") if args.len() == 3 => compare(Path::new(&args[1]), Path::new(&args[2])),
        Some("sweep") if args.len() >= 4 => sweep(Path::new(&args[1]), Path::new(&args[2]), &args[3..]),
        _ => bail!("usage: see the header of examples/face_eval.rs"),
    }
}

fn image_files(inputs: &[String]) -> Result<Vec<PathBuf>> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        if p.is_dir() {
            for e in std::fs::read_dir(p).with_context(|| format!("listing {}", p.display()))? {
                walk(&e?.path(), out)?;
            }
        } else if p.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        {
            out.push(p.to_path_buf());
        }
        Ok(())
    }
    let mut out = Vec::new();
    for i in inputs {
        // @LIST: a file with one image path per line (long lists do not fit on a command line).
        if let Some(list) = i.strip_prefix('@') {
            let text = std::fs::read_to_string(list).with_context(|| format!("reading {list}"))?;
            out.extend(text.lines().filter(|l| !l.trim().is_empty()).map(PathBuf::from));
        } else {
            walk(Path::new(i), &mut out)?;
        }
    }
    out.sort();
    Ok(out)
}

// ---------------------------------------------------------------- detectors

fn parse_kv(spec: &str) -> Result<HashMap<String, String>> {
    let mut m = HashMap::new();
    for kv in spec.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').ok_or_else(|| anyhow!("expected key=value, got {kv}"))?;
        m.insert(k.to_string(), v.to_string());
    }
    Ok(m)
}

fn rustface_settings(opts: &str) -> Result<RustfaceSettings> {
    let mut s = RustfaceSettings::default();
    for (k, v) in parse_kv(opts)? {
        match k.as_str() {
            "up" => s.upscale = v.parse()?,
            "thr" => s.score_thresh = v.parse()?,
            "pyr" => s.pyramid_scale = v.parse()?,
            "step" => s.step = v.parse()?,
            "min" => s.min_face_size = v.parse()?,
            _ => bail!("unknown rustface option {k}"),
        }
    }
    Ok(s)
}

fn make_detector(spec: &str) -> Result<Box<dyn FaceDetector>> {
    let (kind, opts) = spec.split_once(':').unwrap_or((spec, ""));
    match kind {
        "rustface" => Ok(Box::new(RustfaceDetector::new(rustface_settings(opts)?)?)),
        #[cfg(feature = "dlib")]
        "dlib" => {
            let up = parse_kv(opts)?.get("up").map(|v| v.parse()).transpose()?.unwrap_or(1);
            Ok(Box::new(gradekit::metrics::faces::DlibHogDetector::new(up)))
        }
        #[cfg(not(feature = "dlib"))]
        "dlib" => bail!("built without the `dlib` feature"),
        _ => bail!("unknown detector {kind}"),
    }
}

// ---------------------------------------------------------------- count / compare

fn count(spec: &str, out: &Path, inputs: &[String]) -> Result<()> {
    let paths = image_files(inputs)?;
    let mut det = make_detector(spec)?;
    let t = Instant::now();
    let outcomes = grade_images(&paths, det.as_mut(), true);
    let secs = t.elapsed().as_secs_f64();
    let mut csv = String::from("path,count\n");
    for (p, o) in paths.iter().zip(&outcomes) {
        let n: i64 = match o {
            ImageOutcome::Faces(n) => *n as i64,
            ImageOutcome::Unreadable(_) => -1,
            ImageOutcome::DetectorFailed(_) => -2,
        };
        csv.push_str(&format!("{},{}\n", p.display(), n));
    }
    std::fs::write(out, csv)?;
    let r = tally(det.name(), &paths, &outcomes);
    println!(
        "{}: {} files, {} loaded, exactly one {} ({:.4}), zero {}, multiple {}, failed {}, {:.1}s ({:.2} ms/image, {} threads)",
        r.detector,
        r.total,
        r.loaded,
        r.exactly_one,
        r.accuracy,
        r.zero,
        r.multiple,
        r.detector_failed.len(),
        secs,
        1000.0 * secs / paths.len().max(1) as f64,
        rayon::current_num_threads()
    );
    Ok(())
}

fn read_counts(p: &Path) -> Result<BTreeMap<String, i64>> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    let mut m = BTreeMap::new();
    for line in text.lines().skip(1) {
        let (path, n) = line.rsplit_once(',').ok_or_else(|| anyhow!("bad line {line}"))?;
        m.insert(path.to_string(), n.trim().parse()?);
    }
    Ok(m)
}

/// The folder that names a test set: the parent for synthetic kinds (…/train/blur1/x.png -> train/blur1),
/// the real folder otherwise (…/face/val/x.png -> face/val).
fn group_of(path: &str) -> String {
    let p = Path::new(path);
    let parent = p.parent().unwrap_or(Path::new(""));
    let a = parent.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    let b = parent.parent().and_then(|g| g.file_name()).map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
    format!("{b}/{a}")
}

fn compare(a: &Path, b: &Path) -> Result<()> {
    let (ca, cb) = (read_counts(a)?, read_counts(b)?);
    // group -> [n, a_one, b_one, agree_one, agree_count]
    let mut g: BTreeMap<String, [usize; 5]> = BTreeMap::new();
    let mut missing = 0;
    for (path, &na) in &ca {
        let Some(&nb) = cb.get(path) else {
            missing += 1;
            continue;
        };
        if na < 0 || nb < 0 {
            continue; // only images both sides could grade
        }
        for key in [group_of(path), "ALL".to_string()] {
            let e = g.entry(key).or_default();
            e[0] += 1;
            e[1] += (na == 1) as usize;
            e[2] += (nb == 1) as usize;
            e[3] += ((na == 1) == (nb == 1)) as usize;
            e[4] += (na == nb) as usize;
        }
    }
    println!("A = {}\nB = {}\n", a.display(), b.display());
    println!("| set | n | A exact-one | B exact-one | agree (exact-one decision) | agree (same count) |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (k, e) in &g {
        let n = e[0] as f64;
        println!("| {k} | {} | {:.4} | {:.4} | {:.4} | {:.4} |", e[0], e[1] as f64 / n, e[2] as f64 / n, e[3] as f64 / n, e[4] as f64 / n);
    }
    if missing > 0 {
        println!("\n{missing} paths of A are missing from B");
    }
    Ok(())
}

// ---------------------------------------------------------------- sweep

/// Agreement with a reference for every combination of upscale, pyramid factor and step; the score
/// threshold and minimum face size are swept afterwards from the recorded detections (both are pure
/// post-filters). Every row goes to OUT.csv; the best rows by overall agreement are printed.
fn sweep(reference: &Path, out: &Path, inputs: &[String]) -> Result<()> {
    let refs = read_counts(reference)?;
    let paths = image_files(inputs)?;
    let mut images = Vec::new();
    for p in &paths {
        let key = p.display().to_string();
        let Some(&r) = refs.get(&key) else { continue };
        if r < 0 {
            continue;
        }
        if let Ok(img) = load_rgb(p) {
            images.push((group_of(&key), r == 1, img));
        }
    }
    // Real crops live in …/face/{train,val}; synthetic ones in OUT_DIR/<kind>.
    let real = |g: &str| g.starts_with("face/");
    let n_real = images.iter().filter(|x| real(&x.0)).count();
    println!("{} images with a reference ({} real)", images.len(), n_real);
    println!(
        "reference exact-one rate: real {:.4}, synthetic {:.4}",
        rate(images.iter().filter(|x| real(&x.0)).map(|x| x.1)),
        rate(images.iter().filter(|x| !real(&x.0)).map(|x| x.1))
    );
    let thresholds = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.85, 5.0, 7.0, 10.0, 15.0];
    let min_sizes = [0u32, 24, 28, 32, 36, 40, 44];
    let mut rows: Vec<(f64, String)> = Vec::new();
    let mut csv =
        String::from("upscale,pyramid,step,thresh,min_face,agree_real,agree_synth,agree_all,rate_real,rate_synth,cpu_ms_per_image\n");
    for up in [2.0f32, 1.5, 2.5, 1.0] {
        for pyr in [0.8f32, 0.9] {
            for step in [4u32, 2] {
                let settings = RustfaceSettings { upscale: up, score_thresh: 1e-6, pyramid_scale: pyr, step, min_face_size: 0 };
                let t = Instant::now();
                let found: Vec<Vec<gradekit::metrics::faces::SeetaFace>> = images
                    .par_iter()
                    .with_min_len(64)
                    .map_init(
                        || RustfaceDetector::new(settings).expect("valid sweep settings"),
                        |d, (_, _, img)| d.faces(img).unwrap_or_default(),
                    )
                    .collect();
                let ms = t.elapsed().as_secs_f64() * 1000.0 / images.len().max(1) as f64 * rayon::current_num_threads() as f64;
                eprintln!("up={up} pyr={pyr} step={step}: {ms:.2} cpu-ms/image");
                for thr in thresholds {
                    for min in min_sizes {
                        let one: Vec<bool> =
                            found.iter().map(|f| f.iter().filter(|x| x.score >= thr && x.size >= min as f64).count() == 1).collect();
                        let agree =
                            |f: &dyn Fn(&str) -> bool| rate(images.iter().zip(&one).filter(|(x, _)| f(&x.0)).map(|(x, o)| x.1 == *o));
                        let ours = |f: &dyn Fn(&str) -> bool| rate(images.iter().zip(&one).filter(|(x, _)| f(&x.0)).map(|(_, o)| *o));
                        let (ar, asy, aa) = (agree(&|g| real(g)), agree(&|g| !real(g)), agree(&|_| true));
                        let (rr, rs) = (ours(&|g| real(g)), ours(&|g| !real(g)));
                        csv.push_str(&format!("{up},{pyr},{step},{thr},{min},{ar:.4},{asy:.4},{aa:.4},{rr:.4},{rs:.4},{ms:.2}\n"));
                        rows.push((
                            aa,
                            format!(
                                "| {up} | {pyr} | {step} | {thr} | {min} | {ar:.4} | {asy:.4} | {aa:.4} | {rr:.4} | {rs:.4} | {ms:.2} |"
                            ),
                        ));
                    }
                }
                std::fs::write(out, &csv)?;
            }
        }
    }
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    println!(
        "| upscale | pyramid | step | thresh | min face | agree real | agree synth | agree all | rate real | rate synth | cpu ms/img |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (_, r) in rows.iter().take(25) {
        println!("{r}");
    }
    Ok(())
}

fn rate(it: impl Iterator<Item = bool>) -> f64 {
    let (mut n, mut k) = (0usize, 0usize);
    for b in it {
        n += 1;
        k += b as usize;
    }
    if n == 0 {
        0.0
    } else {
        k as f64 / n as f64
    }
}

// ---------------------------------------------------------------- synth

/// splitmix64: small, seedable, good enough for test images.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(1e-12);
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos()
    }
}

fn add_noise(img: &RgbImage, sigma: f64, rng: &mut Rng) -> RgbImage {
    let mut out = img.clone();
    for p in out.pixels_mut() {
        for c in &mut p.0 {
            *c = (*c as f64 + sigma * rng.normal()).round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// Kinds of "generated-like" images, each with the face count a good detector should report.
const KINDS: [&str; 10] = ["flip", "blur1", "blur2", "noise20", "noise50", "mixup", "shuffle4", "mosaic2x2", "uniform", "smooth"];

fn synth(src: &Path, out: &Path, n: usize, seed: u64) -> Result<()> {
    let mut files = image_files(&[src.display().to_string()])?;
    files.truncate(n);
    if files.len() < 4 {
        bail!("need at least 4 source images");
    }
    let faces: Vec<RgbImage> = files.iter().map(|p| load_rgb(p)).collect::<Result<_>>()?;
    let mut rng = Rng(seed);
    for kind in KINDS {
        std::fs::create_dir_all(out.join(kind))?;
    }
    for (i, face) in faces.iter().enumerate() {
        let (w, h) = face.dimensions();
        let other = &faces[(i + 1 + (rng.next() as usize % (faces.len() - 1))) % faces.len()];
        for kind in KINDS {
            let img = match kind {
                "flip" => image::imageops::flip_horizontal(face),
                "blur1" => image::imageops::blur(face, 1.0),
                "blur2" => image::imageops::blur(face, 2.0),
                "noise20" => add_noise(face, 20.0, &mut rng),
                "noise50" => add_noise(face, 50.0, &mut rng),
                // Ghosted blend of two faces: a common GAN failure look.
                "mixup" => RgbImage::from_fn(w, h, |x, y| {
                    let (a, b) = (face.get_pixel(x, y).0, other.get_pixel(x % other.width(), y % other.height()).0);
                    Rgb([0, 1, 2].map(|c| (a[c] as u16 + b[c] as u16).div_ceil(2) as u8))
                }),
                // Right colours and textures, broken layout.
                "shuffle4" => {
                    let (tw, th) = (w / 4, h / 4);
                    let mut order: Vec<u32> = (0..16).collect();
                    for k in (1..16).rev() {
                        order.swap(k, rng.next() as usize % (k + 1));
                    }
                    RgbImage::from_fn(w, h, |x, y| {
                        let (tx, ty) = ((x / tw).min(3), (y / th).min(3));
                        let s = order[(ty * 4 + tx) as usize];
                        let (sx, sy) = ((s % 4) * tw + x % tw, (s / 4) * th + y % th);
                        *face.get_pixel(sx.min(w - 1), sy.min(h - 1))
                    })
                }
                // Four half-size faces: "multiple faces" for a good detector if it can see small faces.
                "mosaic2x2" => {
                    let mut m = RgbImage::new(w, h);
                    for q in 0..4u32 {
                        let f = &faces[(i + q as usize) % faces.len()];
                        let small = image::imageops::resize(f, w / 2, h / 2, image::imageops::FilterType::Triangle);
                        image::imageops::replace(&mut m, &small, ((q % 2) * (w / 2)) as i64, ((q / 2) * (h / 2)) as i64);
                    }
                    m
                }
                "uniform" => RgbImage::from_fn(w, h, |_, _| Rgb([0, 0, 0].map(|_: u8| (rng.next() >> 56) as u8))),
                // Blob-like colour noise, stretched to full contrast.
                "smooth" => {
                    let noise = RgbImage::from_fn(w, h, |_, _| Rgb([0, 0, 0].map(|_: u8| (rng.next() >> 56) as u8)));
                    let b = image::imageops::blur(&noise, 3.0);
                    let (lo, hi) = b.pixels().flat_map(|p| p.0).fold((255u8, 0u8), |(l, h), v| (l.min(v), h.max(v)));
                    let span = (hi.saturating_sub(lo)).max(1) as f64;
                    RgbImage::from_fn(w, h, |x, y| Rgb(b.get_pixel(x, y).0.map(|v| ((v - lo) as f64 * 255.0 / span).round() as u8)))
                }
                _ => unreachable!(),
            };
            let name = files[i].file_name().ok_or_else(|| anyhow!("no file name"))?;
            img.save(out.join(kind).join(name))?;
        }
    }
    println!("{} sources x {} kinds -> {}", faces.len(), KINDS.len(), out.display());
    Ok(())
}
