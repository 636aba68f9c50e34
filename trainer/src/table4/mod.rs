//! `erc-train table4`: the 30 experiments of the HLM12ERC report's Table 4 in one resumable command, our
//! numbers beside the paper's.
//!
//! The rows and the paper's numbers are [`paper`] (`configs/table4.csv`), their configs [`configs`] (carried by
//! the binary). A run: [`preflight`] checks every asked row can run (nothing starts otherwise, unless
//! `--keep-going`); a few timed training steps per model family give the time estimate; then each row trains in
//! its own folder `OUT/NN-name/` (`OUT/corrected/NN-name/` for `--corrected`), in order, one queue shared by the
//! `--devices`. A rerun skips the rows whose summary was written for the same config and data, resumes an
//! interrupted row from its last complete epoch, and starts over a row whose config or data changed (or whose
//! checkpoint is unreadable, saying so). At the end, and with `--collect` alone, [`render`] writes
//! `OUT/table4.md`, `table4.csv`, `table3.md` and `table4.png` from whatever row folders are complete.

pub mod configs;
pub mod paper;
pub mod preflight;
pub mod render;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use self::paper::{PaperRow, Scores};
use self::render::{Outcome, Results, RowResult};
use crate::config::{
    AttentionScope, AudioInput, ClassifierLoss, Config, LoadedConfig, ModelSources, VisualCrop,
};
use crate::data::Loader;
use crate::error::{Error, Result};
use crate::nn::Ctx;
use crate::train::device::{self, DeviceSpec};
use crate::train::losses::Loss;
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::{
    checkpoint, config_fingerprint, data_fingerprint, glove_path, planned_steps, prepare, Progress,
    TrainOptions, VocabSource,
};

/// `erc-train table4`'s settings.
#[derive(Debug, Clone)]
pub struct Table4Options {
    pub data: PathBuf,
    pub out: PathBuf,
    /// `01-04,24`, a Slurm array index (`7`), …; all rows when `None`.
    pub rows: Option<String>,
    /// One worker per device, rows taken from one queue.
    pub devices: Vec<DeviceSpec>,
    pub epochs: Option<usize>,
    pub max_rows: Option<usize>,
    pub dry_run: bool,
    pub keep_going: bool,
    /// Also the rows with the corrected switches (a second "ours (corrected)" column).
    pub corrected: bool,
    /// A check of every row: one training step on shrunk inputs (16 000 audio samples, 64-pixel images, one
    /// batch of rows, no warm-up), one epoch.
    pub smoke: bool,
    pub glove: Option<PathBuf>,
    pub models: ModelSources,
    pub progress: bool,
}

/// Which switches a job uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Variant {
    /// The reference's behaviour (the configs as they are).
    Reference,
    /// `visual_crop: full`, `attention_scope: sample`, `ce` for `cce`, `audio_input: normalized_mono`.
    Corrected,
}

/// One training run of the table.
pub struct Job {
    pub row: PaperRow,
    pub variant: Variant,
    pub config: Config,
    pub max_rows: Option<usize>,
    pub dir: PathBuf,
}

impl Job {
    pub fn label(&self) -> String {
        match self.variant {
            Variant::Reference => format!("{} {}", self.row.label(), self.row.name),
            Variant::Corrected => format!("{} {} (corrected)", self.row.label(), self.row.name),
        }
    }
}

/// The folder of a row's run.
pub fn row_dir(out: &Path, row: &PaperRow, variant: Variant) -> PathBuf {
    let name = format!("{}-{}", row.label(), row.name);
    match variant {
        Variant::Reference => out.join(name),
        Variant::Corrected => out.join("corrected").join(name),
    }
}

/// The paper's rows.
pub fn paper_rows() -> Result<Vec<PaperRow>> {
    paper::rows().map_err(|e| Error::Other(format!("configs/table4.csv: {e}")))
}

