//! One benchmark run, side by side: every backend and device this machine can use, on the graders' models.
//!
//!   cargo run --release --example bench [-- OPTIONS]
//!   cargo run --release --features tract-cuda --example bench -- --rows 200,2000     # on a GPU machine
//!
//! Prints the machine (CPU model, cores, memory, load, GPUs from nvidia-smi), then for each of tract cpu,
//! ort cpu, ort cuda, tract cuda (each where it opens here; why not otherwise) and PyTorch eager (cpu and
//! cuda, when a Python with torch is found, on the same weights as the ONNX file):
//! - the diffusion noise model (default: the bundled seed-width UNet): evaluations per second at each
//!   call size, and what that means in digits per second for `grade ddpm` with DDPM's 1000 steps and
//!   guidance (999 model calls on 2 rows per digit: 1998 evaluations per digit);
//! - the seed DCGAN generator (width 64, seeded weights; `grade gan` makes 1000 faces): faces per second;
//! - the FID Inception, when installed (`grade gan` extracts features of 1000 generated and 2000 real
//!   faces): images per second.
//!
//! Options: `--noise MODEL.onnx`, `--rows 20,200` (rows per noise-model call; `grade ddpm` sends
//! 2 x --batch rows with guidance, at most `call_rows` of them on the CPU), `--cpu-rows 20` (other rows
//! for the CPU cases, e.g. on a GPU machine), `--seconds 3` (timed time per
//! case, after one warm-up call), `--no-generator`, `--no-inception`, `--no-torch`, `--only cpu|cuda`,
//! `--json PATH` (every figure, for scripts). PyTorch: `GRADEKIT_TORCH_PYTHON` (default: .mldeps/torch's).
//! `--write-dcgan PATH` only writes the generator it benchmarks (seeded, width 64) and exits.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gradekit::onnx::{Contract, ModelFile, ModelKind, ModelLimits};
use gradekit::runtime::{self, BackendChoice, Device, Engine, Input, RuntimeOptions};

/// Noise-model evaluations per generated digit in `grade ddpm --sampler ddpm` with guidance.
const EVALS_PER_DIGIT_DDPM: f64 = 2.0 * 999.0;

struct Args {
    noise: PathBuf,
    rows: Vec<usize>,
    /// Rows per call for the CPU cases (default: --rows); a GPU session keeps the CPU cases short.
    cpu_rows: Option<Vec<usize>>,
    seconds: f64,
    generator: bool,
    inception: bool,
    torch: bool,
    only: Option<Device>,
    json: Option<PathBuf>,
    write_dcgan: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut a = Args {
        noise: root.join("models/ddpm-unet-w64.onnx"),
        rows: vec![20, 200],
        cpu_rows: None,
        seconds: 3.0,
        generator: true,
        inception: true,
        torch: true,
        only: None,
        json: None,
        write_dcgan: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--noise" => a.noise = PathBuf::from(val()?),
            "--rows" => a.rows = val()?.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>()?,
            "--cpu-rows" => a.cpu_rows = Some(val()?.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>()?),
            "--seconds" => a.seconds = val()?.parse()?,
            "--no-generator" => a.generator = false,
            "--no-inception" => a.inception = false,
            "--no-torch" => a.torch = false,
            "--only" => {
                a.only = Some(match val()?.as_str() {
                    "cpu" => Device::Cpu,
                    "cuda" => Device::Cuda,
                    o => bail!("--only {o}: cpu or cuda"),
                })
            }
            "--json" => a.json = Some(PathBuf::from(val()?)),
            "--write-dcgan" => a.write_dcgan = Some(PathBuf::from(val()?)),
            "-h" | "--help" => {
                println!("usage: bench [--noise MODEL.onnx] [--rows 20,200] [--cpu-rows N,...] [--seconds 3] [--no-generator] [--no-inception] [--no-torch] [--only cpu|cuda] [--json PATH]");
                std::process::exit(0);
            }
            o => bail!("unknown option {o} (--help)"),
        }
    }
    if a.rows.is_empty() || a.rows.contains(&0) || a.cpu_rows.as_ref().is_some_and(|r| r.is_empty() || r.contains(&0)) {
        bail!("--rows: positive numbers, comma-separated");
    }
    Ok(a)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The machine, in words: CPU model, cores, memory, load, GPUs.
