//! `erc-train`: train an experiment, evaluate a run folder, or check a config against a data folder.
//! Argument parsing only; the work is in the `erc_train` library.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Args, Parser, Subcommand, ValueEnum};
use erc_train::config::{Config, ModelSources, Precision};
use erc_train::train::device::DeviceSpec;
use erc_train::train::losses::Loss;
use erc_train::train::report::RunFolder;
use erc_train::train::{
    self, glove_path, planned_steps, prepare, Progress, TrainOptions, VocabSource,
};
use meld_shared::Split;

/// Multimodal emotion-recognition trainer for MELD (HLM12ERC experiments, candle).
///
/// Without a subcommand: trains CONFIG on the dataset DATA (the output of `meld-etl extract`) and writes a run
/// folder under OUT (config used, metrics.jsonl, summary.json, reports, plots, best weights).
#[derive(Parser)]
#[command(
    name = "erc-train",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    train: TrainArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Evaluate the best weights of a run folder on a split and print the classification report.
    Eval(EvalArgs),
    /// Validate a config and a data folder and print what would be trained.
    Check(CheckArgs),
    /// Label utterances a trained run has never seen: a dataset split (--data), a MELD.Raw folder (--raw) or a
    /// video with its subtitles (--video, --subtitles); writes predictions.csv, emotions.srt (and timeline.png).
    Predict(PredictArgs),
    /// Run the HLM12ERC report's Table 4 (30 experiments; resumable) and write our numbers beside the paper's
    /// (OUT/table4.md, table4.csv, table3.md, table4.png); `--table seeds`: the seed systems on MELD
    /// (OUT/seeds.md, seeds.csv, seeds.png), their own published figures beside ours, labelled as theirs.
    Table4(Table4Args),
    /// The pretrained backbones: `models check` says where each would be loaded from and whether it fits.
    Models(ModelsArgs),
    /// Parity of the backbones with PyTorch on the device, and timings (what scripts/gpu-check.sh runs).
    #[command(hide = true)]
    Selfcheck(SelfcheckArgs),
}

#[derive(Args)]
struct ModelsArgs {
    #[command(subcommand)]
    command: ModelsCommand,
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// For each pretrained backbone a config needs: where it would be loaded from, the weights' format, tensors,
    /// parameters and sha256, and whether every tensor's shape fits the architecture — without training. Exits
    /// non-zero when one is missing or does not fit. Without --config / --all-configs: the backbones the flags
    /// (or the reference's defaults) name.
    Check(ModelsCheckArgs),
}

#[derive(Args)]
struct ModelsCheckArgs {
    /// The backbones of this config.
    #[arg(long, conflicts_with = "all_configs")]
    config: Option<PathBuf>,
    /// The backbones of every config in --configs.
    #[arg(long)]
    all_configs: bool,
    /// Where --all-configs looks for `*.yml`.
    #[arg(long, default_value = "configs")]
    configs: PathBuf,
    /// Skip the sha256 of the weight files (seconds for the real checkpoints).
    #[arg(long)]
    no_sha256: bool,
    #[command(flatten)]
    models: ModelArgs,
}

#[derive(Args)]
struct SelfcheckArgs {
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// The backbone fixtures.
    #[arg(long, default_value = "trainer/tests/fixtures/backbones")]
    fixtures: PathBuf,
    /// Sections: ops, parity, bench.
    #[arg(long, value_delimiter = ',', default_value = "ops,parity,bench")]
    sections: Vec<erc_train::selfcheck::Section>,
    /// Benchmark workloads: gpt2, wav2vec2, resnet50, step.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "gpt2,wav2vec2,resnet50,step"
    )]
    workloads: Vec<erc_train::selfcheck::bench::Workload>,
    /// Small inputs (a rehearsal on a CPU) instead of the reference's sizes.
    #[arg(long)]
    quick: bool,
    #[arg(long, value_delimiter = ',', default_value = "fp32,tf32")]
    precisions: Vec<Precision>,
    #[arg(long, default_value_t = 3)]
    iterations: usize,
    /// ResNet-50's batch (the reference trained at 64).
    #[arg(long, default_value_t = 64)]
    resnet_batch: usize,
    /// Appends every result to this file as one JSON line the moment it is known.
    #[arg(long)]
    jsonl: Option<PathBuf>,
    /// Writes the benchmark plan (the workloads both benchmarks run, scripts/bench_gpu_torch.py --plan) to this
    /// file and runs nothing else.
    #[arg(long)]
    plan: Option<PathBuf>,
    /// A failed benchmark row does not change the exit status (checks still do).
    #[arg(long)]
    allow_bench_failures: bool,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["data", "raw", "video"])))]