/// A row's config as the table runs it: the row's YAML, evaluated at the paper's batch, with the command line's
/// overrides and the variant's switches.
pub fn row_config(row: &PaperRow, variant: Variant, opts: &Table4Options) -> Result<Config> {
    let text = configs::yaml(&row.config).ok_or_else(|| {
        Error::Other(format!(
            "row {}: no config {} in this build",
            row.label(),
            row.config
        ))
    })?;
    let mut config = Config::parse(Path::new(&format!("configs/{}", row.config)), text)?;
    config.eval_batch_size = Some(row.eval_batch);
    if opts.epochs.is_some() {
        config.epochs = opts.epochs;
    }
    opts.models.apply(&mut config);
    if variant == Variant::Corrected {
        config.visual_crop = VisualCrop::Full;
        config.attention_scope = AttentionScope::Sample;
        if config.classifier_loss_fn.classifier == ClassifierLoss::Cce {
            config.classifier_loss_fn.classifier = ClassifierLoss::Ce;
        }
        config.audio_input = AudioInput::NormalizedMono;
    }
    if opts.smoke {
        config.epochs = Some(1);
        if config.audio_in_features.is_some() {
            config.audio_in_features = Some(16_000);
        }
        config.visual_short_side = Some(64);
        // the warm-up's first step has a learning rate of 0
        config.classifier_warmup_steps = 0;
    }
    Ok(config)
}

/// The jobs of the asked rows, in row order (each row's corrected run after the reference one).
pub fn jobs(opts: &Table4Options, rows: &[PaperRow]) -> Result<Vec<Job>> {
    let asked = match &opts.rows {
        Some(spec) => {
            paper::parse_selection(spec, rows).map_err(|e| Error::Other(format!("--rows: {e}")))?
        }
        None => rows.iter().map(|r| r.row).collect(),
    };
    let mut jobs = Vec::new();
    for row in rows.iter().filter(|r| asked.contains(&r.row)) {
        let variants: &[Variant] = if opts.corrected {
            &[Variant::Reference, Variant::Corrected]
        } else {
            &[Variant::Reference]
        };
        for variant in variants {
            let config = row_config(row, *variant, opts)?;
            let max_rows = if opts.smoke {
                Some(
                    opts.max_rows
                        .unwrap_or(config.batch_size())
                        .min(config.batch_size()),
                )
            } else {
                opts.max_rows
            };
            jobs.push(Job {
                dir: row_dir(&opts.out, row, *variant),
                row: row.clone(),
                variant: *variant,
                config,
                max_rows,
            });
        }
    }
    Ok(jobs)
}

/// How a table run ended.
pub struct Table4Report {
    /// Jobs that failed (preflight or training), with why.
    pub failed: Vec<(String, String)>,
    /// The terminal table (empty for a dry run).
    pub table: String,
}

