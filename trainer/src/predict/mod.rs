//! `erc-train predict`: a trained run labels conversations it has never seen — a split of an extracted dataset (for
//! error analysis), a MELD.Raw-shaped folder, or a whole video with its subtitles ([`media`]).
//!
//! The run's own settings apply: its config (classes, text context, audio input, visual crop, face-only images),
//! its GloVe words or GPT-2 tokenizer, its best weights; a row's prompt is built from the earlier utterances of
//! its dialogue (of its video) as in training. Rows are decoded on worker threads ahead of the model and predicted
//! in eval mode in dataset order, batch by batch as `erc-train eval` runs them, so that on a labelled split the
//! weighted F1 of `predictions.csv` is `eval`'s. A row is never dropped: one the model cannot read (no range, no
//! media of a kind the model needs) gets its reason and no probabilities ([`outputs`]).

pub mod media;
pub mod outputs;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};

use self::media::Input;
use self::outputs::Prediction;
use crate::config::{Config, ModelSources, TextEncoder};
use crate::data::{GloveVocab, Loader, Preprocess, SplitData};
use crate::error::{Error, Result};
use crate::model::{Backbones, Model};
use crate::nn::Ctx;
use crate::train::metrics::Metrics;
use crate::train::report::RunFolder;

/// `erc-train predict`'s settings.
pub struct PredictOptions {
    pub run: PathBuf,
    pub input: Input,
    pub out: PathBuf,
    pub device: Device,
    /// Default: the run's evaluation batch size.
    pub batch_size: Option<usize>,
    /// The RetinaFace model for runs whose model reads face-only images.
    pub faces: Option<PathBuf>,
    pub models: ModelSources,
    pub progress: bool,
}

/// What a prediction run did.
pub struct PredictSummary {
    pub rows: usize,
    pub predicted: usize,
    /// Rows without a prediction, by reason code.
    pub unpredicted: Vec<(String, usize)>,
    pub seconds: f64,
    /// Where labels are known: the metrics of the predicted labelled rows.
    pub metrics: Option<Metrics>,
    pub out: PathBuf,
}

/// The run's files, checked: a finished run of this erc-train.
fn open_run(path: &Path) -> Result<RunFolder> {
    let run = RunFolder::open(path)?;
    let missing: Vec<&str> = [
        ("config.yml", "config.yml"),
        ("model.safetensors", "model.safetensors (the best weights)"),
        (
            "summary.json",
            "summary.json (the run did not finish: resume it with `erc-train --resume RUN`)",
        ),
    ]
    .into_iter()
    .filter(|(file, _)| !path.join(file).is_file())
    .map(|(_, what)| what)
    .collect();
    if !missing.is_empty() {
        return Err(Error::data(
            path,
            format!("not a finished run: it lacks {}", missing.join(", ")),
        ));
    }
    let info = run.run_info()?;
    let version = info["erc_train_version"].as_str().unwrap_or("?");
    if version != env!("CARGO_PKG_VERSION") {
        return Err(Error::data(
            path.join("run.json"),
            format!(
                "the run was made by erc-train {version}; this is {}: predict with that version (the model's \
                 layout may differ)",
                env!("CARGO_PKG_VERSION")
            ),
        ));
    }
    Ok(run)
}

/// The face-detection profile the run's training data used (its manifest), else the reference's.
fn training_face_profile(run: &RunFolder) -> String {
    let data = run
        .run_info()
        .ok()
        .and_then(|info| info["data"].as_str().map(PathBuf::from));
    data.and_then(|d| std::fs::read_to_string(d.join("manifest.json")).ok())
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|m| m["faces"]["profile"].as_str().map(str::to_string))
        .unwrap_or_else(|| "hlm12erc".to_string())
}

