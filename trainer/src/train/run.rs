//! The training loop (docs/reference.md §5): random order each epoch, AdamW with warm-up/decay and clipping,
//! evaluation on `valid` after every epoch in eval mode (sequential order, training batch size), early stopping
//! (patience, threshold 0.001) on `classifier_metric_for_best_model`, the best epoch's weights kept, and at the end
//! the best model evaluated on `valid` and `test` and written to the run folder ([`super::report`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor, D};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use meld_shared::Split;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::checkpoint::{self, sha256_hex, LoopState, RngState};
use super::diagnostics::{self, FeatureSpread, Spread};
use super::losses::Loss;
use super::memory::{self, PeakMemory};
use super::metrics::Metrics;
use super::optim::{AdamW, AdamWConfig};
use super::report::{EpochRecord, RunFolder, RunInfo, SplitSummary, Summary};
use crate::config::{BestMetric, Config, LoadedConfig, Precision, TextEncoder};
use crate::data::{GloveVocab, Gpt2Tokenizer, Loader, MediaCounts, Preprocess, SplitData};
use crate::error::{Error, Result};
use crate::model::{Backbones, Model};
use crate::nn::Ctx;

/// Evaluation-time improvement threshold of early stopping (HF `early_stopping_threshold`).
pub const EARLY_STOPPING_THRESHOLD: f64 = 0.001;

/// Where the GloVe vectors come from: `--glove`, else the config's `text_glove_path`, else `models/`.
pub fn glove_path(config: &Config, cli: Option<&Path>) -> PathBuf {
    if let Some(path) = cli {
        return path.to_path_buf();
    }
    if let Some(path) = &config.text_glove_path {
        return PathBuf::from(path);
    }
    PathBuf::from(format!(
        "models/glove.6B.{}d.txt",
        config.text_out_features.unwrap_or(50)
    ))
}

/// A config with its data, checked and ready to train or evaluate.
pub struct Prepared {
    pub config: LoadedConfig,
    pub classes: Vec<String>,
    pub prep: Arc<Preprocess>,
    pub train: Arc<SplitData>,
    pub valid: Arc<SplitData>,
    pub test: Arc<SplitData>,
    pub media: [MediaCounts; 3],
    pub vocab: Option<GloveVocab>,
    pub glove_file: Option<PathBuf>,
    /// The pretrained backbones' files.
    pub backbones: Backbones,
    /// sha256 of the three split CSVs and the row limit: what a resumed or skipped run must have seen.
    pub data_sha256: String,
    /// `--max-rows`: only the first rows of each split.
    pub max_rows: Option<usize>,
}

impl Prepared {
    /// The config's model: pretrained backbones loaded, everything else initialised from `seed`.
    pub fn build_model(&self, device: &Device, seed: u64) -> Result<Model> {
        Model::build_with(
            &self.config.config,
            self.vocab.as_ref(),
            &self.backbones,
            device,
            seed,
        )
    }
}

/// Where a GloVe vocabulary comes from.
pub enum VocabSource<'a> {
    /// The standard text file (new training).
    GloveFile(PathBuf),
    /// The word list of a run folder (evaluation; vectors come from the checkpoint).
    RunWords(&'a Path),
}