struct PredictArgs {
    /// A finished run folder (config.yml, model.safetensors, summary.json).
    #[arg(long)]
    run: PathBuf,
    /// A dataset `meld-etl extract` wrote (with --split).
    #[arg(long)]
    data: Option<PathBuf>,
    /// A MELD.Raw-shaped folder (clips and CSV), extracted first (with --split).
    #[arg(long)]
    raw: Option<PathBuf>,
    /// The split of --data or --raw: train, valid (dev) or test.
    #[arg(long, default_value = "test")]
    split: String,
    /// One video, cut into its utterances by --subtitles.
    #[arg(long, requires = "subtitles")]
    video: Option<PathBuf>,
    /// The video's utterances: SRT, or CSV start,end,text[,speaker][,dialogue].
    #[arg(long, requires = "video")]
    subtitles: Option<PathBuf>,
    /// Where predictions.csv, emotions.srt and timeline.png go (created).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// Default: the run's evaluation batch size.
    #[arg(long)]
    batch_size: Option<usize>,
    /// The RetinaFace ONNX model, for runs whose model reads face-only images (rows 11/12).
    #[arg(long, value_name = "MODEL.onnx")]
    faces: Option<PathBuf>,
    #[command(flatten)]
    models: ModelArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
}

#[derive(Args)]
struct TrainArgs {
    // Options only so that a subcommand can go without them (`subcommand_negates_reqs`); clap requires them
    // for training.
    /// Experiment config (YAML, the reference's keys).
    #[arg(long, required_unless_present = "resume")]
    config: Option<PathBuf>,
    /// Dataset folder written by `meld-etl extract` (train.csv, valid.csv, test.csv and media).
    #[arg(long, required_unless_present = "resume")]
    data: Option<PathBuf>,
    /// Continue an interrupted run folder from its last complete epoch (its own config, data and seed).
    #[arg(long, value_name = "RUN")]
    resume: Option<PathBuf>,
    /// fp32 (default, the reference's numbers) or tf32 (GPU matrix products on tensor cores).
    #[arg(long)]
    precision: Option<Precision>,
    /// Where run folders are created.
    #[arg(long, default_value = "runs")]
    out: PathBuf,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// Overrides the config's `seed`.
    #[arg(long)]
    seed: Option<u64>,
    /// Overrides the config's `epochs`.
    #[arg(long)]
    epochs: Option<usize>,
    /// Overrides the config's `batch_size`.
    #[arg(long)]
    batch_size: Option<usize>,
    /// GloVe vectors (`glove.6B.50d.txt`); default: the config's `text_glove_path`, else models/.
    #[arg(long)]
    glove: Option<PathBuf>,
    /// Use only the first N rows of each split (quick smoke runs).
    #[arg(long)]
    max_rows: Option<usize>,
    #[command(flatten)]
    models: ModelArgs,
}

/// Where the pretrained backbones come from (override the config's `text_model`, `audio_model`,
/// `visual_model`).
#[derive(Args, Clone)]
struct ModelArgs {
    /// GPT-2 or RoBERTa: a local Hugging Face model folder or a hub id, optionally `@REVISION` (default: `gpt2`,
    /// `roberta-base`).
    #[arg(long)]
    text_model: Option<String>,
    /// wav2vec2: a local model folder or a hub id, optionally `@REVISION` (a branch, `refs/pr/N` or a commit;
    /// default: `facebook/wav2vec2-base`).
    #[arg(long)]
    audio_model: Option<String>,
    /// ResNet-50: a torchvision state dict (`.safetensors`, `.pth`, `.bin`; file or folder), a hub id with an
    /// optional `@REVISION` (default: `timm/resnet50.tv_in1k`), or `random`.
    #[arg(long)]
    visual_model: Option<String>,
}

