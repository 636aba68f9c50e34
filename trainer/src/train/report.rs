//! The run folder: everything a training run leaves behind.
//!
//! * `config.yml` — the config used (command-line overrides applied), `run.json` — data folder, device, seed,
//!   GloVe file; `glove-vocab.txt` — the GloVe rows kept (so `erc-train eval` can rebuild the model);
//! * `metrics.jsonl` — one line per epoch; `model.safetensors` — the best epoch's weights;
//! * `summary.json` — per-split weighted F1, accuracy, per-class F1, best epoch, wall time, seed, data manifest;
//! * `report-<split>.txt` (sklearn's classification report), `confusion-<split>.csv`;
//! * PNG plots: `curves.png` (loss and weighted F1 per epoch), `confusion-<split>.png`.
//!
//! Plots need a TrueType font for their text: DejaVu Sans from Debian's `fonts-dejavu-core`
//! (`/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf`) or the file named by `ERC_FONT`. Without one the plots
//! are drawn without text and a warning says so.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use meld_shared::Split;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use super::metrics::Metrics;
use crate::config::{Config, Precision};
use crate::error::{Error, Result};

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub steps: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub train_samples_per_s: f64,
    /// Time the training steps waited for the next batch (decoding behind the model).
    pub data_wait_seconds: f64,
    /// Training time not spent waiting for data.
    pub compute_seconds: f64,
    /// The epoch's evaluation on `valid`.
    pub eval_seconds: f64,
    /// The epoch's peak memory over its training steps: the GPU memory pool's high-water mark, or the process's
    /// resident-set peak on the CPU (reset at the epoch's start; see `train::memory`).
    pub peak_memory_bytes: Option<u64>,
    pub valid_loss: f64,
    pub valid_f1_weighted: f64,
    pub valid_accuracy: f64,
    pub best: bool,
    pub seconds: f64,
    pub missing_visual: usize,
    pub missing_audio: usize,
    /// Per modality, the variance of its encoder's features across a validation batch, and that variance over
    /// the features' mean square (`train::diagnostics`; empty in checkpoints written before it existed).
    #[serde(default)]
    pub feature_variance: BTreeMap<String, f64>,
    #[serde(default)]
    pub feature_variance_share: BTreeMap<String, f64>,
    /// MESM: the fraction of feature-map positions its sparse attention kept over the epoch's training steps, by
    /// modality (1.0 for the dense FE2E CNN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesm_kept_fraction: Option<BTreeMap<String, f64>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SplitSummary {
    pub split: String,
    pub rows: usize,
    pub f1_weighted: f64,
    pub accuracy: f64,
    pub loss: f64,
    pub f1_per_class: BTreeMap<String, f64>,
}

impl SplitSummary {
    /// A split's line of the summary, from its metrics and loss.
    pub fn new(split: Split, m: &Metrics, loss: f64) -> Self {
        SplitSummary {
            split: split.dataset_name().to_string(),
            rows: m.support.iter().sum(),
            f1_weighted: m.f1_weighted,
            accuracy: m.accuracy,
            loss,
            f1_per_class: m
                .classes
                .iter()
                .cloned()
                .zip(m.f1.iter().copied())
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub classifier_name: String,
    pub config: String,
    pub data: String,
    pub device: String,
    pub seed: u64,
    pub epochs_planned: usize,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub stopped_early: bool,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    pub precision: Precision,
    pub steps: usize,
    pub parameters: usize,
    pub train_samples_per_s: f64,
    /// Share of the training time spent waiting for batches.
    pub data_wait_fraction: f64,
    pub peak_memory_bytes: Option<u64>,
    pub wall_seconds: f64,
    /// Whether the run continued from a resume checkpoint.
    pub resumed: bool,
    pub config_sha256: String,
    pub data_sha256: String,
    /// Which body the ops took during the run (`ops::Kernel`: CPU kernel, CUDA kernel, generic composition).
    pub op_bodies: crate::ops::BodyCounts,
    pub splits: Vec<SplitSummary>,
    pub data_manifest: serde_json::Value,
}

impl Summary {
    /// A short table for the terminal.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} — best epoch {} of {} ({}), {:.1} train samples/s, {:.0} s\n",
            self.classifier_name,
            self.best_epoch,
            self.epochs_run,
            if self.stopped_early {
                "stopped early"
            } else {
                "all epochs"
            },
            self.train_samples_per_s,
            self.wall_seconds
        );
        out += &format!(
            "{:<8} {:>6} {:>12} {:>9} {:>8}\n",
            "split", "rows", "weighted F1", "accuracy", "loss"
        );
        for s in &self.splits {
            out += &format!(
                "{:<8} {:>6} {:>12.4} {:>9.4} {:>8.4}\n",
                s.split, s.rows, s.f1_weighted, s.accuracy, s.loss
            );
        }
        out
    }
}

