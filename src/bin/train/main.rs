//! `train`: trains the seed's models with libtorch (tch) and exports them to the ONNX contract the
//! graders read. Built only with the cargo feature `train`; the architectures come from
//! `gradekit::nn` (the same definitions the ONNX exporter records), run here by `tch_ops`.

mod ckpt;
mod data;
mod ddpm;
mod digits;
mod gan;
mod optim;
mod parity;
mod run;
mod tch_ops;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};
use tch::{Device, Tensor};

use crate::optim::Adam;
use crate::tch_ops::ParamStore;

#[derive(Parser)]
#[command(name = "train", version, about = "Train the DLCV hw2 models with libtorch and export them to ONNX")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Options every training command takes.
#[derive(clap::Args, Clone)]
pub struct Common {
    /// Training data (default: the homework folder for this model under data/hw2_data).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Output folder: checkpoint.safetensors, losses.csv/.svg, samples/.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Total optimiser steps (generator steps for GANs); a resumed run continues up to this.
    #[arg(long)]
    pub steps: Option<i64>,
    #[arg(long)]
    pub batch: Option<usize>,
    /// Learning rate (default: the reference's for this model).
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Continue from a checkpoint written by the same command (weights, optimiser state, EMA, step).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Write the checkpoint, curves and sample grid every N steps (and at the end).
    #[arg(long, default_value_t = 500)]
    pub save_every: i64,
    /// Stop (and checkpoint) once this much time has passed, e.g. 10m; --resume continues.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_time: Option<std::time::Duration>,
    /// Stop after step N and checkpoint (the schedules stay those of --steps; --resume continues).
    #[arg(long)]
    pub stop_at: Option<i64>,
    /// Use at most N training images (quick runs).
    #[arg(long)]
    pub limit: Option<usize>,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Start over in an --out folder that already holds a checkpoint (it is overwritten).
    #[arg(long)]
    pub force: bool,
    /// CPU threads for libtorch (default: all cores).
    #[arg(long)]
    pub threads: Option<i32>,
}

impl Common {
    /// Checks the options before any data is read (an --out folder holding a checkpoint needs
    /// --resume or --force) and returns the device.
    pub fn start(&self) -> Result<Device> {
        let ck = self.out.join("checkpoint.safetensors");
        if ck.exists() && self.resume.is_none() && !self.force {
            bail!(
                "{} already holds a checkpoint: continue it with --resume {}, or pass --force to start over",
                self.out.display(),
                ck.display()
            );
        }
        self.device()
    }

    pub fn device(&self) -> Result<Device> {
        if let Some(t) = self.threads {
            tch::set_num_threads(t);
        }
        parse_device(&self.device)
    }

    /// Seeds libtorch's generator for one step, so a resumed run draws the same noise as an
    /// uninterrupted one.
    pub fn seed_step(&self, step: i64) {
        tch::manual_seed((self.seed as i64).wrapping_mul(1_000_003).wrapping_add(step));
    }

    /// Whether --max-time has run out since `t0`.
    pub fn time_up(&self, t0: std::time::Instant) -> bool {
        self.max_time.is_some_and(|m| t0.elapsed() >= m)
    }

    /// The last step this invocation runs.
    pub fn last_step(&self, steps: i64) -> i64 {
        self.stop_at.map_or(steps, |s| s.min(steps))
    }

    pub fn data_dir(&self, default: &str) -> PathBuf {
        self.data.clone().unwrap_or_else(|| PathBuf::from(default))
    }

    /// Loads `--resume` into the built model and optimisers; returns the step to continue from and
    /// the checkpoint's tensors (for state kept elsewhere, such as EMA weights). `recipe` holds
    /// (option, this run's value, the value of checkpoints written before the option existed): a
    /// checkpoint recording another value is refused, since the resumed run would be neither recipe.
    pub fn resume_into(
        &self,
        kind: &str,
        recipe: &[(&str, &str, &str)],
        p: &mut ParamStore,
        opts: &mut [(&str, &mut Adam)],
    ) -> Result<(i64, BTreeMap<String, Tensor>)> {
        let Some(path) = &self.resume else { return Ok((0, BTreeMap::new())) };
        let (tensors, meta) = ckpt::load(path, p.device)?;
        let theirs = meta.get("kind").map(String::as_str).unwrap_or("?");
        if theirs != kind {
            bail!("{}: a `{theirs}` checkpoint cannot resume `train {kind}`", path.display());
        }
        for (option, ours, before) in recipe {
            let theirs = meta.get(*option).map_or(*before, String::as_str);
            if theirs != *ours {
                bail!("{} was trained with --{option} {theirs}, this run asks for {ours}: resume it with the same recipe", path.display());
            }
        }
        ckpt::restore(p, &tensors, path)?;
        let step: i64 = meta.get("step").and_then(|s| s.parse().ok()).unwrap_or(0);
        for (tag, o) in opts.iter_mut() {
            o.load_state(tag, &tensors);
        }
        eprintln!("resumed from {} at step {step}", path.display());
        Ok((step, tensors))
    }
}