impl ModelArgs {
    fn sources(&self) -> ModelSources {
        ModelSources {
            text: self.text_model.clone(),
            audio: self.audio_model.clone(),
            visual: self.visual_model.clone(),
        }
    }

    fn apply(&self, config: &mut Config) {
        self.sources().apply(config);
    }
}

#[derive(Args)]
struct EvalArgs {
    /// A run folder written by a training run.
    #[arg(long)]
    run: PathBuf,
    /// valid (or dev) or test.
    #[arg(long, default_value = "valid")]
    split: String,
    /// Dataset folder; default: the one the run was trained on.
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// Evaluation batch size; default: the training batch size (it matters with cross-batch attention).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Use only the first N rows of the split (as a `--max-rows` training run did).
    #[arg(long)]
    max_rows: Option<usize>,
    /// Where the backbones' architecture and tokenizer come from, when not where training found them (the
    /// weights themselves come from the run folder).
    #[command(flatten)]
    models: ModelArgs,
}

#[derive(Args)]
struct Table4Args {
    /// Which table: table4 (the HLM12ERC report's) or seeds (the seed systems on MELD).
    #[arg(long, default_value = "table4")]
    table: erc_train::table4::Table,
    /// Dataset folder written by `meld-etl extract` (rows with the reference's audio need `--profile hlm12erc`,
    /// rows 11/12 need `--faces`). With --collect: the dataset the rows' numbers must come from.
    #[arg(long)]
    data: PathBuf,
    /// The dataset of the --corrected rows (16 kHz mono WAVs: a plain `meld-etl extract`); default: --data.
    #[arg(long)]
    corrected_data: Option<PathBuf>,
    /// Where the row folders and the tables go (default: runs/table4, or runs/seeds with --table seeds).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Rows to run: `01-04,24`, `7` (e.g. $SLURM_ARRAY_TASK_ID); all by default.
    #[arg(long)]
    rows: Option<String>,
    #[arg(long, value_enum, default_value = "cpu", conflicts_with = "devices")]
    device: DeviceArg,
    /// Run rows side by side, one per device, from one queue: `0,1,2,3` (GPUs) or `cpu,cpu`.
    #[arg(long, value_delimiter = ',')]
    devices: Option<Vec<DeviceSpec>>,
    /// Overrides every row's epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Use only the first N rows of each split.
    #[arg(long)]
    max_rows: Option<usize>,
    /// Check that every asked row can run (data, faces, audio format, weights, device) and stop.
    #[arg(long)]
    dry_run: bool,
    /// Run the rows that pass the checks even when others do not.
    #[arg(long)]
    keep_going: bool,
    /// Also run every row with the corrected switches (visual_crop: full, attention_scope: sample, ce for cce,
    /// audio_input: normalized_mono): a second "ours (corrected)" column.
    #[arg(long)]
    corrected: bool,
    /// A check of every row: one training step each on shrunk inputs (not the paper's numbers).
    #[arg(long)]
    smoke: bool,
    /// Keep each finished row's whole resume checkpoint (model and optimiser moments; ~3 GB for the largest
    /// rows) instead of its state alone.
    #[arg(long)]
    keep_checkpoints: bool,
    /// Only assemble the tables from the row folders under OUT (e.g. after a Slurm array); a row's numbers stand
    /// beside the paper's only when its run is the row's config as the paper ran it on --data.
    #[arg(long, value_name = "OUT")]
    collect: Option<PathBuf>,
    #[arg(long)]
    glove: Option<PathBuf>,
    #[command(flatten)]
    models: ModelArgs,
}

#[derive(Args)]
struct CheckArgs {
    #[arg(long)]
    config: PathBuf,
    #[arg(long)]
    data: PathBuf,
    #[arg(long)]
    glove: Option<PathBuf>,
    #[command(flatten)]
    models: ModelArgs,
}