/// Loads the three splits, checks that the media the config needs are there, and builds the vocabulary.
/// `max_rows` keeps only the first rows of each split (smoke runs).
pub fn prepare(
    config: LoadedConfig,
    data: &Path,
    source: VocabSource<'_>,
    max_rows: Option<usize>,
) -> Result<Prepared> {
    if !data.is_dir() {
        return Err(Error::data(data, "the data folder does not exist"));
    }
    let backbones = Backbones::resolve(&config.config)?;
    crate::data::dataset::check_face_detector(&config.config, data)?;
    let classes = config.config.classes();
    let prep = Preprocess::new(&config.config);
    let mut splits = Vec::new();
    let mut media = [MediaCounts::default(); 3];
    let data_sha256 = data_fingerprint(data, max_rows)?;
    for (i, split) in Split::ALL.iter().enumerate() {
        let mut data = SplitData::load(data, *split, &classes)?;
        if let Some(n) = max_rows {
            data.truncate(n.max(1));
        }
        media[i] = data.check_media(&prep)?;
        data.load_faces(&prep)?;
        splits.push(data);
    }
    let mut prep = prep;
    crate::data::face_crops::fit_landmark_stats(&mut prep, &splits[0]);
    let (mut vocab, mut glove_file) = (None, None);
    if config.config.modules_text_encoder == TextEncoder::Glove {
        let dim = config.config.text_out_features.unwrap_or(50).max(1) as usize;
        let v = match source {
            VocabSource::GloveFile(path) => {
                let wanted = splits
                    .iter()
                    .flat_map(|s| s.vocabulary().cloned())
                    .collect();
                let v = GloveVocab::load(&path, dim, &wanted)?;
                glove_file = Some(path);
                v
            }
            VocabSource::RunWords(path) => GloveVocab::load_words(path, dim)?,
        };
        vocab = Some(v);
    }
    let tokenizer = text_tokenizer(&backbones)?;
    for split in &mut splits {
        encode_text(split, &config.config, vocab.as_ref(), tokenizer.as_ref())?;
    }
    if let Some(dir) = &backbones.roberta {
        use crate::encoders::roberta;
        let cfg = roberta::Config::from_file(&dir.join("config.json"))?;
        let tokenizer = roberta::RobertaTokenizer::from_dir(dir, cfg.max_tokens())?;
        cfg.check_tokenizer(&tokenizer, dir)?;
        for split in &mut splits {
            split.encode_with(config.config.text_context, |text| tokenizer.encode(text))?;
        }
    }
    if prep.sentiment {
        for split in &splits {
            split.check_sentiments()?;
        }
    }
    let mut splits = splits.into_iter().map(Arc::new);
    let (Some(train), Some(valid), Some(test)) = (splits.next(), splits.next(), splits.next())
    else {
        return Err(Error::Other("three splits expected".into()));
    };
    Ok(Prepared {
        config,
        classes,
        prep: Arc::new(prep),
        train,
        valid,
        test,
        media,
        vocab,
        glove_file,
        backbones,
        data_sha256,
        max_rows,
    })
}

/// GPT-2's tokenizer, when the config's text encoder is GPT-2 (checked against its model's vocabulary).
pub fn text_tokenizer(backbones: &Backbones) -> Result<Option<Gpt2Tokenizer>> {
    let Some(dir) = &backbones.gpt2 else {
        return Ok(None);
    };
    let tokenizer = Gpt2Tokenizer::from_dir(dir)?;
    crate::encoders::gpt2::Config::from_file(&dir.join("config.json"))?
        .check_tokenizer(&tokenizer, dir)?;
    Ok(Some(tokenizer))
}

/// The token ids of a split's prompts, as the config's text encoder reads them (GloVe words or GPT-2 tokens,
/// the dialogue or the utterance as `text_context` says).
pub fn encode_text(
    split: &mut SplitData,
    config: &Config,
    vocab: Option<&GloveVocab>,
    tokenizer: Option<&Gpt2Tokenizer>,
) -> Result<()> {
    if let Some(v) = vocab {
        split.encode_text(v, config.text_context);
    }
    if let Some(tokenizer) = tokenizer {
        split.encode_gpt2(tokenizer, config.text_context)?;
    }
    Ok(())
}

/// sha256 over the three split CSVs (the media are named by them and written once by the ETL) and the row
/// limit.
pub fn data_fingerprint(data: &Path, max_rows: Option<usize>) -> Result<String> {
    let mut all = Vec::new();
    for split in Split::ALL {
        let csv = data.join(split.dataset_csv());
        all.extend(std::fs::read(&csv).map_err(|e| Error::io(&csv, e))?);
        all.push(0);
    }
    all.extend(format!("max_rows={max_rows:?}").as_bytes());
    Ok(sha256_hex(&all))
}

/// Optimizer steps per epoch and in the whole planned run, for an epoch of `epoch_len` training items.
pub fn planned_steps(epoch_len: usize, batch_size: usize, epochs: usize) -> (usize, usize) {
    let per_epoch = epoch_len.div_ceil(batch_size.max(1));
    (per_epoch, per_epoch * epochs)
}

/// Items per training epoch: the split's rows, or for `*+triplet` losses the class-balanced sampler's
/// (largest class count) × (number of classes present).
pub fn epoch_len(config: &Config, labels: &[usize]) -> usize {
    if !config.classifier_loss_fn.triplet {
        return labels.len();
    }
    let per_class = class_members(labels);
    per_class.iter().map(Vec::len).max().unwrap_or(0) * per_class.len()
}