#[derive(Subcommand)]
enum Command {
    /// DCGAN on the faces (Adam 2e-4, betas 0.5/0.999, BCE, N(0, 0.02) init).
    Dcgan {
        #[command(flatten)]
        common: Common,
        /// Channel width (64 = the seed).
        #[arg(long, default_value_t = 64)]
        width: usize,
    },
    /// WGAN-GP on the faces (lambda 10, 5 critic steps per generator step, Adam 1e-4, betas 0/0.9).
    WganGp {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 64)]
        width: usize,
        #[arg(long, default_value_t = 5)]
        critic_steps: usize,
        #[arg(long, default_value_t = 10.0)]
        gp_lambda: f64,
    },
    /// The conditional diffusion UNet on MNIST-M (AdamW 3e-4, 10% label dropout, EMA 0.995).
    Ddpm {
        #[command(flatten)]
        common: Common,
        /// Channel width (64 = the seed's 4.56 M parameters; 16 or 32 for CPU runs).
        #[arg(long, default_value_t = 64)]
        width: usize,
        #[arg(long, default_value_t = 0.1)]
        label_dropout: f64,
        #[arg(long, default_value_t = 0.995)]
        ema: f64,
        /// DDIM steps of the sample grid written at each save.
        #[arg(long, default_value_t = 25)]
        sample_steps: usize,
        /// Classifier-free guidance of the sample grid.
        #[arg(long, default_value_t = 3.0)]
        guidance: f64,
    },
    /// DANN, source-only or target-only training for MNIST-M -> SVHN / USPS.
    Dann {
        #[command(flatten)]
        common: Common,
        #[arg(long, value_enum)]
        pair: digits::Pair,
        #[arg(long, value_enum, default_value = "dann")]
        mode: digits::Mode,
        /// Evaluate on the validation splits every N steps.
        #[arg(long, default_value_t = 500)]
        eval_every: i64,
        /// Augment training batches: colour (random greyscale and inversion, both domains), zoom
        /// (random zoom-in crops of the labelled images); e.g. --augment colour,zoom.
        #[arg(long, value_enum, value_delimiter = ',')]
        augment: Vec<digits::AugmentKind>,
    },
    /// The course's LeNet digit classifier (the diffusion grader's judge) on MNIST-M.
    Classifier {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 500)]
        eval_every: i64,
    },
    /// Export a checkpoint to a contract ONNX model (no libtorch needed for this step).
    Export {
        #[arg(value_enum)]
        kind: ExportKind,
        checkpoint: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// Metadata to write into the model, KEY=VALUE (e.g. guidance_scale=3); repeatable.
        #[arg(long = "meta", value_name = "KEY=VALUE")]
        meta: Vec<String>,
    },
    /// Sample the course's diffusion output folder (0_001.png ... 9_100.png) from a ddpm checkpoint
    /// with libtorch (EMA weights, DDIM, classifier-free guidance); grade it with `grade digits`.
    Sample {
        checkpoint: PathBuf,
        /// The folder for 0_001.png ... 9_100.png (nothing else is written into it).
        #[arg(long, short)]
        out: PathBuf,
        /// Also write a grid of the first ten samples per digit to this PNG file.
        #[arg(long)]
        grid: Option<PathBuf>,
        #[arg(long, default_value_t = 100)]
        per_class: usize,
        #[arg(long, default_value_t = 50)]
        steps: usize,
        #[arg(long, default_value_t = 3.0)]
        guidance: f64,
        #[arg(long, default_value_t = 500)]
        batch: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Seeded weights and tch outputs for the export parity tests.
    Parity {
        #[arg(value_enum)]
        kind: parity::ParityKind,
        #[arg(long, short)]
        out: PathBuf,
        #[arg(long, default_value_t = 16)]
        width: usize,
        /// Batch sizes to record.
        #[arg(long, value_delimiter = ',', default_value = "1,7")]
        batches: Vec<i64>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ExportKind {
    /// DCGAN generator (generator contract).
    Dcgan,
    /// WGAN-GP generator (generator contract).
    WganGp,
    /// Diffusion UNet with EMA weights (noise contract).
    Ddpm,
    /// DANN feature extractor + label classifier (classifier contract).
    Dann,
    /// LeNet digit classifier (classifier contract).
    Classifier,
    /// DCGAN discriminator / WGAN-GP critic (for inspection).
    Discriminator,
    Critic,
}

/// `--device cpu|cuda` as a tch device; cuda must be visible to libtorch.
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        "cuda" => bail!("--device cuda: libtorch sees no CUDA device (build against the CUDA libtorch: `bash scripts/install-libtorch.sh cuda`, and check the driver)"),
        d => bail!("--device {d}: use cpu or cuda"),
    }
}