/// `run.json`: where a run came from (what `erc-train eval` needs to find its data again).
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub config_file: String,
    pub data: String,
    pub device: String,
    pub seed: u64,
    pub epochs: usize,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    pub precision: Precision,
    pub max_rows: Option<usize>,
    pub glove_file: Option<String>,
    pub parameters: usize,
    pub config_sha256: String,
    pub data_sha256: String,
    pub erc_train_version: &'static str,
}

pub struct RunFolder {
    pub path: PathBuf,
}

fn write(path: &Path, text: &str) -> Result<()> {
    write_atomic(path, text.as_bytes()).map_err(|e| Error::io(path, e))
}

/// Where `path` is written before it is renamed into place: beside it (same file system), hidden, with the same
/// extension (plotters picks the image format from it), named per process (two writers never share it).
pub fn aside(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{}.{name}", std::process::id()))
}

/// Writes `bytes` to `path` whole or not at all: to [`aside`]`(path)`, flushed to disk, then renamed over `path`
/// (a reader sees the old file or the new one, never a torn one; two writers leave one of their files).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = aside(path);
    let outcome = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if outcome.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    outcome
}

/// Runs `draw` on [`aside`]`(path)` and renames the result over `path` (a plot is never seen half drawn).
pub fn draw_atomic(path: &Path, draw: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = aside(path);
    match draw(&tmp) {
        Ok(()) => std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn json(value: &impl Serialize) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|e| Error::Other(format!("cannot write JSON: {e}")))
}

