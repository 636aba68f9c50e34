//! `erc-train table4`: the 30 experiments of the HLM12ERC report's Table 4 in one resumable command, our
//! numbers beside the paper's.
//!
//! The rows and the paper's numbers are [`paper`] (`configs/table4.csv`), their configs [`configs`] (carried by
//! the binary). A run: [`preflight`] checks every asked row can run (nothing starts otherwise, unless
//! `--keep-going`); a few timed training steps per model family give the time estimate; then each row trains in
//! its own folder `OUT/NN-name/` (`OUT/corrected/NN-name/` for `--corrected`), in order, one queue shared by the
//! usable `--devices`. A rerun skips the rows whose summary was written for the same config and data, resumes an
//! interrupted row from its last complete epoch, evaluates again a finished row whose summary is damaged, and
//! starts over a row whose config or data changed or whose checkpoint is corrupt (saying why). At the end, and
//! with `--collect` alone, [`render`] writes `OUT/table4.md`, `table4.csv`, `table3.md` and `table4.png`.
//!
//! Nothing ends the table early but a problem with the whole of it: a row's failure at any stage — preflight,
//! the estimate, training, evaluation, a panic — is written to its `failed.txt` and the queue goes on; a device
//! that cannot be opened (or fails during a row) drops out and the others take its rows. Every file the table
//! writes is written aside and renamed; a number is shown beside the paper's only when it comes from the row's
//! own config on the whole dataset ([`collect`]).
//!
//! `--table seeds` runs the seed systems' table ([`seeds`]: `configs/seeds.csv`, `configs/seeds/*.yml`) through
//! the same machinery, into `OUT/seeds.md`, `seeds.csv` and `seeds.png`, the seeds' published figures beside ours
//! labelled as theirs (their datasets), never compared.

pub mod configs;
pub mod paper;
pub mod preflight;
pub mod render;
pub mod seeds;

use std::collections::{BTreeMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use self::paper::{PaperRow, Scores};
use self::render::{Outcome, Results, RowResult};
use self::seeds::SeedRow;
use crate::config::{
    AttentionScope, AudioInput, ClassifierLoss, Config, LoadedConfig, ModelSources, TextContext,
    VisualCrop,
};
use crate::data::Loader;
use crate::error::{Error, Result};
use crate::nn::Ctx;
use crate::train::device::{self, DeviceSpec};
use crate::train::losses::Loss;
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::report::write_atomic;
use crate::train::{
    checkpoint, config_fingerprint, data_fingerprint, glove_path, planned_steps, prepare, Progress,
    TrainOptions, VocabSource,
};

/// Which table a run fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Table {
    /// The HLM12ERC report's Table 4 (and Table 3).
    #[default]
    Table4,
    /// The seed systems on MELD, their published figures beside ours ([`seeds`]).
    Seeds,
}

impl Table {
    /// The table's name: the `--table` value and the stem of its output files.
    pub fn name(self) -> &'static str {
        match self {
            Table::Table4 => "table4",
            Table::Seeds => "seeds",
        }
    }

    /// How messages name it.
    fn title(self) -> &'static str {
        match self {
            Table::Table4 => "Table 4",
            Table::Seeds => "the seeds table",
        }
    }
}

impl std::str::FromStr for Table {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "table4" => Ok(Table::Table4),
            "seeds" => Ok(Table::Seeds),
            other => Err(format!("table `{other}`: expected table4 or seeds")),
        }
    }
}

/// What the machinery needs of a row of either table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableRow {
    pub row: u8,
    pub name: String,
    /// A file name under `configs/` (Table 4) or `configs/seeds/`.
    pub config: String,
    /// The batch the row is evaluated at, when the paper says (Table 4).
    pub eval_batch: Option<usize>,
}

impl TableRow {
    /// The row number as the tables print it: two digits.
    pub fn label(&self) -> String {
        format!("{:02}", self.row)
    }
}

impl From<&PaperRow> for TableRow {
    fn from(r: &PaperRow) -> Self {
        TableRow {
            row: r.row,
            name: r.name.clone(),
            config: r.config.clone(),
            eval_batch: Some(r.eval_batch),
        }
    }
}