/// A [N, 3, H, W] tensor in [-1, 1] as images, with the course's pixel rounding.
pub fn images_from(x: &Tensor) -> Vec<image::RgbImage> {
    let (shape, data) = ckpt::to_vec(x);
    let (n, h, w) = (shape[0], shape[2], shape[3]);
    let per = 3 * h * w;
    (0..n)
        .map(|i| gradekit::pictures::chw_to_rgb(&data[i * per..(i + 1) * per], w as u32, h as u32, gradekit::diffusion::sampler::to_u8))
        .collect()
}

/// A [N, 3, H, W] tensor in [-1, 1] as a grid picture.
pub fn pictures_from(x: &Tensor, cols: usize) -> Result<image::RgbImage> {
    let imgs = images_from(x);
    let scale = if imgs.first().is_some_and(|i| i.height() < 40) { 3 } else { 1 };
    Ok(gradekit::pictures::grid(&imgs, cols, 2, scale))
}

fn export(kind: ExportKind, ckpt_path: &Path, out: &Path, meta: &[String]) -> Result<()> {
    use gradekit::tasks::convert::{convert, ConvertKind, ConvertOptions};
    let meta = gradekit::tasks::parse_meta(meta)?.into_iter().collect();
    let (ck, prefix) = match kind {
        ExportKind::Dcgan | ExportKind::WganGp => (ConvertKind::Generator, Some("generator.")),
        ExportKind::Ddpm => (ConvertKind::Unet, None),
        ExportKind::Dann => (ConvertKind::Dann, Some("")),
        ExportKind::Classifier => (ConvertKind::Classifier, Some("")),
        ExportKind::Discriminator => (ConvertKind::Discriminator, Some("discriminator.")),
        ExportKind::Critic => (ConvertKind::Critic, Some("discriminator.")),
    };
    let unused = convert(ck, ckpt_path, out, &ConvertOptions { key: None, prefix, meta })?;
    let foreign: Vec<&String> = unused.iter().filter(|u| !u.starts_with("domain_classifier.")).collect();
    println!("wrote {}", out.display());
    if !foreign.is_empty() {
        println!("note: {} tensor(s) of the checkpoint are not part of the exported model: {:?}", foreign.len(), foreign);
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Dcgan { common, width } => gan::train(&common, &gan::GanArgs { width, wgan: false, critic_steps: 1, gp_lambda: 0.0 }),
        Command::WganGp { common, width, critic_steps, gp_lambda } => {
            gan::train(&common, &gan::GanArgs { width, wgan: true, critic_steps, gp_lambda })
        }
        Command::Ddpm { common, width, label_dropout, ema, sample_steps, guidance } => {
            ddpm::train(&common, &ddpm::DdpmArgs { width, label_dropout, ema_beta: ema, sample_steps, guidance })
        }
        Command::Dann { common, pair, mode, eval_every, augment } => {
            digits::train_dann(&common, &digits::DigitArgs { eval_every, augment: digits::Augment::from_list(&augment) }, pair, mode)
        }
        Command::Classifier { common, eval_every } => {
            digits::train_classifier(&common, &digits::DigitArgs { eval_every, augment: digits::Augment::default() })
        }
        Command::Export { kind, checkpoint, output, meta } => export(kind, &checkpoint, &output, &meta),
        Command::Sample { checkpoint, out, grid, per_class, steps, guidance, batch, seed, device } => parse_device(&device)
            .and_then(|dev| ddpm::sample_folder(&checkpoint, &out, grid.as_deref(), per_class, steps, guidance, batch, seed, dev)),
        Command::Parity { kind, out, width, batches, seed } => parity::run(kind, width, &batches, seed, &out),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