/// Runs the table (see the module doc).
pub fn run(opts: &Table4Options) -> Result<Table4Report> {
    let rows = paper_rows()?;
    let jobs = jobs(opts, &rows)?;
    if jobs.is_empty() {
        return Err(Error::Other("no row asked".into()));
    }
    let devices: Vec<(String, Result<candle_core::Device>)> = opts
        .devices
        .iter()
        .map(|d| (d.to_string(), device::open(*d)))
        .collect();
    let device_errors: Vec<(String, Option<String>)> = devices
        .iter()
        .map(|(name, d)| (name.clone(), d.as_ref().err().map(|e| e.to_string())))
        .collect();
    let checks = preflight::check(&jobs, &opts.data, opts.glove.as_deref(), &device_errors);
    println!(
        "preflight ({} runs):\n{}",
        jobs.len(),
        preflight::render(&checks)
    );
    let mut failed: Vec<(String, String)> = checks
        .iter()
        .filter(|c| !c.ready())
        .map(|c| {
            (
                c.label.clone(),
                format!("preflight: {}", c.problems().join("; ")),
            )
        })
        .collect();
    if opts.dry_run {
        if failed.is_empty() {
            println!("dry run: every asked row can run");
        }
        return Ok(Table4Report {
            failed,
            table: String::new(),
        });
    }
    if !failed.is_empty() && !opts.keep_going {
        return Err(Error::Other(format!(
            "{} of {} runs cannot start (see the preflight table); nothing was trained (--keep-going runs the others)",
            failed.len(),
            jobs.len()
        )));
    }
    let devices: Vec<(String, candle_core::Device)> = devices
        .into_iter()
        .filter_map(|(name, d)| d.ok().map(|d| (name, d)))
        .collect();
    let ready: Vec<Job> = jobs
        .into_iter()
        .zip(&checks)
        .filter(|(_, c)| c.ready())
        .map(|(j, _)| j)
        .collect();
    let pending = pending(&ready, opts)?;
    if let Some((_, device)) = devices.first() {
        if !pending.is_empty() {
            let estimates = estimate(&ready, &pending, opts, device)?;
            println!("{}", render_estimates(&ready, &pending, &estimates));
        }
    }
    failed.extend(run_jobs(ready, &pending, opts, &devices)?);
    if opts.corrected {
        // the tables show the corrected column whenever this folder exists, also if no corrected run started
        let dir = opts.out.join("corrected");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    let table = collect(&opts.out)?;
    println!("{table}");
    println!("tables: {}", opts.out.join("table4.md").display());
    Ok(Table4Report { failed, table })
}

/// Which jobs still need training, wiping the folders that cannot be continued.
fn pending(jobs: &[Job], opts: &Table4Options) -> Result<Vec<bool>> {
    // the data's fingerprint reads the three CSVs: once per row limit, not once per job
    let mut data_shas: BTreeMap<Option<usize>, String> = BTreeMap::new();
    jobs.iter()
        .map(|job| {
            let config_sha = config_fingerprint(&job.config)?;
            let data_sha = match data_shas.get(&job.max_rows) {
                Some(sha) => sha.clone(),
                None => {
                    let sha = data_fingerprint(&opts.data, job.max_rows)?;
                    data_shas.insert(job.max_rows, sha.clone());
                    sha
                }
            };
            Ok(match inspect(&job.dir, &config_sha, &data_sha)? {
                Folder::Complete => {
                    tracing::info!(
                        "{}: complete in {}, skipped",
                        job.label(),
                        job.dir.display()
                    );
                    false
                }
                Folder::Resumable | Folder::Fresh => true,
            })
        })
        .collect()
}

/// What a row folder holds.
enum Folder {
    /// A summary of this config and data.
    Complete,
    /// A checkpoint of this config and data.
    Resumable,
    /// Nothing to reuse (an empty or wiped folder).
    Fresh,
}

/// Classifies a row folder; one that holds another config's or data's run, or an unreadable checkpoint, is
/// emptied (with a message saying why).
fn inspect(dir: &Path, config_sha: &str, data_sha: &str) -> Result<Folder> {
    if !dir.exists() {
        return Ok(Folder::Fresh);
    }
    let summary = dir.join("summary.json");
    if let Ok(text) = std::fs::read_to_string(&summary) {
        let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if value["config_sha256"] == config_sha && value["data_sha256"] == data_sha {
            return Ok(Folder::Complete);
        }
        return wipe(dir, "its summary is of another config or dataset");
    }
    match checkpoint::read(dir) {
        Ok(Some(saved))
            if saved.state.config_sha256 == config_sha && saved.state.data_sha256 == data_sha =>
        {
            Ok(Folder::Resumable)
        }
        Ok(Some(_)) => wipe(dir, "its checkpoint is of another config or dataset"),
        Ok(None) => wipe(dir, "it holds no checkpoint"),
        Err(e) => wipe(dir, &e.to_string()),
    }
}

fn wipe(dir: &Path, why: &str) -> Result<Folder> {
    tracing::warn!("{}: starting this row over ({why})", dir.display());
    std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    Ok(Folder::Fresh)
}

/// Seconds per training step of each model family (the same encoders and fusion), measured on the family's
/// first pending job: a warm-up step, then the mean of two.
fn estimate(
    jobs: &[Job],
    pending: &[bool],
    opts: &Table4Options,
    device: &candle_core::Device,
) -> Result<Vec<Option<f64>>> {
    let mut per_family: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    let (train, valid, test) = split_sizes(&opts.data)?;
    let mut out = Vec::new();
    for (job, todo) in jobs.iter().zip(pending) {
        if !todo {
            out.push(None);
            continue;
        }
        let family = family(&job.config);
        if !per_family.contains_key(&family) {
            tracing::info!("timing a few training steps of {family}");
            let t = time_steps(job, opts, device)?;
            per_family.insert(family.clone(), (t, job.config.batch_size()));
        }
        let (t, batch) = per_family[&family];
        let per_item = t / batch as f64;
        // the loop's steps, plus the evaluations (forward only, ~1/3 of a training step) of every epoch and the
        // final valid + test
        let prepared_len = |split: usize| job.max_rows.map_or(split, |m| split.min(m));
        let epochs = job.config.epochs();
        let (_, steps) = planned_steps(prepared_len(train), job.config.batch_size(), epochs);
        let train_s = steps as f64 * per_item * job.config.batch_size() as f64;
        let eval_items = (prepared_len(valid) * (epochs + 1) + prepared_len(test)) as f64;
        out.push(Some(train_s + eval_items * per_item / 3.0));
    }
    Ok(out)
}

fn family(config: &Config) -> String {
    format!(
        "{:?}+{:?}+{:?}/{:?}",
        config.modules_text_encoder,
        config.modules_visual_encoder,
        config.modules_audio_encoder,
        config.modules_fusion
    )
    .to_lowercase()
}

/// Rows of the three splits (data lines of the CSVs).
fn split_sizes(data: &Path) -> Result<(usize, usize, usize)> {
    let count = |split: meld_shared::Split| -> Result<usize> {
        let path = data.join(split.dataset_csv());
        let mut reader =
            csv::Reader::from_path(&path).map_err(|e| Error::data(&path, e.to_string()))?;
        Ok(reader.records().count())
    };
    use meld_shared::Split;
    Ok((
        count(Split::Train)?,
        count(Split::Dev)?,
        count(Split::Test)?,
    ))
}

/// Mean seconds of a training step of `job`'s model on its own first batches.
fn time_steps(job: &Job, opts: &Table4Options, device: &candle_core::Device) -> Result<f64> {
    let batch = job.config.batch_size();
    let loaded = LoadedConfig {
        path: PathBuf::from(format!("configs/{}", job.row.config)),
        config: job.config.clone(),
    };
    let glove = glove_path(&job.config, opts.glove.as_deref());
    let prepared = prepare(
        loaded,
        &opts.data,
        VocabSource::GloveFile(glove),
        Some(3 * batch),
    )?;
    let model = prepared.build_model(device, job.config.seed())?;
    let loss = Loss::new(&job.config);
    let mut optimizer = AdamW::new(
        model.store.trainable(),
        AdamWConfig::for_experiment(&job.config, 100),
    )?;
    let mut ctx = Ctx::train(0);
    let order: Vec<usize> = (0..prepared.train.len()).collect();
    let mut times = Vec::new();
    for batch in Loader::spawn(prepared.train.clone(), prepared.prep.clone(), order, batch) {
        let batch = batch?;
        let start = Instant::now();
        let out = model.forward(&batch, &mut ctx)?;
        let y = batch.one_hot(model.classes, model.device())?;
        let value = loss.training(&out.probs, &out.logits, &y, &out.hidden, &batch.labels)?;
        optimizer.step(&value.backward()?)?;
        value.to_scalar::<f32>()?;
        times.push(start.elapsed().as_secs_f64());
    }
    // the first step pays for allocations and kernel loading
    let timed = if times.len() > 1 {
        &times[1..]
    } else {
        &times[..]
    };
    Ok(timed.iter().sum::<f64>() / timed.len().max(1) as f64)
}

fn render_estimates(jobs: &[Job], pending: &[bool], estimates: &[Option<f64>]) -> String {
    let mut out = String::from("time estimate (from timed steps per model family):\n");
    let mut total = 0.0;
    for ((job, todo), estimate) in jobs.iter().zip(pending).zip(estimates) {
        let text = match (todo, estimate) {
            (false, _) => "complete".to_string(),
            (true, Some(s)) => {
                total += s;
                human_duration(*s)
            }
            (true, None) => "?".to_string(),
        };
        out += &format!("  {:<48} {text:>12}\n", job.label());
    }
    out += &format!(
        "  {:<48} {:>12}",
        "total (one device)",
        human_duration(total)
    );
    out
}

fn human_duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}