/// Dataset indices of each class present, classes in index (alphabetical) order, members in dataset order.
fn class_members(labels: &[usize]) -> Vec<Vec<usize>> {
    let classes = labels.iter().copied().max().map_or(0, |m| m + 1);
    let mut members = vec![Vec::new(); classes];
    for (i, l) in labels.iter().enumerate() {
        members[*l].push(i);
    }
    members.retain(|m| !m.is_empty());
    members
}

/// The training order of one epoch. Normally a random permutation. For `*+triplet` losses, the reference's
/// class-balanced sampler (docs/reference.md §5.5): until the epoch length is reached, shuffle the class order and emit k = max(2,
/// ⌈batch/classes⌉) consecutive members of each class from a per-class cursor that wraps around (the members
/// themselves are not shuffled); batches are then cut from this stream.
pub fn epoch_order(config: &Config, labels: &[usize], rng: &mut ChaCha8Rng) -> Vec<usize> {
    if !config.classifier_loss_fn.triplet {
        let mut order: Vec<usize> = (0..labels.len()).collect();
        order.shuffle(rng);
        return order;
    }
    let members = class_members(labels);
    let len = epoch_len(config, labels);
    let batch = config.batch_size();
    let k = if batch <= 1 {
        1
    } else {
        batch.div_ceil(members.len().max(1)).max(2)
    };
    let mut cursors = vec![0usize; members.len()];
    let mut class_order: Vec<usize> = (0..members.len()).collect();
    let mut order = Vec::with_capacity(len);
    while order.len() < len {
        class_order.shuffle(rng);
        for c in &class_order {
            for _ in 0..k {
                if order.len() == len {
                    break;
                }
                order.push(members[*c][cursors[*c] % members[*c].len()]);
                cursors[*c] += 1;
            }
        }
    }
    order
}

/// The outcome of evaluating a model on a split.
pub struct Evaluation {
    pub metrics: Metrics,
    /// The classifier loss over the whole split at once (what the reference logs as the eval loss).
    pub loss: f64,
    pub predictions: Vec<usize>,
    pub samples_per_s: f64,
    /// How much each modality's encoder output varies across a batch ([`super::diagnostics`]).
    pub feature_spread: BTreeMap<String, Spread>,
}

/// Evaluates in eval mode, in dataset order, with the given batch size.
pub fn evaluate(
    model: &Model,
    data: &Arc<SplitData>,
    prep: &Arc<Preprocess>,
    batch_size: usize,
    loss: &Loss,
    classes: &[String],
) -> Result<Evaluation> {
    let start = Instant::now();
    let order: Vec<usize> = (0..data.len()).collect();
    let mut probs = Vec::new();
    let mut logits = Vec::new();
    let mut ctx = Ctx::eval();
    let mut spread = FeatureSpread::default();
    for batch in Loader::spawn(data.clone(), prep.clone(), order, batch_size) {
        let batch = batch?;
        let out = model.forward(&batch, &mut ctx)?;
        spread.add(&out.features)?;
        probs.push(out.probs.detach());
        logits.push(out.logits.detach());
    }
    let probs = Tensor::cat(&probs, 0)?;
    let logits = Tensor::cat(&logits, 0)?;
    let device = model.device();
    let y = one_hot(&data.labels, model.classes, device)?;
    let loss = loss.classifier(&probs, &logits, &y)?.to_scalar::<f32>()? as f64;
    let predictions: Vec<usize> = probs
        .argmax(D::Minus1)?
        .to_vec1::<u32>()?
        .into_iter()
        .map(|p| p as usize)
        .collect();
    let metrics = Metrics::compute(classes, &data.labels, &predictions);
    Ok(Evaluation {
        metrics,
        loss,
        predictions,
        samples_per_s: data.len() as f64 / start.elapsed().as_secs_f64().max(1e-9),
        feature_spread: spread.finish(),
    })
}

fn one_hot(labels: &[usize], classes: usize, device: &Device) -> Result<Tensor> {
    let mut y = vec![0f32; labels.len() * classes];
    for (i, l) in labels.iter().enumerate() {
        y[i * classes + l] = 1.0;
    }
    Ok(Tensor::from_vec(y, (labels.len(), classes), device)?)
}

/// How a run shows its progress.
#[derive(Clone)]
pub enum Progress {
    /// Nothing (tests, logs not on a terminal).
    Hidden,
    /// A bar per epoch on the terminal.
    Terminal,
    /// Bars under a parent (the table's overall bar).
    Under(MultiProgress),
}

/// Called after every epoch with (epoch, epochs): the table's overall progress.
pub type EpochHook = Arc<dyn Fn(usize, usize) + Send + Sync>;