impl From<&SeedRow> for TableRow {
    fn from(r: &SeedRow) -> Self {
        TableRow {
            row: r.row,
            name: r.name.clone(),
            config: r.config.clone(),
            eval_batch: None,
        }
    }
}

/// `erc-train table4`'s settings.
#[derive(Debug, Clone)]
pub struct Table4Options {
    /// Which table (`--table`).
    pub table: Table,
    pub data: PathBuf,
    /// The dataset of the `--corrected` rows (16 kHz mono WAVs: `normalized_mono` audio); `None`: `data`.
    pub corrected_data: Option<PathBuf>,
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
    /// Keep a finished row's whole resume checkpoint (model and optimiser moments) instead of its state alone.
    pub keep_checkpoints: bool,
    pub glove: Option<PathBuf>,
    pub models: ModelSources,
    pub progress: bool,
}

impl Table4Options {
    /// The dataset a variant's rows train on.
    pub fn data_for(&self, variant: Variant) -> &Path {
        match variant {
            Variant::Reference => &self.data,
            Variant::Corrected => self.corrected_data.as_deref().unwrap_or(&self.data),
        }
    }

    /// The options as the paper ran the rows: no epoch override, no row limit, no smoke run.
    fn as_the_paper_ran(&self) -> Table4Options {
        Table4Options {
            epochs: None,
            max_rows: None,
            smoke: false,
            ..self.clone()
        }
    }
}

/// Which switches a job uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// The reference's behaviour (the configs as they are).
    Reference,
    /// `visual_crop: full`, `attention_scope: sample`, `ce` for `cce`, `audio_input: normalized_mono`,
    /// `text_context: utterance`.
    Corrected,
}