/// Trains the pending jobs, one worker per device over one queue; returns the failures.
fn run_jobs(
    jobs: Vec<Job>,
    pending: &[bool],
    opts: &Table4Options,
    devices: &[(String, candle_core::Device)],
) -> Result<Vec<(String, String)>> {
    let epochs_total: usize = jobs
        .iter()
        .zip(pending)
        .filter(|(_, p)| **p)
        .map(|(j, _)| j.config.epochs())
        .sum();
    let runs = pending.iter().filter(|p| **p).count();
    let multi = MultiProgress::new();
    let overall = if opts.progress {
        let bar = multi.add(ProgressBar::new(epochs_total as u64));
        bar.set_style(
            ProgressStyle::with_template(
                "table4 [{elapsed_precise}] {bar:30} {pos}/{len} epochs · ETA {eta} · {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    overall.set_message(format!("0/{runs} runs done"));
    let queue: Mutex<VecDeque<Job>> = Mutex::new(
        jobs.into_iter()
            .zip(pending)
            .filter(|(_, p)| **p)
            .map(|(j, _)| j)
            .collect(),
    );
    let failed = Mutex::new(Vec::new());
    let done = Mutex::new(0usize);
    std::thread::scope(|scope| {
        for (name, device) in devices {
            let (queue, failed, done, overall, multi) = (&queue, &failed, &done, &overall, &multi);
            let next = move || queue.lock().ok().and_then(|mut q| q.pop_front());
            scope.spawn(move || {
                while let Some(job) = next() {
                    let label = job.label();
                    overall.set_message(format!("{label} on {name}"));
                    let progress = if opts.progress {
                        Progress::Under(multi.clone())
                    } else {
                        Progress::Hidden
                    };
                    let hook_bar = overall.clone();
                    let outcome = run_job(
                        &job,
                        opts,
                        device,
                        name,
                        progress,
                        Arc::new(move |_, _| hook_bar.inc(1)),
                    );
                    if let Err(e) = outcome {
                        tracing::error!("{label} failed: {e}");
                        let _ = std::fs::create_dir_all(&job.dir);
                        let _ = std::fs::write(job.dir.join("failed.txt"), format!("{e}\n"));
                        if let Ok(mut f) = failed.lock() {
                            f.push((label, e.to_string()));
                        }
                    }
                    if let Ok(mut d) = done.lock() {
                        *d += 1;
                        overall.set_message(format!("{}/{runs} runs done", *d));
                    }
                }
            });
        }
    });
    overall.finish_and_clear();
    failed
        .into_inner()
        .map_err(|_| Error::Other("a table worker panicked".into()))
}

fn run_job(
    job: &Job,
    opts: &Table4Options,
    device: &candle_core::Device,
    device_name: &str,
    progress: Progress,
    on_epoch: crate::train::EpochHook,
) -> Result<()> {
    let _ = std::fs::remove_file(job.dir.join("failed.txt"));
    let loaded = LoadedConfig {
        path: PathBuf::from(format!("configs/{}", job.row.config)),
        config: job.config.clone(),
    };
    let glove = glove_path(&job.config, opts.glove.as_deref());
    let prepared = prepare(
        loaded,
        &opts.data,
        VocabSource::GloveFile(glove),
        job.max_rows,
    )?;
    let mut options = TrainOptions::new(&opts.data, &opts.out, device.clone(), device_name);
    options.run_dir = Some(job.dir.clone());
    options.resume = true;
    options.progress = progress;
    options.on_epoch = Some(on_epoch);
    crate::train::train(prepared, &options)?;
    Ok(())
}

/// The scores of a complete row folder's split (`valid` or `test`).
fn folder_scores(dir: &Path, split: &str) -> Option<Scores> {
    let text = std::fs::read_to_string(dir.join("summary.json")).ok()?;
    let summary: serde_json::Value = serde_json::from_str(&text).ok()?;
    let s = summary["splits"]
        .as_array()?
        .iter()
        .find(|s| s["split"] == split)?;
    let per_class = s["f1_per_class"].as_object()?;
    let classes: Vec<&String> = per_class.keys().collect();
    let f1: Vec<f64> = per_class.values().filter_map(|v| v.as_f64()).collect();
    Scores::from_classes(
        &classes,
        &f1,
        s["f1_weighted"].as_f64()?,
        s["accuracy"].as_f64()?,
    )
    .ok()
}

fn folder_outcome(dir: &Path) -> RowResult {
    if let Some(valid) = folder_scores(dir, "valid") {
        return RowResult {
            valid: Outcome::Done(valid),
            test: folder_scores(dir, "test"),
        };
    }
    match std::fs::read_to_string(dir.join("failed.txt")) {
        Ok(why) => RowResult {
            valid: Outcome::Failed(why.trim().to_string()),
            test: None,
        },
        Err(_) => RowResult::not_run(),
    }
}

/// Assembles the tables from the row folders under `out` (complete rows give numbers, failed ones their error,
/// the rest "not run"; a corrected column when `out/corrected/` holds runs), writes them and returns the terminal
/// table.
pub fn collect(out: &Path) -> Result<String> {
    let corrected = out.join("corrected").is_dir();
    let rows = paper_rows()?;
    let ours: Vec<RowResult> = rows
        .iter()
        .map(|r| folder_outcome(&row_dir(out, r, Variant::Reference)))
        .collect();
    let fixed: Option<Vec<RowResult>> = corrected.then(|| {
        rows.iter()
            .map(|r| folder_outcome(&row_dir(out, r, Variant::Corrected)))
            .collect()
    });
    let results = Results::new(&rows, &ours, fixed.as_deref()).map_err(Error::Other)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    results.write_all(out).map_err(|e| Error::io(out, e))?;
    Ok(results.terminal_table())
}