/// Command-line settings of a training run.
pub struct TrainOptions {
    pub data: PathBuf,
    pub out: PathBuf,
    pub device: Device,
    pub device_name: String,
    pub progress: Progress,
    /// Train in exactly this folder (created when missing) instead of a new `<out>/<name>[-N]`.
    pub run_dir: Option<PathBuf>,
    /// Continue from the run folder's resume checkpoint when it has one (`--resume`, `table4` reruns).
    pub resume: bool,
    pub on_epoch: Option<EpochHook>,
}

impl TrainOptions {
    /// A run on `device` writing under `out`, no bars, nothing resumed.
    pub fn new(data: &Path, out: &Path, device: Device, device_name: &str) -> Self {
        TrainOptions {
            data: data.to_path_buf(),
            out: out.to_path_buf(),
            device,
            device_name: device_name.to_string(),
            progress: Progress::Hidden,
            run_dir: None,
            resume: false,
            on_epoch: None,
        }
    }
}

/// Is `value` better than `best` for the selection metric?
fn better(metric: BestMetric, value: f64, best: f64) -> bool {
    match metric {
        BestMetric::Loss => value < best,
        BestMetric::F1Weighted | BestMetric::Acc => value > best,
    }
}

fn metric_value(metric: BestMetric, eval: &Evaluation) -> f64 {
    match metric {
        BestMetric::F1Weighted => eval.metrics.f1_weighted,
        BestMetric::Acc => eval.metrics.accuracy,
        BestMetric::Loss => eval.loss,
    }
}

/// sha256 of the config as the run uses it (YAML after the command line's overrides).
pub fn config_fingerprint(config: &Config) -> Result<String> {
    Ok(sha256_hex(config.to_yaml()?.as_bytes()))
}

/// The state of the loop between epochs; what the resume checkpoint keeps.
struct LoopRng {
    shuffle: ChaCha8Rng,
    ctx: Ctx,
}