/// Why row `i` cannot be predicted by a model reading `prep`'s media, if it cannot.
fn reason(
    data: &SplitData,
    i: usize,
    prep: &Preprocess,
    failures: &media::Failures,
) -> Option<String> {
    let row = &data.rows[i];
    let problems = failures.get(&(row.dialogue, row.sequence));
    let say = |stages: &[&str], fallback: &str| -> String {
        problems
            .and_then(|p| {
                p.iter()
                    .find(|(stage, _, _)| stages.contains(&stage.as_str()))
            })
            .map(|(_, reason, detail)| format!("{reason}: {detail}"))
            .unwrap_or_else(|| fallback.to_string())
    };
    // a range that could not be cut: nothing of the utterance is known to be its own
    if let Some((_, r, detail)) = problems.and_then(|p| p.iter().find(|(s, _, _)| s == "segment")) {
        return Some(format!("{r}: {detail}"));
    }
    let missing = |cell: &Option<String>| {
        cell.as_ref()
            .is_none_or(|c| !meld_shared::dataset::media_path(&data.csv, c).is_file())
    };
    if let Some(spec) = prep.visual {
        if missing(spec.cell(row)) {
            return Some(say(
                &["open", "video", "mosaic", "faces"],
                "no image for the model's visual encoder",
            ));
        }
    }
    if prep.audio.is_some() && missing(&row.x_audio) {
        return Some(say(
            &["open", "audio"],
            "no audio for the model's audio encoder",
        ));
    }
    None
}

/// Seconds of a `HH:MM:SS,mmm` cell.
fn seconds(cell: &Option<String>) -> Option<f64> {
    let text = cell.as_deref()?.trim();
    let (clock, ms) = text.rsplit_once([',', '.']).unwrap_or((text, "0"));
    let mut s = 0.0;
    for part in clock.split(':') {
        s = s * 60.0 + part.trim().parse::<f64>().ok()?;
    }
    Some(s + format!("0.{ms}").parse::<f64>().ok()?)
}