fn machine() -> Vec<String> {
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_string()));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mem = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").and_then(|r| r.trim().trim_end_matches(" kB").parse::<f64>().ok()))
        .map(|kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    let mut v = vec![format!(
        "cpu: {} ({cores} cores available, {mem} memory, {}, load average {})",
        cpu.unwrap_or_else(|| "unknown".into()),
        std::env::consts::ARCH,
        read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    )];
    match std::process::Command::new("nvidia-smi").args(["--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]).output()
    {
        Ok(o) if o.status.success() => {
            for l in String::from_utf8_lossy(&o.stdout).lines().filter(|l| !l.trim().is_empty()) {
                v.push(format!("gpu: {}", l.trim()));
            }
        }
        _ => v.push("gpu: none (no nvidia-smi)".into()),
    }
    v
}

/// Runs `call` once to warm up, then repeatedly for about `seconds`; returns calls per second.
fn timed(seconds: f64, mut call: impl FnMut() -> Result<()>) -> Result<(f64, usize)> {
    call()?;
    let t0 = Instant::now();
    let mut n = 0;
    while n < 2 || t0.elapsed() < Duration::from_secs_f64(seconds) {
        call()?;
        n += 1;
    }
    Ok((n as f64 / t0.elapsed().as_secs_f64(), n))
}

struct Case {
    name: &'static str,
    opts: RuntimeOptions,
}

fn cases(only: Option<Device>) -> Vec<Case> {
    let mk = |backend, device| RuntimeOptions { backend, device, ..Default::default() };
    [
        Case { name: "tract", opts: mk(BackendChoice::Tract, Device::Cpu) },
        Case { name: "ort", opts: mk(BackendChoice::Ort, Device::Cpu) },
        Case { name: "ort", opts: mk(BackendChoice::Ort, Device::Cuda) },
        Case { name: "tract", opts: mk(BackendChoice::Tract, Device::Cuda) },
    ]
    .into_iter()
    .filter(|c| only.is_none_or(|d| d == c.opts.device))
    .collect()
}

fn dev(d: Device) -> &'static str {
    match d {
        Device::Cpu => "cpu",
        Device::Cuda => "cuda",
    }
}

/// The noise model's bench inputs for `rows` rows (a mid-run sampling call: one timestep, labels with
/// the null label mixed in).
fn noise_inputs(rows: usize) -> (Vec<f32>, Vec<i64>, Vec<i64>) {
    let x = (0..rows * 3 * 28 * 28).map(|k| ((k as f32) * 0.618).sin()).collect();
    (x, vec![500; rows], (0..rows as i64).map(|i| i % 11).collect())
}

fn run_noise(e: &mut dyn Engine, c: &Contract, rows: usize, x: &[f32], t: &[i64], l: &[i64]) -> Result<Vec<f32>> {
    let out = e.run(
        &[Input::f32(&c.inputs[0], &[rows, 3, 28, 28], x), Input::i64(&c.inputs[1], &[rows], t), Input::i64(&c.inputs[2], &[rows], l)],
        &c.output,
    )?;
    Ok(out.data)
}

/// Dumps the noise model's float initializers for the PyTorch side (`weights.json` names, shapes and
/// offsets into `weights.bin`, little-endian f32) and the parity inputs.
fn dump_weights(file: &ModelFile, dir: &Path, rows: usize) -> Result<()> {
    let mut index = serde_json::Map::new();
    let mut bin: Vec<u8> = vec![];
    for init in &file.proto.graph.as_ref().context("model has no graph")?.initializer {
        if init.data_type != 1 {
            continue; // float only; the int64 constants are graph plumbing
        }
        let vals: Vec<f32> = if !init.raw_data.is_empty() {
            init.raw_data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        } else {
            init.float_data.clone()
        };
        index.insert(init.name.clone(), serde_json::json!({"shape": init.dims, "offset": bin.len() / 4, "len": vals.len()}));
        for v in vals {
            bin.extend_from_slice(&v.to_le_bytes());
        }
    }
    std::fs::write(dir.join("weights.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(dir.join("weights.bin"), bin)?;
    let (x, t, l) = noise_inputs(rows);
    std::fs::write(dir.join("x.bin"), x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())?;
    std::fs::write(dir.join("tl.json"), serde_json::to_vec(&serde_json::json!({"t": t, "label": l, "rows": rows}))?)?;
    Ok(())
}

fn torch_python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("GRADEKIT_TORCH_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".mldeps/torch/bin/python");
    p.is_file().then_some(p)
}

/// An error for a table cell: one line, no pipes, at most 200 characters (the JSON keeps it whole).
fn cell(err: &anyhow::Error) -> String {
    let s = format!("{err:#}").replace('|', "/").replace('\n', " ");
    if s.chars().count() > 200 {
        format!("{}...", s.chars().take(200).collect::<String>())
    } else {
        s
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return f32::INFINITY;
    }
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The generator the bench times: the seed DCGAN at width 64 with seeded weights.
fn seed_dcgan(path: &Path) -> Result<()> {
    let proto = gradekit::nn::dcgan::to_onnx(&mut gradekit::nn::weights::SeededInit::new(11), 64)?;
    gradekit::onnx::writer::save(&proto, path)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if let Some(p) = &args.write_dcgan {
        seed_dcgan(p)?;
        println!("wrote {}", p.display());
        return Ok(());
    }
    let mut json = serde_json::json!({"machine": machine(), "noise": [], "generator": [], "inception": [], "skipped": [], "parity": []});
    println!("# gradekit bench");
    for l in machine() {
        println!("{l}");
    }
    let push = |json: &mut serde_json::Value, key: &str, v: serde_json::Value| json[key].as_array_mut().unwrap().push(v);

    // The noise model.
    let file = ModelFile::open(&args.noise, &ModelLimits::default())?;
    let contract = Contract::resolve(&file, ModelKind::Noise, &Default::default());
    contract.ensure_ok(&file)?;
    println!(
        "\nnoise model: {} (width {}); {:.0} s timed per case after a warm-up call; digits/s: `grade ddpm --sampler ddpm` (1000 steps, guidance: {} evaluations per digit)",
        args.noise.display(),
        contract.meta("width").unwrap_or("?"),
        args.seconds,
        EVALS_PER_DIGIT_DDPM
    );
    println!(
        "| runtime | device | rows/call | evaluations/s | DDPM-1000 digits/s | 1000 digits x 1000 steps |\n|---|---|---:|---:|---:|---:|"
    );
    let parity_rows = args.rows[0].min(20);
    let mut reference: Option<(String, Vec<f32>)> = None;
    let row = |name: &str, device: &str, rows: usize, eps: f64| {
        let digits = eps / EVALS_PER_DIGIT_DDPM;
        println!("| {name} | {device} | {rows} | {eps:.1} | {digits:.3} | {:.0} s |", 1000.0 / digits);
    };
    for case in cases(args.only) {
        let label = format!("{} {}", case.name, dev(case.opts.device));
        let mut e = match runtime::open(&file, &case.opts) {
            Ok(e) => e,
            Err(err) => {
                println!("| {} | {} | - | skipped: {} | | |", case.name, dev(case.opts.device), cell(&err));
                push(&mut json, "skipped", serde_json::json!({"case": label, "why": format!("{err:#}")}));
                continue;
            }
        };
        let rows_here = match (case.opts.device, &args.cpu_rows) {
            (Device::Cpu, Some(r)) => r.clone(),
            _ => args.rows.clone(),
        };
        for &rows in &rows_here {
            let (x, t, l) = noise_inputs(rows);
            let r = timed(args.seconds, || run_noise(e.as_mut(), &contract, rows, &x, &t, &l).map(|_| ()));
            match r {
                Ok((cps, calls)) => {
                    let eps = cps * rows as f64;
                    row(case.name, dev(case.opts.device), rows, eps);
                    push(
                        &mut json,
                        "noise",
                        serde_json::json!({"runtime": case.name, "device": dev(case.opts.device), "rows": rows, "calls": calls, "evaluations_per_second": eps, "ddpm1000_digits_per_second": eps / EVALS_PER_DIGIT_DDPM}),
                    );
                }
                Err(err) => println!("| {} | {} | {rows} | failed: {} | | |", case.name, dev(case.opts.device), cell(&err)),
            }
        }
        // Parity against the first runtime that ran, on the same call.
        let (x, t, l) = noise_inputs(parity_rows);
        if let Ok(out) = run_noise(e.as_mut(), &contract, parity_rows, &x, &t, &l) {
            match &reference {
                None => reference = Some((label.clone(), out)),
                Some((rl, r)) => {
                    let d = max_diff(r, &out);
                    push(&mut json, "parity", serde_json::json!({"a": rl, "b": label, "max_abs_diff": d}));
                }
            }
        }
    }

    // PyTorch eager on the same weights.
    if args.torch {
        match torch_python() {
            None => println!("| pytorch eager | - | - | skipped: no Python with torch (.mldeps/torch: bash scripts/install-torch.sh, or GRADEKIT_TORCH_PYTHON) | | |"),
            Some(py) => {
                let dir = tempfile::tempdir()?;
                dump_weights(&file, dir.path(), parity_rows)?;
                let rows = args.rows.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(",");
                let devices = match args.only {
                    Some(d) => dev(d).to_string(),
                    None => "cpu,cuda".into(),
                };
                let out = std::process::Command::new(&py)
                    .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/reference/bench_torch.py"))
                    .arg(dir.path())
                    .args([&rows, &args.seconds.to_string(), &devices, contract.meta("width").unwrap_or("64")])
                    .args(args.cpu_rows.iter().map(|r| r.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",")))
                    .output()
                    .with_context(|| format!("running {}", py.display()))?;
                if !out.status.success() {
                    println!("| pytorch eager | - | - | failed: {} | | |", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("").replace('|', "/"));
                }
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
                    if let Some(why) = v["skipped"].as_str() {
                        println!("| pytorch eager | {} | - | skipped: {why} | | |", v["device"].as_str().unwrap_or("?"));
                        continue;
                    }
                    let device = v["device"].as_str().unwrap_or("?").to_string();
                    if let Some(eps) = v["evaluations_per_second"].as_f64() {
                        row("pytorch eager", &device, v["rows"].as_u64().unwrap_or(0) as usize, eps);
                        push(&mut json, "noise", serde_json::json!({"runtime": "pytorch eager", "device": device, "rows": v["rows"], "evaluations_per_second": eps, "ddpm1000_digits_per_second": eps / EVALS_PER_DIGIT_DDPM, "torch": v["torch"]}));
                    }
                    if v["parity_file"].is_string() {
                        let bytes = std::fs::read(dir.path().join(v["parity_file"].as_str().unwrap()))?;
                        let eps: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
                        if let Some((rl, r)) = &reference {
                            let d = max_diff(r, &eps);
                            push(&mut json, "parity", serde_json::json!({"a": rl, "b": format!("pytorch eager {device}"), "max_abs_diff": d}));
                        }
                    }
                }
            }
        }
    }
    let parity = json["parity"].as_array().cloned().unwrap_or_default();
    if !parity.is_empty() {
        println!("\nsame call ({parity_rows} rows), max |difference| of the noise prediction:");
        for p in parity {
            println!(
                "  {} vs {}: {:.2e}",
                p["a"].as_str().unwrap_or("?"),
                p["b"].as_str().unwrap_or("?"),
                p["max_abs_diff"].as_f64().unwrap_or(f64::NAN)
            );
        }
    }

    // The GAN generator: the seed DCGAN (width 64), seeded weights, batch 100.
    if args.generator {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("dcgan-w64.onnx");
        seed_dcgan(&path)?;
        let g = ModelFile::open(&path, &ModelLimits::default())?;
        let gc = Contract::resolve(&g, ModelKind::Generator, &Default::default());
        let latent: usize = gc.meta("latent_dim").ok().and_then(|s| s.parse().ok()).unwrap_or(100);
        let n = 100;
        let z: Vec<f32> = (0..n * latent).map(|k| ((k as f32) * 0.377).sin()).collect();
        println!("\nGAN generator: the seed DCGAN (width 64, seeded weights), {n} faces per call (`grade gan` makes 1000)");
        println!("| runtime | device | faces/s | 1000 faces |\n|---|---|---:|---:|");
        for case in cases(args.only) {
            match runtime::open(&g, &case.opts) {
                Err(err) => println!("| {} | {} | skipped: {} | |", case.name, dev(case.opts.device), cell(&err)),
                Ok(mut e) => {
                    let r = timed(args.seconds, || e.run(&[Input::f32(&gc.inputs[0], &[n, latent, 1, 1], &z)], &gc.output).map(|_| ()));
                    match r {
                        Ok((cps, _)) => {
                            let ips = cps * n as f64;
                            println!("| {} | {} | {ips:.1} | {:.2} s |", case.name, dev(case.opts.device), 1000.0 / ips);
                            push(
                                &mut json,
                                "generator",
                                serde_json::json!({"runtime": case.name, "device": dev(case.opts.device), "faces_per_second": ips}),
                            );
                        }
                        Err(err) => println!("| {} | {} | failed: {} | |", case.name, dev(case.opts.device), cell(&err)),
                    }
                }
            }
        }
    }

    // The FID Inception, when installed.
    if args.inception {
        let installed = std::env::var_os("GRADEKIT_INCEPTION")
            .map(PathBuf::from)
            .filter(|p| p.is_file())
            .or_else(gradekit::metrics::inception::find_default_inception);
        match installed {
            Some(p) => {
                let n = 25;
                println!("\nFID Inception: {} ({n} images of 299x299 per call; `grade gan` extracts 3000)", p.display());
                println!("| runtime | device | images/s | 3000 images |\n|---|---|---:|---:|");
                let file = ModelFile::open(&p, &ModelLimits::default())?;
                let x: Vec<f32> = (0..n * 3 * 299 * 299).map(|k| ((k as f32) * 0.0123).sin()).collect();
                let name = file.inputs.first().map(|i| i.name.clone()).context("inception model has no input")?;
                let out = file.outputs.first().map(|o| o.name.clone()).context("inception model has no output")?;
                for case in cases(args.only) {
                    match runtime::open(&file, &case.opts) {
                        Err(err) => println!("| {} | {} | skipped: {} | |", case.name, dev(case.opts.device), cell(&err)),
                        Ok(mut e) => match timed(args.seconds, || e.run(&[Input::f32(&name, &[n, 3, 299, 299], &x)], &out).map(|_| ())) {
                            Ok((cps, _)) => {
                                let ips = cps * n as f64;
                                println!("| {} | {} | {ips:.1} | {:.0} s |", case.name, dev(case.opts.device), 3000.0 / ips);
                                push(
                                    &mut json,
                                    "inception",
                                    serde_json::json!({"runtime": case.name, "device": dev(case.opts.device), "images_per_second": ips}),
                                );
                            }
                            Err(err) => println!("| {} | {} | failed: {} | |", case.name, dev(case.opts.device), cell(&err)),
                        },
                    }
                }
            }
            None => println!("\nFID Inception: not installed (bash scripts/install-fid-weights.sh); skipped"),
        }
    }
    println!("\nload average at the end: {}", read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_vec_pretty(&json)?)?;
    }
    Ok(())
}