/// Trains the prepared experiment and writes its run folder (continuing from its resume checkpoint when
/// `options.resume` and there is one); returns the folder and the summary.
pub fn train(prepared: Prepared, options: &TrainOptions) -> Result<(PathBuf, Summary)> {
    let wall = Instant::now();
    let bodies = crate::ops::body_counts();
    let config = &prepared.config.config;
    let seed = config.seed();
    let batch_size = config.batch_size();
    let eval_batch = config.eval_batch_size();
    let epochs = config.epochs();
    let device = &options.device;
    let (steps_per_epoch, total_steps) = planned_steps(
        epoch_len(config, &prepared.train.labels),
        batch_size,
        epochs,
    );
    super::device::set_tf32(device, config.precision == Precision::Tf32);
    let model = prepared.build_model(device, seed)?;
    let config_sha256 = config_fingerprint(config)?;
    let run = match &options.run_dir {
        Some(dir) => RunFolder::at(dir)?,
        None => RunFolder::create(&options.out, &config.classifier_name)?,
    };
    let mut loss_fn = Loss::new(config);
    if config.classifier_class_weights.is_some() {
        // seed system 3: weights from the training split's class counts, logged and kept in the run folder
        let weights =
            super::class_weights::inverse_frequency(&prepared.train.labels, model.classes);
        tracing::info!("class weights (classifier_class_weights): {weights:?}");
        let named: BTreeMap<&str, f32> = prepared
            .classes
            .iter()
            .map(String::as_str)
            .zip(weights.iter().copied())
            .collect();
        let json = serde_json::to_string_pretty(&named)
            .map_err(|e| Error::Other(format!("class weights as JSON: {e}")))?;
        let file = run.path.join("class_weights.json");
        std::fs::write(&file, json).map_err(|e| Error::io(&file, e))?;
        let n = weights.len();
        loss_fn = loss_fn.with_class_weights(Tensor::from_vec(weights, n, device)?);
    }
    let mut optimizer = AdamW::new(
        model.store.trainable(),
        AdamWConfig::for_experiment(config, total_steps),
    )?;
    let mut rng = LoopRng {
        shuffle: ChaCha8Rng::seed_from_u64(seed.wrapping_add(1)),
        ctx: Ctx::train(seed.wrapping_add(2)),
    };
    let mut state = LoopState {
        format: checkpoint::FORMAT,
        epoch: 0,
        optimizer_steps: 0,
        best: None,
        stale: 0,
        stopped_early: false,
        records: Vec::new(),
        train_seconds: 0.0,
        train_samples: 0,
        shuffle_rng: RngState::of(&rng.shuffle),
        dropout_rng: RngState::of(rng.ctx.rng_mut()),
        model_rngs: BTreeMap::new(),
        config_sha256: config_sha256.clone(),
        data_sha256: prepared.data_sha256.clone(),
        plateau: config.plateau().map(|(factor, patience)| {
            super::scheduler::Plateau::new(config.classifier_learning_rate, factor, patience)
        }),
    };
    let resumed = match options
        .resume
        .then(|| checkpoint::read(&run.path))
        .transpose()?
        .flatten()
    {
        Some(saved) => {
            let finished = saved.state.stopped_early || saved.state.epoch >= epochs;
            if saved.has_tensors() {
                restore(&saved, &model, &mut optimizer, &mut rng, &state)?;
            } else if finished {
                // a finished run's state alone (`checkpoint::write_finished`): no epoch is left to train, and
                // the evaluation reads the best weights
                check_origin(&saved, &state)?;
            } else {
                return Err(Error::data(
                    &saved.path,
                    format!(
                        "holds a finished run's state only (epoch {} of {}, no weights): its epochs changed; \
                         start a new run",
                        saved.state.epoch, epochs
                    ),
                ));
            }
            tracing::info!(
                "resuming {} after epoch {} of {epochs} ({})",
                config.classifier_name,
                saved.state.epoch,
                saved.path.display()
            );
            state = saved.state;
            if let Some(plateau) = &state.plateau {
                optimizer.set_lr(plateau.lr);
            }
            run.rewrite_epochs(&state.records)?;
            true
        }
        None => false,
    };
    if !resumed {
        run.write_start(
            config,
            &RunInfo {
                config_file: prepared.config.path.display().to_string(),
                data: options.data.display().to_string(),
                device: options.device_name.clone(),
                seed,
                epochs,
                batch_size,
                eval_batch_size: eval_batch,
                precision: config.precision,
                max_rows: prepared.max_rows,
                glove_file: prepared
                    .glove_file
                    .as_ref()
                    .map(|p| p.display().to_string()),
                parameters: model.store.parameter_count(),
                config_sha256: config_sha256.clone(),
                data_sha256: prepared.data_sha256.clone(),
                erc_train_version: env!("CARGO_PKG_VERSION"),
            },
        )?;
        if let Some(vocab) = &prepared.vocab {
            vocab.save_words(&run.vocab())?;
        }
    }
    tracing::info!(
        run = %run.path.display(),
        parameters = model.store.parameter_count(),
        steps_per_epoch,
        total_steps,
        "training {}",
        config.classifier_name
    );
    let metric = config.classifier_metric_for_best_model;
    let first_epoch = state.epoch + 1;
    for epoch in first_epoch..=epochs {
        if state.stopped_early {
            break;
        }
        let epoch_start = Instant::now();
        model.mesm_kept_fraction(); // the epoch's count starts here (a dry run's step is not in it)
                                    // the epoch's training steps are the measured region of its peak memory
        let memory = PeakMemory::start(device);
        let order = epoch_order(config, &prepared.train.labels, &mut rng.shuffle);
        let bar = progress_bar(&options.progress, steps_per_epoch as u64, epoch, epochs);
        rng.ctx.set_train(true);
        let mut loss_sum = 0f64;
        let mut batches = 0usize;
        let mut samples = 0usize;
        let mut data_wait = 0f64;
        let mut missing = MediaCounts::default();
        let mut loader = Loader::spawn(
            prepared.train.clone(),
            prepared.prep.clone(),
            order,
            batch_size,
        );
        loop {
            let waiting = Instant::now();
            let Some(batch) = loader.next() else { break };
            data_wait += waiting.elapsed().as_secs_f64();
            let batch = batch?;
            let mut step = || -> Result<f64> {
                let out = model.forward(&batch, &mut rng.ctx)?;
                let loss = loss_fn.step(&out, &batch, model.classes)?;
                let grads = loss.backward()?;
                optimizer.step(&grads)?;
                // the step's one read from the device: the loss, for the log
                Ok(loss.to_scalar::<f32>()? as f64)
            };
            let value = step().map_err(|e| out_of_memory(e, config, batch_size, &model, device))?;
            if super::interrupt::requested() {
                return Err(Error::Interrupted(format!(
                    "{} stopped during epoch {epoch}; rerun to resume after epoch {}",
                    config.classifier_name, state.epoch
                )));
            }
            if !value.is_finite() {
                return Err(Error::Other(format!(
                    "epoch {epoch}, step {}: the loss is {value}",
                    optimizer.steps_taken()
                )));
            }
            loss_sum += value;
            batches += 1;
            samples += batch.len();
            missing.missing_visual += batch.missing.missing_visual;
            missing.missing_audio += batch.missing.missing_audio;
            let rate = samples as f64 / epoch_start.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "loss {:.4} · {rate:.1} samples/s · lr {:.2e}",
                loss_sum / batches as f64,
                optimizer.current_lr()
            ));
            bar.inc(1);
        }
        drop(loader);
        let peak_memory_bytes = memory.bytes();
        bar.finish_and_clear();
        let train_elapsed = epoch_start.elapsed().as_secs_f64();
        state.train_seconds += train_elapsed;
        state.train_samples += samples;
        let eval_start = Instant::now();
        let eval = evaluate(
            &model,
            &prepared.valid,
            &prepared.prep,
            eval_batch,
            &loss_fn,
            &prepared.classes,
        )?;
        let value = metric_value(metric, &eval);
        // HF EarlyStoppingCallback compares with the best value BEFORE this evaluation updates it.
        let improved_enough = match state.best {
            None => true,
            Some((b, _)) => {
                better(metric, value, b) && (value - b).abs() > EARLY_STOPPING_THRESHOLD
            }
        };
        state.stale = if improved_enough { 0 } else { state.stale + 1 };
        let is_best = match state.best {
            None => true,
            Some((b, _)) => better(metric, value, b),
        };
        if is_best {
            state.best = Some((value, epoch));
            model.store.save(&run.weights())?;
        }
        let record = EpochRecord {
            epoch,
            steps: optimizer.steps_taken(),
            lr: optimizer.current_lr(),
            train_loss: loss_sum / batches.max(1) as f64,
            train_samples_per_s: samples as f64 / train_elapsed.max(1e-9),
            data_wait_seconds: data_wait,
            compute_seconds: (train_elapsed - data_wait).max(0.0),
            eval_seconds: eval_start.elapsed().as_secs_f64(),
            peak_memory_bytes,
            valid_loss: eval.loss,
            valid_f1_weighted: eval.metrics.f1_weighted,
            valid_accuracy: eval.metrics.accuracy,
            best: is_best,
            seconds: epoch_start.elapsed().as_secs_f64(),
            missing_visual: missing.missing_visual,
            missing_audio: missing.missing_audio,
            feature_variance: eval
                .feature_spread
                .iter()
                .map(|(name, s)| (name.clone(), s.variance))
                .collect(),
            feature_variance_share: eval
                .feature_spread
                .iter()
                .map(|(name, s)| (name.clone(), s.share))
                .collect(),
            mesm_kept_fraction: model.mesm_kept_fraction(),
        };
        if let Some(kept) = &record.mesm_kept_fraction {
            let kept: Vec<String> = kept.iter().map(|(m, f)| format!("{m} {f:.3}")).collect();
            tracing::info!(
                "epoch {epoch}/{epochs}: MESM kept {} of the feature-map positions",
                kept.join(", ")
            );
        }
        tracing::info!(
            "epoch {epoch}/{epochs}: train loss {:.4}, valid loss {:.4}, valid weighted F1 {:.4}, accuracy {:.4}{}",
            record.train_loss,
            record.valid_loss,
            record.valid_f1_weighted,
            record.valid_accuracy,
            if is_best { " (best)" } else { "" }
        );
        diagnostics::warn_collapsed(epoch, &eval.feature_spread);
        run.append_epoch(&record)?;
        state.records.push(record);
        if let Some(plateau) = &mut state.plateau {
            optimizer.set_lr(plateau.step(eval.loss));
        }
        if let Some(patience) = config.patience() {
            if state.stale >= patience {
                tracing::info!(
                    "early stopping: {} evaluations without improvement",
                    state.stale
                );
                state.stopped_early = true;
            }
        }
        state.epoch = epoch;
        state.optimizer_steps = optimizer.steps_taken();
        save_checkpoint(&run.path, &mut state, &model, &optimizer, &mut rng)?;
        if let Some(hook) = &options.on_epoch {
            hook(epoch, epochs);
        }
    }
    let best_epoch = state.best.map(|(_, e)| e).unwrap_or(0);
    model.store.load(&run.weights())?;
    let mut splits = Vec::new();
    for (split, data) in [(Split::Dev, &prepared.valid), (Split::Test, &prepared.test)] {
        let eval = evaluate(
            &model,
            data,
            &prepared.prep,
            eval_batch,
            &loss_fn,
            &prepared.classes,
        )?;
        run.write_evaluation(split, &eval.metrics)?;
        splits.push(SplitSummary::new(split, &eval.metrics, eval.loss));
    }
    let wait: f64 = state.records.iter().map(|r| r.data_wait_seconds).sum();
    let summary = Summary {
        classifier_name: config.classifier_name.clone(),
        config: prepared.config.path.display().to_string(),
        data: options.data.display().to_string(),
        device: options.device_name.clone(),
        seed,
        epochs_planned: epochs,
        epochs_run: state.records.len(),
        best_epoch,
        stopped_early: state.stopped_early,
        batch_size,
        eval_batch_size: eval_batch,
        precision: config.precision,
        steps: optimizer.steps_taken(),
        parameters: model.store.parameter_count(),
        train_samples_per_s: state.train_samples as f64 / state.train_seconds.max(1e-9),
        data_wait_fraction: wait / state.train_seconds.max(1e-9),
        peak_memory_bytes: state
            .records
            .iter()
            .filter_map(|r| r.peak_memory_bytes)
            .max(),
        wall_seconds: wall.elapsed().as_secs_f64(),
        resumed,
        config_sha256,
        data_sha256: prepared.data_sha256.clone(),
        op_bodies: crate::ops::body_counts().since(&bodies),
        splits,
        data_manifest: data_manifest(&prepared),
    };
    run.write_summary(&summary, &state.records)?;
    Ok((run.path.clone(), summary))
}