/// One training run of the table.
pub struct Job {
    pub row: TableRow,
    pub variant: Variant,
    pub config: Config,
    /// Where the config comes from (`configs/…`), as run folders record it.
    pub config_path: PathBuf,
    pub max_rows: Option<usize>,
    pub dir: PathBuf,
    /// The dataset it trains on.
    pub data: PathBuf,
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
pub fn row_dir(out: &Path, row: &TableRow, variant: Variant) -> PathBuf {
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

/// The seeds table's rows.
pub fn seed_rows() -> Result<Vec<SeedRow>> {
    seeds::rows().map_err(|e| Error::Other(format!("configs/seeds.csv: {e}")))
}

/// A table's rows as the machinery runs them.
pub fn table_rows(table: Table) -> Result<Vec<TableRow>> {
    Ok(match table {
        Table::Table4 => paper_rows()?.iter().map(TableRow::from).collect(),
        Table::Seeds => seed_rows()?.iter().map(TableRow::from).collect(),
    })
}

/// A row's config file as the binary carries it: its path (for messages and run folders) and YAML.
fn row_yaml(table: Table, row: &TableRow) -> Result<(PathBuf, &'static str)> {
    let (path, text) = match table {
        Table::Table4 => (
            format!("configs/{}", row.config),
            configs::yaml(&row.config),
        ),
        Table::Seeds => (
            format!("configs/seeds/{}", row.config),
            seeds::yaml(&row.config),
        ),
    };
    let text = text.ok_or_else(|| {
        Error::Other(format!(
            "row {}: no config {path} in this build",
            row.label()
        ))
    })?;
    Ok((PathBuf::from(path), text))
}

/// A row's config as the table runs it: the row's YAML, evaluated at the paper's batch (Table 4), with the
/// command line's overrides and the variant's switches.
pub fn row_config(row: &TableRow, variant: Variant, opts: &Table4Options) -> Result<Config> {
    let (path, text) = row_yaml(opts.table, row)?;
    let mut config = Config::parse(&path, text)?;
    if let Some(batch) = row.eval_batch {
        config.eval_batch_size = Some(batch);
    }
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
        config.text_context = TextContext::Utterance;
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
pub fn jobs(opts: &Table4Options, rows: &[TableRow]) -> Result<Vec<Job>> {
    if opts.corrected && opts.table != Table::Table4 {
        return Err(Error::Other(format!(
            "--corrected switches the reference's quirks of Table 4's rows; {} has none to switch",
            opts.table.title()
        )));
    }
    let asked = match &opts.rows {
        Some(spec) => {
            let known: std::collections::BTreeSet<u8> = rows.iter().map(|r| r.row).collect();
            paper::parse_selection_in(spec, &known, opts.table.title())
                .map_err(|e| Error::Other(format!("--rows: {e}")))?
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
                config_path: row_yaml(opts.table, row)?.0,
                dir: row_dir(&opts.out, row, *variant),
                data: opts.data_for(*variant).to_path_buf(),
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

/// Opens every asked device; one that cannot be used drops out (with why), the others run the queue.
fn open_devices(specs: &[DeviceSpec]) -> (Vec<(String, candle_core::Device)>, Vec<String>) {
    let mut usable = Vec::new();
    let mut dropped = Vec::new();
    for spec in specs {
        match device::open(*spec) {
            Ok(d) => usable.push((spec.to_string(), d)),
            Err(e) => {
                tracing::warn!("device {spec} drops out of the table: {e}");
                dropped.push(format!("{spec}: {e}"));
            }
        }
    }
    (usable, dropped)
}

/// Runs the table (see the module doc).
pub fn run(opts: &Table4Options) -> Result<Table4Report> {
    let rows = table_rows(opts.table)?;
    let jobs = jobs(opts, &rows)?;
    if jobs.is_empty() {
        return Err(Error::Other("no row asked".into()));
    }
    let (devices, dropped) = open_devices(&opts.devices);
    // a device problem is a row problem only when no device is left to run it
    let device_problem = devices.is_empty().then(|| dropped.join("; "));
    let checks = preflight::check(&jobs, opts.glove.as_deref(), device_problem.as_deref());
    println!(
        "preflight ({} runs):\n{}",
        jobs.len(),
        preflight::render(&checks)
    );
    for d in &dropped {
        println!("device dropped out: {d}");
    }
    let mut failed: Vec<(String, String)> = jobs
        .iter()
        .zip(&checks)
        .filter(|(_, c)| !c.ready())
        .map(|(job, c)| {
            (
                job.label(),
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
    for (job, check) in jobs.iter().zip(&checks).filter(|(_, c)| !c.ready()) {
        record_failure(
            job,
            &format!("preflight: {}", check.problems().join("; ")),
            false,
        );
    }
    if !failed.is_empty() && !opts.keep_going {
        // the tables say why each row cannot start
        let _ = collect(opts);
        return Err(Error::Other(format!(
            "{} of {} runs cannot start (see the preflight table); nothing was trained (--keep-going runs the others)",
            failed.len(),
            jobs.len()
        )));
    }
    let ready: Vec<Job> = jobs
        .into_iter()
        .zip(&checks)
        .filter(|(_, c)| c.ready())
        .map(|(j, _)| j)
        .collect();
    let mut todo = Vec::new();
    for (job, plan) in plans(ready) {
        match plan {
            Plan::Complete => {}
            Plan::Train => todo.push(job),
            Plan::Failed(why) => {
                record_failure(&job, &why, false);
                failed.push((job.label(), why));
            }
        }
    }
    if let Some((_, device)) = devices.first() {
        if !todo.is_empty() {
            let estimates = estimate(&todo, opts, device);
            println!("{}", render_estimates(&todo, &estimates));
        }
    }
    failed.extend(run_jobs(todo, opts, &devices));
    if crate::train::interrupt::requested() {
        let _ = collect(opts);
        return Err(Error::Interrupted(
            "the table stopped at a step boundary; rerun the same command to resume".into(),
        ));
    }
    if opts.corrected {
        // the tables show the corrected column whenever this folder exists, also if no corrected run started
        let dir = opts.out.join("corrected");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    let table = collect(opts)?;
    println!("{table}");
    println!(
        "tables: {}",
        opts.out.join(format!("{}.md", opts.table.name())).display()
    );
    Ok(Table4Report { failed, table })
}

/// Writes `why` to the job's `failed.txt` (aside, renamed); `over_complete` also over a finished row's folder
/// (otherwise a row whose summary exists keeps its result: a preflight problem of this machine does not undo it).
fn record_failure(job: &Job, why: &str, over_complete: bool) {
    if !over_complete && job.dir.join("summary.json").exists() {
        return;
    }
    let written = std::fs::create_dir_all(&job.dir)
        .and_then(|_| write_atomic(&job.dir.join("failed.txt"), format!("{why}\n").as_bytes()));
    if let Err(e) = written {
        tracing::error!("{}: cannot record its failure ({why}): {e}", job.label());
    }
}

/// What the table does with a job whose preflight passed.
enum Plan {
    /// Its summary is of this config and data: skipped.
    Complete,
    /// Trained, or resumed, or evaluated again.
    Train,
    /// Its folder cannot be read: recorded, the others go on.
    Failed(String),
}

/// Each job with its [`Plan`], wiping the folders that cannot be continued.
fn plans(jobs: Vec<Job>) -> Vec<(Job, Plan)> {
    // the data's fingerprint reads the three CSVs: once per (dataset, row limit), not once per job
    let mut data_shas: BTreeMap<(PathBuf, Option<usize>), String> = BTreeMap::new();
    jobs.into_iter()
        .map(|job| {
            let plan = (|| -> Result<Plan> {
                let config_sha = config_fingerprint(&job.config)?;
                let key = (job.data.clone(), job.max_rows);
                let data_sha = match data_shas.get(&key) {
                    Some(sha) => sha.clone(),
                    None => {
                        let sha = data_fingerprint(&job.data, job.max_rows)?;
                        data_shas.insert(key, sha.clone());
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
                        Plan::Complete
                    }
                    Folder::Resumable | Folder::Fresh => Plan::Train,
                })
            })()
            .unwrap_or_else(|e| Plan::Failed(format!("its folder cannot be read: {e}")));
            (job, plan)
        })
        .collect()
}

/// What a row folder holds.
enum Folder {
    /// A summary of this config and data.
    Complete,
    /// A checkpoint of this config and data: resumed, or (finished) evaluated again.
    Resumable,
    /// Nothing to reuse (an empty or wiped folder).
    Fresh,
}

/// Classifies a row folder. One that holds another config's or data's run, or a corrupt checkpoint, is emptied
/// with a message saying why; a damaged summary beside a checkpoint of this run means the row is evaluated
/// again; a file that cannot be read at all is an error (the row is recorded failed, nothing is deleted).
fn inspect(dir: &Path, config_sha: &str, data_sha: &str) -> Result<Folder> {
    if !dir.exists() {
        return Ok(Folder::Fresh);
    }
    let summary = dir.join("summary.json");
    let damaged = match std::fs::read_to_string(&summary) {
        Ok(text) => match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(value) if value.get("config_sha256").is_some() => {
                if value["config_sha256"] == config_sha && value["data_sha256"] == data_sha {
                    return Ok(Folder::Complete);
                }
                return wipe(dir, "its summary is of another config or dataset");
            }
            Ok(_) => Some("it is not a run summary".to_string()),
            Err(e) => Some(e.to_string()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(&summary, e)),
    };
    match checkpoint::read(dir) {
        Ok(Some(saved))
            if saved.state.config_sha256 == config_sha && saved.state.data_sha256 == data_sha =>
        {
            if let Some(why) = damaged {
                tracing::warn!(
                    "{}: damaged ({why}); the row is evaluated again from its checkpoint, not retrained",
                    summary.display()
                );
            }
            Ok(Folder::Resumable)
        }
        Ok(Some(_)) => wipe(dir, "its checkpoint is of another config or dataset"),
        Ok(None) => match damaged {
            Some(why) => wipe(
                dir,
                &format!("its summary is damaged ({why}) and it holds no checkpoint"),
            ),
            None => wipe(dir, "it holds no checkpoint"),
        },
        Err(e @ Error::Io { .. }) => Err(e),
        Err(e) => wipe(dir, &e.to_string()),
    }
}

fn wipe(dir: &Path, why: &str) -> Result<Folder> {
    tracing::warn!("{}: starting this row over ({why})", dir.display());
    std::fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    Ok(Folder::Fresh)
}

/// A job's time estimate.
enum Estimate {
    Seconds(f64),
    /// The family's steps could not be timed (the row runs anyway).
    Unknown(String),
}

/// Seconds per training step of each model family (the same encoders and fusion), measured on the family's
/// first job: a warm-up step, then the mean of two. A family that cannot be timed (out of memory, a panic, bad
/// data) is said so, and its rows run anyway: their own training records what goes wrong.
fn estimate(jobs: &[Job], opts: &Table4Options, device: &candle_core::Device) -> Vec<Estimate> {
    let mut per_family: BTreeMap<String, std::result::Result<(f64, usize), String>> =
        BTreeMap::new();
    let mut sizes: BTreeMap<PathBuf, std::result::Result<(usize, usize, usize), String>> =
        BTreeMap::new();
    let mut out = Vec::new();
    for job in jobs {
        let family = family(&job.config);
        let timed = per_family
            .entry(family.clone())
            .or_insert_with(|| {
                tracing::info!("timing a few training steps of {family}");
                guarded(|| {
                    if failpoint("estimate", &job.row.label()) {
                        return Err(Error::Other("failpoint: estimate".into()));
                    }
                    time_steps(job, opts, device)
                })
                .map(|t| (t, job.config.batch_size()))
                .map_err(|e| e.to_string())
            })
            .clone();
        let split = sizes
            .entry(job.data.clone())
            .or_insert_with(|| split_sizes(&job.data).map_err(|e| e.to_string()))
            .clone();
        out.push(match (timed, split) {
            (Ok((t, batch)), Ok((train, valid, test))) => {
                let per_item = t / batch as f64;
                // the loop's steps, plus the evaluations (forward only, ~1/3 of a training step) of every epoch
                // and the final valid + test
                let prepared_len = |split: usize| job.max_rows.map_or(split, |m| split.min(m));
                let epochs = job.config.epochs();
                let (_, steps) =
                    planned_steps(prepared_len(train), job.config.batch_size(), epochs);
                let train_s = steps as f64 * per_item * job.config.batch_size() as f64;
                let eval_items = (prepared_len(valid) * (epochs + 1) + prepared_len(test)) as f64;
                Estimate::Seconds(train_s + eval_items * per_item / 3.0)
            }
            (Err(why), _) | (_, Err(why)) => Estimate::Unknown(why),
        });
    }
    out
}

/// What stopped a guarded call: its error, or a panic's message.
enum Stopped {
    Error(Error),
    Panic(String),
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stopped::Error(e) => write!(f, "{e}"),
            Stopped::Panic(m) => write!(f, "panicked: {m}"),
        }
    }
}

/// Runs `f`, catching a panic (a bug in one row must not end the table).
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> std::result::Result<T, Stopped> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Stopped::Error(e)),
        Err(panic) => Err(Stopped::Panic(panic_message(&panic))),
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

/// Fault injection for the tests of the failure paths: `ERC_FAILPOINTS=estimate=04,panic=07` makes the estimate
/// of row 04's family fail and row 07's training panic. Unset (always, outside those tests) nothing happens.
fn failpoint(point: &str, row: &str) -> bool {
    std::env::var("ERC_FAILPOINTS").is_ok_and(|spec| {
        spec.split(',')
            .filter_map(|item| item.split_once('='))
            .any(|(p, r)| p.trim() == point && r.trim() == row)
    })
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
        path: job.config_path.clone(),
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
        let value = loss.step(&out, &batch, model.classes)?;
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

fn render_estimates(jobs: &[Job], estimates: &[Estimate]) -> String {
    let mut out = String::from("time estimate (from timed steps per model family):\n");
    let mut total = 0.0;
    let mut unknown = 0;
    for (job, estimate) in jobs.iter().zip(estimates) {
        let text = match estimate {
            Estimate::Seconds(s) => {
                total += s;
                human_duration(*s)
            }
            Estimate::Unknown(why) => {
                unknown += 1;
                format!(
                    "? (could not be timed: {}; the row runs anyway)",
                    why.lines().next().unwrap_or("")
                )
            }
        };
        out += &format!("  {:<48} {text:>12}\n", job.label());
    }
    out += &format!(
        "  {:<48} {:>12}{}",
        "total (one device)",
        human_duration(total),
        if unknown > 0 {
            format!(" + {unknown} row(s) not timed")
        } else {
            String::new()
        }
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

/// Whether an error says the device itself failed (the CUDA driver reporting a launch failure, a lost device, an
/// ECC error…) rather than the row: the worker's device then drops out and the row goes back to the queue.
/// Running out of memory is the row's problem (its batch, its model), not the device's.
fn is_device_failure(e: &Error) -> bool {
    let text = e.to_string();
    (text.contains("CUDA_ERROR") || text.contains("DriverError")) && !text.contains("OUT_OF_MEMORY")
}

/// The outcome of one attempt at a job.
enum Attempt {
    Done,
    Failed(String),
    /// The device failed, not the row: the job goes back to the queue and this device stops.
    DeviceLost(String),
    /// A stop signal: the row keeps its last complete epoch's checkpoint, and no worker takes another row.
    Interrupted(String),
}

/// Trains the jobs, one worker per device over one queue; returns the failures. A row's error or panic is
/// recorded in its `failed.txt` and the worker takes the next row; a device that fails drops out, its row going
/// back to the queue for the others (when none is left, the rows not run are recorded as such).
fn run_jobs(
    jobs: Vec<Job>,
    opts: &Table4Options,
    devices: &[(String, candle_core::Device)],
) -> Vec<(String, String)> {
    let epochs_total: usize = jobs.iter().map(|j| j.config.epochs()).sum();
    let runs = jobs.len();
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
    let queue: Mutex<VecDeque<Job>> = Mutex::new(jobs.into_iter().collect());
    let failed: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
    let done = Mutex::new(0usize);
    let lost: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for (name, device) in devices {
            let (queue, failed, done, lost, overall, multi) =
                (&queue, &failed, &done, &lost, &overall, &multi);
            scope.spawn(move || loop {
                let mut next = None;
                if !crate::train::interrupt::requested() {
                    with_lock(queue, |q| next = q.pop_front());
                }
                let Some(job) = next else {
                    break;
                };
                let label = job.label();
                overall.set_message(format!("{label} on {name}"));
                let progress = if opts.progress {
                    Progress::Under(multi.clone())
                } else {
                    Progress::Hidden
                };
                let hook_bar = overall.clone();
                let attempt = match guarded(|| {
                    run_job(
                        &job,
                        opts,
                        device,
                        name,
                        progress,
                        Arc::new(move |_, _| hook_bar.inc(1)),
                    )
                }) {
                    Ok(()) => Attempt::Done,
                    Err(Stopped::Error(Error::Interrupted(why))) => Attempt::Interrupted(why),
                    Err(Stopped::Error(e)) if is_device_failure(&e) => {
                        Attempt::DeviceLost(e.to_string())
                    }
                    Err(stopped) => Attempt::Failed(stopped.to_string()),
                };
                match attempt {
                    Attempt::Done => {}
                    Attempt::Failed(why) => {
                        tracing::error!("{label} failed: {why}");
                        record_failure(&job, &why, true);
                        with_lock(failed, |f| f.push((label, why)));
                    }
                    Attempt::Interrupted(why) => {
                        tracing::warn!("{label}: {why}");
                        break;
                    }
                    Attempt::DeviceLost(why) => {
                        tracing::error!(
                            "device {name} drops out of the table ({why}); {label} goes back to the queue"
                        );
                        with_lock(lost, |l| l.push(format!("{name}: {why}")));
                        with_lock(queue, |q| q.push_front(job));
                        break;
                    }
                }
                with_lock(done, |d| {
                    *d += 1;
                    overall.set_message(format!("{}/{runs} runs done", *d));
                });
            });
        }
    });
    overall.finish_and_clear();
    let mut failed = failed
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if crate::train::interrupt::requested() {
        // the rows not reached stay as they are: the rerun takes them
        return failed;
    }
    // rows left when every device dropped out
    let lost = lost
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for job in queue
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        let why = format!("not run: no usable device left ({})", lost.join("; "));
        record_failure(&job, &why, true);
        failed.push((job.label(), why));
    }
    failed
}

/// Runs `f` on the value behind `m` (a worker that panicked holding it cannot have left it half changed: every
/// use is one push or pop).
fn with_lock<T>(m: &Mutex<T>, f: impl FnOnce(&mut T)) {
    let mut guard = m.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    f(&mut guard);
}

/// What the table ran a row with, beside its run (`table4-run.json`): how [`collect`] tells a run as the paper
/// ran it from a smoke run, a shortened one or one on a row limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub row: String,
    pub variant: Variant,
    pub smoke: bool,
    /// `--epochs`, when it overrode the row's.
    pub epochs: Option<usize>,
    pub max_rows: Option<usize>,
    pub data: String,
}

/// The record's file in a row folder.
pub const RUN_RECORD: &str = "table4-run.json";

fn run_job(
    job: &Job,
    opts: &Table4Options,
    device: &candle_core::Device,
    device_name: &str,
    progress: Progress,
    on_epoch: crate::train::EpochHook,
) -> Result<()> {
    let _ = std::fs::remove_file(job.dir.join("failed.txt"));
    std::fs::create_dir_all(&job.dir).map_err(|e| Error::io(&job.dir, e))?;
    let record = RunRecord {
        row: job.row.label(),
        variant: job.variant,
        smoke: opts.smoke,
        epochs: opts.epochs,
        max_rows: job.max_rows,
        data: job.data.display().to_string(),
    };
    let path = job.dir.join(RUN_RECORD);
    let text = serde_json::to_string_pretty(&record).map_err(|e| Error::Other(e.to_string()))?;
    write_atomic(&path, text.as_bytes()).map_err(|e| Error::io(&path, e))?;
    if failpoint("panic", &job.row.label()) {
        panic!("failpoint: a panic in row {}", job.row.label());
    }
    let loaded = LoadedConfig {
        path: job.config_path.clone(),
        config: job.config.clone(),
    };
    let glove = glove_path(&job.config, opts.glove.as_deref());
    let prepared = prepare(
        loaded,
        &job.data,
        VocabSource::GloveFile(glove),
        job.max_rows,
    )?;
    let mut options = TrainOptions::new(&job.data, &opts.out, device.clone(), device_name);
    options.run_dir = Some(job.dir.clone());
    options.resume = true;
    options.progress = progress;
    options.on_epoch = Some(on_epoch);
    crate::train::train(prepared, &options)?;
    if !opts.keep_checkpoints {
        // a finished row needs its state only (to be evaluated again should its summary be damaged)
        if let Some(state) = checkpoint::read_state(&job.dir)? {
            checkpoint::write_finished(&job.dir, &state)?;
        }
    }
    Ok(())
}

/// The scores of a row folder's summary for a split (`valid` or `test`).
fn summary_scores(summary: &serde_json::Value, split: &str) -> Option<Scores> {
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

/// What a row's run must have been for its numbers to stand beside the paper's: the row's config as the paper
/// ran it (its epochs, no smoke shrinking) and the whole dataset.
struct Expected {
    config_sha256: String,
    data_sha256: Option<String>,
    epochs: usize,
}

/// The outcome of a row folder: a summary of the expected run gives numbers to compare; a summary of another
/// run gives its numbers labelled with what it was (not compared); else its `failed.txt`, else not run.
fn folder_outcome(dir: &Path, expected: &Expected) -> RowResult {
    let summary = std::fs::read_to_string(dir.join("summary.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok());
    if let Some(summary) = summary {
        if let Some(valid) = summary_scores(&summary, "valid") {
            let test = summary_scores(&summary, "test");
            let reasons = differences(dir, &summary, expected);
            if reasons.is_empty() {
                return RowResult {
                    valid: Outcome::Done(valid),
                    test,
                };
            }
            return RowResult {
                valid: Outcome::Other {
                    what: reasons.join(", "),
                    scores: valid,
                },
                test: None,
            };
        }
    }
    match std::fs::read_to_string(dir.join("failed.txt")) {
        Ok(why) => RowResult {
            valid: Outcome::Failed(why.trim().to_string()),
            test: None,
        },
        Err(_) => RowResult::not_run(),
    }
}

/// How a summarised run differs from the expected one, in the user's words ("smoke", "2 of 10 epochs",
/// "max-rows 48", "other data", "other config"); empty when it is the expected run.
fn differences(dir: &Path, summary: &serde_json::Value, expected: &Expected) -> Vec<String> {
    let same_config = summary["config_sha256"] == expected.config_sha256.as_str();
    let same_data = expected
        .data_sha256
        .as_deref()
        .is_some_and(|sha| summary["data_sha256"] == sha);
    if same_config && same_data {
        return Vec::new();
    }
    let record: Option<RunRecord> = std::fs::read_to_string(dir.join(RUN_RECORD))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    if record.as_ref().is_some_and(|r| r.smoke) {
        // a smoke run's one epoch on one batch of rows is what "smoke" says
        return vec!["smoke".to_string()];
    }
    let mut reasons = Vec::new();
    let planned = summary["epochs_planned"].as_u64().unwrap_or(0) as usize;
    if planned != expected.epochs {
        reasons.push(format!("{planned} of {} epochs", expected.epochs));
    }
    if let Some(max_rows) = record.as_ref().and_then(|r| r.max_rows) {
        reasons.push(format!("max-rows {max_rows}"));
    } else if !same_data {
        reasons.push("other data".to_string());
    }
    if reasons.is_empty() {
        reasons.push("other config".to_string());
    }
    reasons
}

/// Assembles the tables from the row folders under `opts.out` and writes them (aside, renamed); returns the
/// terminal table. A row's numbers stand beside the paper's only when its summary is of the row's config as the
/// paper ran it (its own epochs, no `--smoke`, no `--max-rows`; the command line's model locations and
/// `--glove` apply) on the whole dataset (`opts.data`, or `opts.corrected_data` for the corrected column); other
/// runs are listed with what they were and not compared. Failed rows give their error, the rest "not run"; a
/// corrected column appears when `out/corrected/` exists. A folder with no row runs is an error. The seeds table
/// is assembled the same way, each row's run checked against its config as it stands.
pub fn collect(opts: &Table4Options) -> Result<String> {
    let out = &opts.out;
    let rows = table_rows(opts.table)?;
    let has_runs = out.is_dir()
        && rows.iter().any(|r| {
            [Variant::Reference, Variant::Corrected]
                .iter()
                .any(|v| row_dir(out, r, *v).is_dir())
        });
    if !has_runs {
        return Err(Error::Other(format!(
            "{}: no {} row folders (NN-name/) here; is it the --out of an `erc-train table4{}` run?",
            out.display(),
            opts.table.title(),
            match opts.table {
                Table::Table4 => "",
                Table::Seeds => " --table seeds",
            }
        )));
    }
    let corrected = opts.table == Table::Table4 && out.join("corrected").is_dir();
    let paper = opts.as_the_paper_ran();
    let mut data_shas: BTreeMap<PathBuf, Option<String>> = BTreeMap::new();
    let mut column = |variant: Variant| -> Result<Vec<RowResult>> {
        rows.iter()
            .map(|r| {
                let config = row_config(r, variant, &paper)?;
                let data = paper.data_for(variant).to_path_buf();
                let data_sha256 = data_shas
                    .entry(data.clone())
                    .or_insert_with(|| data_fingerprint(&data, None).ok())
                    .clone();
                let expected = Expected {
                    config_sha256: config_fingerprint(&config)?,
                    data_sha256,
                    epochs: config.epochs(),
                };
                Ok(folder_outcome(&row_dir(out, r, variant), &expected))
            })
            .collect()
    };
    let ours = column(Variant::Reference)?;
    if opts.table == Table::Seeds {
        let seed_rows = seed_rows()?;
        let results = seeds::Results::new(&seed_rows, &ours).map_err(Error::Other)?;
        results.write_all(out).map_err(|e| Error::io(out, e))?;
        return Ok(results.terminal_table());
    }
    let fixed = if corrected {
        Some(column(Variant::Corrected)?)
    } else {
        None
    };
    let paper_rows = paper_rows()?;
    let results = Results::new(&paper_rows, &ours, fixed.as_deref()).map_err(Error::Other)?;
    results.write_all(out).map_err(|e| Error::io(out, e))?;
    Ok(results.terminal_table())
}