impl RunFolder {
    /// `<out>/<name>`, or `<name>-2`, `<name>-3`, … if taken.
    pub fn create(out: &Path, name: &str) -> Result<Self> {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        for n in 1.. {
            let path = if n == 1 {
                out.join(&safe)
            } else {
                out.join(format!("{safe}-{n}"))
            };
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(RunFolder { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        unreachable!("an unbounded range always yields")
    }

    /// Exactly `dir` (created when missing): a table row's folder, or a run to resume.
    pub fn at(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        Ok(RunFolder {
            path: dir.to_path_buf(),
        })
    }

    pub fn open(path: &Path) -> Result<Self> {
        if !path.join("run.json").is_file() {
            return Err(Error::data(path, "not a run folder (no run.json)"));
        }
        Ok(RunFolder {
            path: path.to_path_buf(),
        })
    }

    pub fn weights(&self) -> PathBuf {
        self.path.join("model.safetensors")
    }

    pub fn config(&self) -> PathBuf {
        self.path.join("config.yml")
    }

    pub fn vocab(&self) -> PathBuf {
        self.path.join("glove-vocab.txt")
    }

    /// What `erc-train eval` needs to find the data again.
    pub fn run_info(&self) -> Result<serde_json::Value> {
        let path = self.path.join("run.json");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::data(&path, e.to_string()))
    }

    /// `config.yml` (the config used) and `run.json`; starts an empty `metrics.jsonl`.
    pub fn write_start(&self, config: &Config, info: &RunInfo) -> Result<()> {
        write(&self.config(), &config.to_yaml()?)?;
        write(&self.path.join("run.json"), &json(info)?)?;
        write(&self.path.join("metrics.jsonl"), "")
    }

    /// `metrics.jsonl` with exactly `records` (a resumed run drops the lines of an epoch whose checkpoint was
    /// never written).
    pub fn rewrite_epochs(&self, records: &[EpochRecord]) -> Result<()> {
        let mut text = String::new();
        for record in records {
            text += &serde_json::to_string(record).map_err(|e| Error::Other(e.to_string()))?;
            text.push('\n');
        }
        write(&self.path.join("metrics.jsonl"), &text)
    }

    pub fn append_epoch(&self, record: &EpochRecord) -> Result<()> {
        let path = self.path.join("metrics.jsonl");
        let line = serde_json::to_string(record).map_err(|e| Error::Other(e.to_string()))?;
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        writeln!(file, "{line}").map_err(|e| Error::io(&path, e))
    }

    /// The classification report, the confusion matrix (CSV and PNG) of a split.
    pub fn write_evaluation(&self, split: Split, metrics: &Metrics) -> Result<()> {
        let name = split.dataset_name();
        write(
            &self.path.join(format!("report-{name}.txt")),
            &metrics.report(),
        )?;
        write(
            &self.path.join(format!("confusion-{name}.csv")),
            &metrics.confusion_csv(),
        )?;
        plot_confusion(
            &self.path.join(format!("confusion-{name}.png")),
            &format!("confusion matrix ({name})"),
            &metrics.classes,
            &metrics.confusion,
        )
    }

    pub fn write_summary(&self, summary: &Summary, records: &[EpochRecord]) -> Result<()> {
        write(&self.path.join("summary.json"), &json(summary)?)?;
        plot_curves(&self.path.join("curves.png"), records)
    }
}

/// Registers the plot font once; `None` when no font file is available.
pub(crate) fn font() -> Option<&'static str> {
    static FONT: OnceLock<Option<&'static str>> = OnceLock::new();
    *FONT.get_or_init(|| {
        let candidates = std::env::var("ERC_FONT")
            .ok()
            .into_iter()
            .chain(["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".to_string()]);
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return Some("sans-serif");
                }
            }
        }
        tracing::warn!(
            "no font for plot text (install Debian's fonts-dejavu-core or set ERC_FONT=<file.ttf>): plots have no labels"
        );
        None
    })
}

fn plot_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Other(format!("{}: cannot draw the plot: {e}", path.display()))
}

/// Training and validation loss, and validation weighted F1, per epoch.
pub fn plot_curves(path: &Path, records: &[EpochRecord]) -> Result<()> {
    draw_atomic(path, |path| draw_curves(path, records))
}