/// Runs the prediction (see the module doc) and writes its outputs into `opts.out`.
pub fn run(opts: &PredictOptions) -> Result<PredictSummary> {
    let started = Instant::now();
    let run = open_run(&opts.run)?;
    let mut config = Config::load(&run.config())?.config;
    opts.models.apply(&mut config);
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let prepared = media::prepare(
        &opts.input,
        &config,
        opts.faces.as_deref(),
        &training_face_profile(&run),
        &opts.out,
    )?;
    let backbones = Backbones::resolve(&config)?;
    let classes = config.classes();
    let prep = Arc::new(Preprocess::new(&config));
    let mut data = SplitData::load_unlabelled(&prepared.data, prepared.split, &classes)?;
    let vocab = if config.modules_text_encoder == TextEncoder::Glove {
        let dim = config.text_out_features.unwrap_or(50).max(1) as usize;
        Some(GloveVocab::load_words(&run.vocab(), dim)?)
    } else {
        None
    };
    let tokenizer = crate::train::text_tokenizer(&backbones)?;
    crate::train::encode_text(&mut data, &config, vocab.as_ref(), tokenizer.as_ref())?;
    let data = Arc::new(data);

    let model = Model::build_with(
        &config,
        vocab.as_ref(),
        &backbones,
        &opts.device,
        config.seed(),
    )?;
    model.store.load(&run.weights())?;
    let reasons: Vec<Option<String>> = (0..data.len())
        .map(|i| reason(&data, i, &prep, &prepared.failures))
        .collect();
    let order: Vec<usize> = (0..data.len()).filter(|i| reasons[*i].is_none()).collect();
    let batch_size = opts.batch_size.unwrap_or(config.eval_batch_size()).max(1);
    let bar = if opts.progress {
        ProgressBar::new(order.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "predict {bar:40} {pos}/{len} utterances  {per_sec}  eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let model_start = Instant::now();
    let mut probabilities: Vec<Option<Vec<f32>>> = vec![None; data.len()];
    let mut ctx = Ctx::eval();
    for batch in Loader::spawn(data.clone(), prep.clone(), order.clone(), batch_size) {
        let batch = batch?;
        let probs = model.forward(&batch, &mut ctx)?.probs.detach();
        let probs = probs.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
        for (i, p) in batch.indices.iter().zip(probs) {
            probabilities[*i] = Some(p);
        }
        bar.inc(batch.len() as u64);
    }
    bar.finish_and_clear();
    let model_seconds = model_start.elapsed().as_secs_f64();

    let rows: Vec<Prediction> = (0..data.len())
        .map(|i| {
            let row = &data.rows[i];
            Prediction {
                dialogue: row.dialogue,
                sequence: row.sequence,
                start: seconds(&row.start_time),
                end: seconds(&row.end_time),
                speaker: row.speaker.clone(),
                text: row.x_text.clone(),
                probabilities: probabilities[i].take(),
                truth: row
                    .label
                    .and_then(|l| classes.iter().position(|c| c == l.name())),
                reason: reasons[i].clone(),
            }
        })
        .collect();
    outputs::write_csv(&opts.out.join("predictions.csv"), &classes, &rows)?;
    outputs::write_srt(&opts.out.join("emotions.srt"), &classes, &rows)?;
    if matches!(opts.input, Input::Video { .. }) {
        outputs::plot_timeline(&opts.out.join("timeline.png"), &classes, &rows)?;
    }

    let labelled: Vec<(usize, usize)> = rows
        .iter()
        .filter_map(|r| Some((r.truth?, r.predicted()?)))
        .collect();
    let metrics = (!labelled.is_empty()).then(|| {
        let (truth, predicted): (Vec<usize>, Vec<usize>) = labelled.into_iter().unzip();
        Metrics::compute(&classes, &truth, &predicted)
    });
    let mut unpredicted: std::collections::BTreeMap<String, usize> = Default::default();
    for r in &rows {
        if let Some(why) = &r.reason {
            let code = why.split(':').next().unwrap_or(why).trim().to_string();
            *unpredicted.entry(code).or_default() += 1;
        }
    }
    let summary = PredictSummary {
        rows: rows.len(),
        predicted: order.len(),
        unpredicted: unpredicted.into_iter().collect(),
        seconds: started.elapsed().as_secs_f64(),
        metrics,
        out: opts.out.clone(),
    };
    tracing::info!(
        "model: {} utterances in {model_seconds:.1} s ({:.1}/s)",
        order.len(),
        order.len() as f64 / model_seconds.max(1e-9)
    );
    Ok(summary)
}

impl PredictSummary {
    /// The short report for the terminal.
    pub fn table(&self) -> String {
        let mut out = format!(
            "predict: {} utterances, {} predicted, {} without a prediction, in {:.1} s ({:.1} utterances/s) → {}\n",
            self.rows,
            self.predicted,
            self.rows - self.predicted,
            self.seconds,
            self.rows as f64 / self.seconds.max(1e-9),
            self.out.display()
        );
        for (reason, n) in &self.unpredicted {
            out += &format!("  {reason:<24} {n}\n");
        }
        if let Some(m) = &self.metrics {
            out += &format!(
                "labelled rows: weighted F1 {:.4}, accuracy {:.4}\n{}\nconfusion (rows: true, columns: predicted)\n",
                m.f1_weighted,
                m.accuracy,
                m.report()
            );
            let width = m.classes.iter().map(|c| c.len()).max().unwrap_or(8).max(6);
            out += &format!("{:>width$}", "");
            for c in &m.classes {
                out += &format!(" {:>8}", &c[..c.len().min(8)]);
            }
            out.push('\n');
            for (c, row) in m.classes.iter().zip(&m.confusion) {
                out += &format!("{c:>width$}");
                for n in row {
                    out += &format!(" {n:>8}");
                }
                out.push('\n');
            }
        }
        out
    }
}