/// An out-of-memory error of a step, told in the user's terms: the config, the batch size, what the
/// parameters and the optimiser alone need and what the device has. Other errors pass unchanged.
fn out_of_memory(e: Error, config: &Config, batch: usize, model: &Model, device: &Device) -> Error {
    let text = e.to_string();
    if !text.to_ascii_lowercase().contains("out of memory") {
        return e;
    }
    // weights, gradients and the two AdamW moments, f32
    let state = model.store.parameter_count() as u64 * 16;
    let device_memory = match memory::device_free_total(device) {
        Some((free, total)) => format!(
            "the device has {} ({} free now)",
            memory::human(total),
            memory::human(free)
        ),
        None => "the device's memory is unknown".into(),
    };
    Error::Other(format!(
        "out of memory training `{}` at batch size {batch}: its parameters, gradients and optimiser state alone \
         need {}, the activations of a batch come on top; {device_memory}. Lower `batch_size` (--batch-size) or \
         use a GPU with more memory ({text})",
        config.classifier_name,
        memory::human(state)
    ))
}

/// Writes the resume checkpoint after a complete epoch.
fn save_checkpoint(
    run: &Path,
    state: &mut LoopState,
    model: &Model,
    optimizer: &AdamW,
    rng: &mut LoopRng,
) -> Result<()> {
    state.shuffle_rng = RngState::of(&rng.shuffle);
    state.dropout_rng = RngState::of(rng.ctx.rng_mut());
    state.model_rngs = model
        .generators()
        .into_iter()
        .map(|(name, g)| {
            Ok((
                name.to_string(),
                RngState::of(&*crate::ops::dropout::lock(g)?),
            ))
        })
        .collect::<Result<_>>()?;
    let mut tensors = model
        .store
        .named_tensors()
        .into_iter()
        .map(|(name, t)| (format!("param.{name}"), t))
        .collect::<Vec<_>>();
    for (name, m, v) in optimizer.moments()? {
        tensors.push((format!("adam_m.{name}"), m));
        tensors.push((format!("adam_v.{name}"), v));
    }
    checkpoint::write(run, state, &tensors)
}