fn device(arg: DeviceArg) -> Result<(Device, String)> {
    let spec = match arg {
        DeviceArg::Cpu => DeviceSpec::Cpu,
        DeviceArg::Cuda => DeviceSpec::Cuda(0),
    };
    Ok((erc_train::train::device::open(spec)?, spec.to_string()))
}

fn progress() -> Progress {
    if std::io::stderr().is_terminal() {
        Progress::Terminal
    } else {
        Progress::Hidden
    }
}

/// Errors end the process with their message and its causes on one line (exit status 1), whatever
/// RUST_BACKTRACE says: a user is told the cause and the fix, not a backtrace.
fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            // 130 (as a shell reports SIGINT): stopped on request, resumable; 1: failed
            match e.downcast_ref::<erc_train::Error>() {
                Some(erc_train::Error::Interrupted(_)) => std::process::ExitCode::from(130),
                _ => std::process::ExitCode::FAILURE,
            }
        }
    }
}

fn run() -> Result<()> {
    erc_train::init_cpu_threads();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    // a stop signal ends training at a step boundary, its last epoch's checkpoint intact (rerun to resume)
    erc_train::train::interrupt::install();
    match cli.command {
        Some(Command::Eval(args)) => eval(args),
        Some(Command::Predict(args)) => predict(args),
        Some(Command::Check(args)) => check(args),
        Some(Command::Table4(args)) => table4(args),
        Some(Command::Models(ModelsArgs {
            command: ModelsCommand::Check(args),
        })) => models_check(args),
        Some(Command::Selfcheck(args)) => selfcheck(args),
        None => run_training(cli.train),
    }
}

fn run_training(args: TrainArgs) -> Result<()> {
    if let Some(run) = &args.resume {
        return resume(run, &args);
    }
    let (Some(config_path), Some(data)) = (&args.config, &args.data) else {
        bail!("nothing to do: pass --config and --data to train, or --resume RUN (see --help)");
    };
    let mut loaded = Config::load(config_path)?;
    let config = &mut loaded.config;
    if args.seed.is_some() {
        config.seed = args.seed;
    }
    if args.epochs.is_some() {
        config.epochs = args.epochs;
    }
    if args.batch_size.is_some() {
        config.batch_size = args.batch_size;
    }
    if let Some(precision) = args.precision {
        config.precision = precision;
    }
    args.models.apply(config);
    if args.epochs == Some(0) || args.batch_size == Some(0) {
        bail!("--epochs and --batch-size must be positive");
    }
    let glove = glove_path(config, args.glove.as_deref());
    let (device, device_name) = device(args.device)?;
    let prepared = prepare(loaded, data, VocabSource::GloveFile(glove), args.max_rows)?;
    let mut options = TrainOptions::new(data, &args.out, device, &device_name);
    options.progress = progress();
    finish(train::train(prepared, &options)?)
}

/// `--resume RUN`: the run's own config, data and row limit, continued from its last complete epoch.
fn resume(run_dir: &Path, args: &TrainArgs) -> Result<()> {
    if args.config.is_some()
        || args.seed.is_some()
        || args.epochs.is_some()
        || args.batch_size.is_some()
    {
        bail!("--resume continues a run with its own config: drop --config, --seed, --epochs and --batch-size");
    }
    let run = RunFolder::open(run_dir)?;
    if erc_train::train::checkpoint::read(run_dir)?.is_none() {
        bail!(
            "{}: no resume checkpoint ({}) to continue from",
            run_dir.display(),
            erc_train::train::checkpoint::FILE
        );
    }
    let info = run.run_info()?;
    let data = match &args.data {
        Some(d) => d.clone(),
        None => PathBuf::from(
            info["data"]
                .as_str()
                .context("run.json has no `data`: pass --data")?,
        ),
    };
    let max_rows = info["max_rows"].as_u64().map(|n| n as usize);
    let loaded = Config::load(&run.config())?;
    let (device, device_name) = device(args.device)?;
    let vocab = run.vocab();
    let prepared = prepare(loaded, &data, VocabSource::RunWords(&vocab), max_rows)?;
    let out = run_dir.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut options = TrainOptions::new(&data, &out, device, &device_name);
    options.run_dir = Some(run_dir.to_path_buf());
    options.resume = true;
    options.progress = progress();
    finish(train::train(prepared, &options)?)
}