fn draw_curves(path: &Path, records: &[EpochRecord]) -> Result<()> {
    let root = BitMapBackend::new(path, (1000, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let (left, right) = root.split_horizontally(500);
    let epochs = records.len().max(1) as f64;
    let font = font();
    let loss_max = records
        .iter()
        .flat_map(|r| [r.train_loss, r.valid_loss])
        .filter(|v| v.is_finite())
        .fold(0f64, f64::max)
        .max(1e-3)
        * 1.1;
    type Series<'a> = Vec<(&'a str, RGBColor, Vec<(f64, f64)>)>;
    let panels: [(&DrawingArea<BitMapBackend, _>, &str, f64, Series); 2] = [
        (
            &left,
            "loss",
            loss_max,
            vec![
                (
                    "train",
                    BLUE,
                    records
                        .iter()
                        .map(|r| (r.epoch as f64, r.train_loss))
                        .collect(),
                ),
                (
                    "valid",
                    RED,
                    records
                        .iter()
                        .map(|r| (r.epoch as f64, r.valid_loss))
                        .collect(),
                ),
            ],
        ),
        (
            &right,
            "valid weighted F1",
            1.0,
            vec![(
                "valid F1",
                RED,
                records
                    .iter()
                    .map(|r| (r.epoch as f64, r.valid_f1_weighted))
                    .collect(),
            )],
        ),
    ];
    for (area, title, y_max, series) in panels {
        let mut builder = ChartBuilder::on(area);
        builder
            .margin(15)
            .x_label_area_size(35)
            .y_label_area_size(50);
        if let Some(font) = font {
            builder.caption(title, (font, 20));
        }
        let mut chart = builder
            .build_cartesian_2d(0.5f64..epochs + 0.5, 0f64..y_max)
            .map_err(|e| plot_error(path, e))?;
        if let Some(font) = font {
            chart
                .configure_mesh()
                .x_desc("epoch")
                .label_style((font, 14))
                .draw()
                .map_err(|e| plot_error(path, e))?;
        }
        for (label, colour, points) in series {
            let drawn = chart
                .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
                .map_err(|e| plot_error(path, e))?;
            if font.is_some() {
                drawn
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
            }
            chart
                .draw_series(points.iter().map(|p| Circle::new(*p, 3, colour.filled())))
                .map_err(|e| plot_error(path, e))?;
        }
        if let Some(font) = font {
            chart
                .configure_series_labels()
                .label_font((font, 14))
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()
                .map_err(|e| plot_error(path, e))?;
        }
    }
    root.present().map_err(|e| plot_error(path, e))
}

/// The confusion matrix as a heat map (rows: true class, columns: predicted class), counts written in cells.
pub fn plot_confusion(
    path: &Path,
    title: &str,
    classes: &[String],
    confusion: &[Vec<usize>],
) -> Result<()> {
    draw_atomic(path, |path| draw_confusion(path, title, classes, confusion))
}

fn draw_confusion(
    path: &Path,
    title: &str,
    classes: &[String],
    confusion: &[Vec<usize>],
) -> Result<()> {
    let k = classes.len() as i32;
    let root = BitMapBackend::new(path, (640, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let font = font();
    let mut builder = ChartBuilder::on(&root);
    builder
        .margin(15)
        .x_label_area_size(60)
        .y_label_area_size(80);
    if let Some(font) = font {
        builder.caption(title, (font, 20));
    }
    let mut chart = builder
        .build_cartesian_2d(0i32..k, 0i32..k)
        .map_err(|e| plot_error(path, e))?;
    let name = |v: &i32| classes.get(*v as usize).cloned().unwrap_or_default();
    // Cell size in pixels, to centre the tick labels and the counts on the cells.
    let (plot_w, plot_h) = chart.plotting_area().dim_in_pixel();
    let (cell_w, cell_h) = (plot_w as i32 / k.max(1), plot_h as i32 / k.max(1));
    if let Some(font) = font {
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(k as usize + 1)
            .y_labels(k as usize + 1)
            .x_label_offset(cell_w / 2)
            .y_label_offset(-cell_h / 2)
            .x_desc("predicted")
            .y_desc("true")
            .x_label_formatter(&|v| name(v))
            .y_label_formatter(&|v| name(&(k - 1 - *v)))
            .label_style((font, 13))
            .draw()
            .map_err(|e| plot_error(path, e))?;
    }
    // Colour by the share of the true class (row-normalised), so rare classes are readable too.
    let cells: Vec<(i32, i32, usize, f64)> = confusion
        .iter()
        .enumerate()
        .flat_map(|(t, row)| {
            let total = row.iter().sum::<usize>().max(1) as f64;
            row.iter()
                .enumerate()
                .map(move |(p, v)| (p as i32, k - 1 - t as i32, *v, *v as f64 / total))
        })
        .collect();
    chart
        .draw_series(cells.iter().map(|(x, y, _, share)| {
            Rectangle::new(
                [(*x, *y), (*x + 1, *y + 1)],
                HSLColor(0.6, 0.7, 1.0 - 0.6 * share).filled(),
            )
        }))
        .map_err(|e| plot_error(path, e))?;
    if let Some(font) = font {
        chart
            .draw_series(cells.iter().map(|(x, y, v, _)| {
                let style = (font, 14).into_font().color(&BLACK).pos(
                    plotters::style::text_anchor::Pos::new(
                        plotters::style::text_anchor::HPos::Center,
                        plotters::style::text_anchor::VPos::Center,
                    ),
                );
                EmptyElement::at((*x, *y + 1))
                    + Text::new(v.to_string(), (cell_w / 2, cell_h / 2), style)
            }))
            .map_err(|e| plot_error(path, e))?;
    }
    root.present().map_err(|e| plot_error(path, e))
}