/// Refuses a checkpoint of another config or data.
fn check_origin(saved: &checkpoint::Checkpoint, fresh: &LoopState) -> Result<()> {
    let path = &saved.path;
    if saved.state.config_sha256 != fresh.config_sha256 {
        return Err(Error::data(
            path,
            "the run was started with another config (or other command-line overrides); start a new run \
             or delete the checkpoint",
        ));
    }
    if saved.state.data_sha256 != fresh.data_sha256 {
        return Err(Error::data(
            path,
            "the dataset (its CSVs or --max-rows) changed since the run started; start a new run or delete \
             the checkpoint",
        ));
    }
    Ok(())
}

/// Puts a saved checkpoint's values back into a freshly built model, optimiser and generators; refuses one of
/// another config or data.
fn restore(
    saved: &checkpoint::Checkpoint,
    model: &Model,
    optimizer: &mut AdamW,
    rng: &mut LoopRng,
    fresh: &LoopState,
) -> Result<()> {
    check_origin(saved, fresh)?;
    let path = &saved.path;
    let device = model.device();
    for (name, _) in model.store.named_tensors() {
        let value = saved.tensor(&format!("param.{name}"), device)?;
        model.store.assign(&name, &value, path)?;
    }
    let mut moments = BTreeMap::new();
    for name in saved.names("adam_m.") {
        let m = saved.tensor(&format!("adam_m.{name}"), device)?;
        let v = saved.tensor(&format!("adam_v.{name}"), device)?;
        moments.insert(name, (m, v));
    }
    optimizer.restore(saved.state.optimizer_steps, moments, path)?;
    rng.shuffle = saved.state.shuffle_rng.restore()?;
    *rng.ctx.rng_mut() = saved.state.dropout_rng.restore()?;
    for (name, g) in model.generators() {
        let state =
            saved.state.model_rngs.get(name).ok_or_else(|| {
                Error::data(path, format!("no dropout generator state for `{name}`"))
            })?;
        *crate::ops::dropout::lock(g)? = state.restore()?;
    }
    Ok(())
}