fn finish((run, summary): (PathBuf, erc_train::train::report::Summary)) -> Result<()> {
    println!("{}", summary.table());
    let report = run.join("report-valid.txt");
    if let Ok(text) = std::fs::read_to_string(&report) {
        println!("classification report (valid, best epoch):\n{text}");
    }
    println!("run folder: {}", run.display());
    Ok(())
}

fn eval(args: EvalArgs) -> Result<()> {
    let run = RunFolder::open(&args.run)?;
    let info = run.run_info()?;
    let data = match args.data {
        Some(d) => d,
        None => PathBuf::from(
            info["data"]
                .as_str()
                .context("run.json has no `data`: pass --data")?,
        ),
    };
    let split: Split = args.split.parse()?;
    let mut loaded = Config::load(&run.config())?;
    args.models.apply(&mut loaded.config);
    let seed = loaded.config.seed();
    let batch_size = args.batch_size.unwrap_or(loaded.config.eval_batch_size());
    let vocab_path = run.vocab();
    let prepared = prepare(
        loaded,
        &data,
        VocabSource::RunWords(&vocab_path),
        args.max_rows,
    )?;
    let (device, _) = device(args.device)?;
    let model = prepared.build_model(&device, seed)?;
    model.store.load(&run.weights())?;
    let loss = Loss::new(&prepared.config.config);
    let data = match split {
        Split::Train => &prepared.train,
        Split::Dev => &prepared.valid,
        Split::Test => &prepared.test,
    };
    let eval = train::evaluate(
        &model,
        data,
        &prepared.prep,
        batch_size,
        &loss,
        &prepared.classes,
    )?;
    println!(
        "{} on {} ({} rows, batch {batch_size}): weighted F1 {:.4}, accuracy {:.4}, loss {:.4}\n",
        args.run.display(),
        split,
        data.len(),
        eval.metrics.f1_weighted,
        eval.metrics.accuracy,
        eval.loss
    );
    println!("{}", eval.metrics.report());
    Ok(())
}

fn table4(args: Table4Args) -> Result<()> {
    let devices = args.devices.unwrap_or_else(|| {
        vec![match args.device {
            DeviceArg::Cpu => DeviceSpec::Cpu,
            DeviceArg::Cuda => DeviceSpec::Cuda(0),
        }]
    });
    if args.epochs == Some(0) {
        bail!("--epochs must be positive");
    }
    let default_out = PathBuf::from("runs").join(args.table.name());
    let options = erc_train::table4::Table4Options {
        table: args.table,
        data: args.data,
        corrected_data: args.corrected_data,
        out: args.collect.clone().or(args.out).unwrap_or(default_out),
        rows: args.rows,
        devices,
        epochs: args.epochs,
        max_rows: args.max_rows,
        dry_run: args.dry_run,
        keep_going: args.keep_going,
        corrected: args.corrected,
        smoke: args.smoke,
        keep_checkpoints: args.keep_checkpoints,
        glove: args.glove,
        models: args.models.sources(),
        progress: std::io::stderr().is_terminal(),
    };
    if args.collect.is_some() {
        println!("{}", erc_train::table4::collect(&options)?);
        let md = format!("{}.md", options.table.name());
        println!("tables: {}", options.out.join(md).display());
        return Ok(());
    }
    let report = erc_train::table4::run(&options)?;
    if options.dry_run && !report.failed.is_empty() {
        bail!(
            "{} asked run(s) cannot start: the preflight table above says what is missing and how to fix it",
            report.failed.len()
        );
    }
    if !report.failed.is_empty() {
        for (run, why) in &report.failed {
            eprintln!("failed: {run}: {}", why.lines().next().unwrap_or(why));
        }
        bail!("{} run(s) failed", report.failed.len());
    }
    Ok(())
}

fn selfcheck(args: SelfcheckArgs) -> Result<()> {
    use erc_train::selfcheck::bench::{Plan, Scale};
    use std::io::Write as _;
    let scale = if args.quick {
        Scale::Quick
    } else {
        Scale::Full
    };
    let plan = Plan::new(scale, args.iterations, args.resnet_batch)?;
    if let Some(path) = &args.plan {
        std::fs::write(path, serde_json::to_string_pretty(&plan)?)
            .with_context(|| format!("writing {}", path.display()))?;
        return Ok(());
    }
    let (device, _) = device(args.device)?;
    let options = erc_train::selfcheck::SelfcheckOptions {
        fixtures: args.fixtures,
        sections: args.sections,
        plan,
        workloads: args.workloads,
        precisions: args.precisions,
    };
    let mut file = match &args.jsonl {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?,
        ),
        None => None,
    };
    let mut sink = |value: serde_json::Value| -> erc_train::error::Result<()> {
        if let (Some(file), Some(path)) = (file.as_mut(), &args.jsonl) {
            // one write per line, flushed: a stopped run keeps every line it wrote
            writeln!(file, "{value}")
                .and_then(|_| file.flush())
                .map_err(|e| erc_train::error::Error::io(path, e))?;
        }
        Ok(())
    };
    let outcome = erc_train::selfcheck::run(&device, &options, &mut sink)?;
    if outcome.failed_checks > 0 {
        bail!("{} check(s) failed (see above)", outcome.failed_checks);
    }
    if outcome.failed_benchmarks > 0 && !args.allow_bench_failures {
        bail!(
            "{} benchmark row(s) failed (see above; --allow-bench-failures to accept)",
            outcome.failed_benchmarks
        );
    }
    Ok(())
}

fn predict(args: PredictArgs) -> Result<()> {
    use erc_train::predict::media::Input;
    let split = || -> Result<Split> { Ok(args.split.parse()?) };
    let input = match (&args.data, &args.raw, &args.video, &args.subtitles) {
        (Some(data), None, None, None) => Input::Data {
            data: data.clone(),
            split: split()?,
        },
        (None, Some(raw), None, None) => Input::Raw {
            raw: raw.clone(),
            split: split()?,
        },
        (None, None, Some(video), Some(subtitles)) => Input::Video {
            video: video.clone(),
            subtitles: subtitles.clone(),
        },
        _ => bail!("give one input: --data DATA, --raw DIR, or --video FILE --subtitles FILE"),
    };
    let (device, _) = device(args.device)?;
    let options = erc_train::predict::PredictOptions {
        run: args.run,
        input,
        out: args.out,
        device,
        batch_size: args.batch_size,
        faces: args.faces,
        models: args.models.sources(),
        progress: std::io::stderr().is_terminal(),
    };
    let summary = erc_train::predict::run(&options)?;
    print!("{}", summary.table());
    Ok(())
}