/// What the run read: each split's CSV, rows and missing media, and the GloVe vectors used.
fn data_manifest(prepared: &Prepared) -> serde_json::Value {
    let split = |data: &SplitData, media: &MediaCounts| {
        serde_json::json!({
            "csv": data.csv.display().to_string(),
            "rows": data.len(),
            "missing_visual": media.missing_visual,
            "missing_audio": media.missing_audio,
        })
    };
    serde_json::json!({
        "train": split(&prepared.train, &prepared.media[0]),
        "valid": split(&prepared.valid, &prepared.media[1]),
        "test": split(&prepared.test, &prepared.media[2]),
        "glove": prepared.vocab.as_ref().map(|v| serde_json::json!({
            "file": prepared.glove_file.as_ref().map(|p| p.display().to_string()),
            "vectors_in_file": v.file_words,
            "vectors_used": v.len(),
        })),
    })
}

fn progress_bar(progress: &Progress, len: u64, epoch: usize, epochs: usize) -> ProgressBar {
    let bar = match progress {
        Progress::Hidden => return ProgressBar::hidden(),
        Progress::Terminal => ProgressBar::new(len),
        Progress::Under(parent) => parent.add(ProgressBar::new(len)),
    };
    let style = ProgressStyle::with_template(
        "{prefix} [{elapsed_precise}] {bar:30} {pos}/{len} steps · {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(format!("epoch {epoch}/{epochs}"));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triplet_sampler_balances_classes_in_runs_of_k() {
        let config = Config::parse(
            Path::new("t.yml"),
            "classifier_classes: [anger, joy, neutral]\nmodules_text_encoder: glove\ntext_out_features: 50\nclassifier_loss_fn: dice+triplet\nbatch_size: 11\n",
        )
        .unwrap();
        // class 0: 2 rows, class 1: 1 row, class 2: 5 rows
        let labels = [2, 0, 2, 2, 1, 2, 0, 2];
        assert_eq!(epoch_len(&config, &labels), 15);
        let order = epoch_order(&config, &labels, &mut ChaCha8Rng::seed_from_u64(0));
        assert_eq!(order.len(), 15);
        // k = max(2, ceil(11/3)) = 4 consecutive items of one class
        assert!(order[..4].iter().all(|i| labels[*i] == labels[order[0]]));
        // class 2's members come in dataset order, wrapping around
        let twos: Vec<usize> = order.iter().copied().filter(|i| labels[*i] == 2).collect();
        let expected = [0, 2, 3, 5, 7, 0, 2];
        assert!(twos.len() == 4 || twos.len() == 7, "{twos:?}");
        assert_eq!(twos, expected[..twos.len()]);
        let plain = Config {
            classifier_loss_fn: "dice".to_string().try_into().unwrap(),
            ..config
        };
        let mut sorted = epoch_order(&plain, &labels, &mut ChaCha8Rng::seed_from_u64(0));
        sorted.sort();
        assert_eq!(sorted, (0..8).collect::<Vec<_>>());
    }
}