/// `models check`: one short table per backbone (each checked once, with the configs that need it).
fn models_check(args: ModelsCheckArgs) -> Result<()> {
    use erc_train::encoders::check;
    use erc_train::encoders::hub::{Backbone, HubEnv};
    use std::collections::BTreeMap;
    let configs: Vec<PathBuf> = if let Some(config) = &args.config {
        vec![config.clone()]
    } else if args.all_configs {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&args.configs)
            .with_context(|| format!("listing {}", args.configs.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
            .collect();
        found.sort();
        if found.is_empty() {
            bail!("no *.yml config in {}", args.configs.display());
        }
        found
    } else {
        Vec::new()
    };
    // (backbone, spec) → the configs that need it
    let mut needed: BTreeMap<(Backbone, String), Vec<String>> = BTreeMap::new();
    for path in &configs {
        let mut loaded = Config::load(path)?;
        args.models.apply(&mut loaded.config);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for key in check::needed(&loaded.config) {
            needed.entry(key).or_default().push(name.clone());
        }
    }
    if configs.is_empty() {
        let defaults = [
            (Backbone::Gpt2, args.models.text_model.clone()),
            (Backbone::Wav2vec2, args.models.audio_model.clone()),
            (Backbone::Resnet50, args.models.visual_model.clone()),
        ];
        for (backbone, spec) in defaults {
            let spec = spec.unwrap_or_else(|| backbone.default_repo().to_string());
            if spec != erc_train::config::RANDOM_WEIGHTS {
                needed.entry((backbone, spec)).or_default();
            }
        }
    }
    if needed.is_empty() {
        println!("no pretrained backbone needed");
        return Ok(());
    }
    let env = HubEnv::from_env();
    let mut failed = 0;
    for ((backbone, spec), users) in &needed {
        if !users.is_empty() {
            println!("needed by {}", users.join(", "));
        }
        match check::check(&env, *backbone, spec, !args.no_sha256) {
            Ok(report) => {
                print!("{}", report.render());
                failed += usize::from(!report.ok());
            }
            Err(e) => {
                let why = e.to_string().replace('\n', "\n                ");
                println!("{backbone} `{spec}`\n  MISSING       {why}");
                failed += 1;
            }
        }
        println!();
    }
    if failed > 0 {
        bail!(
            "{failed} of {} backbone(s) missing or not fitting their architecture (see above)",
            needed.len()
        );
    }
    Ok(())
}

fn check(args: CheckArgs) -> Result<()> {
    let mut loaded = Config::load(&args.config)?;
    args.models.apply(&mut loaded.config);
    let config = loaded.config.clone();
    let glove = glove_path(&config, args.glove.as_deref());
    let prepared = prepare(loaded, &args.data, VocabSource::GloveFile(glove), None)?;
    let model = prepared.build_model(&Device::Cpu, config.seed())?;
    let (per_epoch, total) = planned_steps(
        train::epoch_len(&config, &prepared.train.labels),
        config.batch_size(),
        config.epochs(),
    );
    println!(
        "config   {} ({})",
        args.config.display(),
        config.classifier_name
    );
    println!(
        "encoders text {:?}, visual {:?}, audio {:?}; fusion {:?} ({} features); loss {}",
        config.modules_text_encoder,
        config.modules_visual_encoder,
        config.modules_audio_encoder,
        config.modules_fusion,
        model.fusion_features(),
        config.classifier_loss_fn
    );
    if let Some(spec) = prepared.prep.visual {
        println!(
            "images   {:?} per item ({:?} crop) from {}",
            spec.shape(),
            spec.crop,
            if spec.faces_only {
                "the face-only mosaics (x_visual_faces)"
            } else {
                "the mosaics (x_visual)"
            }
        );
    }
    if let Some(spec) = prepared.prep.audio {
        println!(
            "audio    {} samples per item ({:?})",
            spec.samples, spec.input
        );
    }
    for (name, path) in [
        ("gpt2", &prepared.backbones.gpt2),
        ("roberta", &prepared.backbones.roberta),
        ("wav2vec2", &prepared.backbones.wav2vec2),
        ("resnet50", &prepared.backbones.resnet50),
    ] {
        if let Some(path) = path {
            println!("{name:<8} pretrained weights from {}", path.display());
        }
    }
    if let Some(vocab) = &prepared.vocab {
        println!(
            "glove    {} of {} vectors used by this data ({}-d)",
            vocab.len(),
            vocab.file_words,
            vocab.dim
        );
    }
    println!("parameters {} trainable", model.store.parameter_count());
    for (module, count) in model.store.parameter_count_by_module() {
        println!("  {module:<8} {count:>12}");
    }
    println!(
        "training {} epochs x {per_epoch} steps (batch {}) = {total} steps, warm-up {}, lr {:e}, weight decay {}",
        config.epochs(),
        config.batch_size(),
        config.classifier_warmup_steps,
        config.classifier_learning_rate,
        config.classifier_weight_decay
    );
    println!(
        "{:<6} {:>6} {:>15} {:>14}",
        "split", "rows", "missing images", "missing audio"
    );
    for (data, media) in [&prepared.train, &prepared.valid, &prepared.test]
        .iter()
        .zip(prepared.media.iter())
    {
        println!(
            "{:<6} {:>6} {:>15} {:>14}",
            data.split.dataset_name(),
            data.len(),
            media.missing_visual,
            media.missing_audio
        );
    }
    Ok(())
}
