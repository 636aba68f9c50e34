//! Experiment configuration: the reference's YAML keys (docs/reference.md §6), unchanged, plus a few keys of ours.
//!
//! The reference's 30 experiment files load as they are. Keys of ours (all optional):
//! * `epochs`, `batch_size`, `seed` — what the reference passed outside its YAML (Table 4: 10/15 epochs,
//!   batch 64/16/11/8); the command line overrides them;
//! * `text_glove_path` — the `glove.*.txt` file (`--glove` overrides; default `models/glove.6B.<dim>d.txt`);
//! * `text_context: dialogue | utterance` — the reference's whole-dialogue prompt (docs/reference.md quirk Q14) or the row's own
//!   turn only;
//! * `visual_crop: reference | full` — the reference's top-left 256x721 crop (docs/reference.md quirk Q6) or the whole mosaic;
//! * `visual_short_side` — the short side of the resized mosaic (256 in the reference; smaller for quick tests);
//! * `attention_scope: batch | sample` — the reference's attention across the batch (docs/reference.md quirk Q7) or per sample;
//! * `audio_input: reference | normalized_mono` — interleaved int16-scale samples as written (docs/reference.md Q12/Q13) or the
//!   channel mean scaled to [-1, 1];
//! * `classifier_loss_fn: ce` (and `ce+triplet`) — cross-entropy on logits, the correction of docs/reference.md quirk Q8 (`cce`);
//! * `text_model`, `audio_model`, `visual_model` — where the pretrained GPT-2, wav2vec2 and ResNet-50 come from:
//!   a local Hugging Face model folder, or a hub id with an optional `@revision` (a branch, `refs/pr/N` or a
//!   commit) found in the Hugging Face cache (defaults: the reference's `gpt2`, `facebook/wav2vec2-base`, and
//!   `timm/resnet50.tv_in1k` = torchvision's ImageNet V1 weights); weights as safetensors or PyTorch pickles,
//!   single or sharded; for ResNet-50 also a weights file (torchvision's `.pth`, `.safetensors`), or `random` for
//!   torchvision's random initialisation. The command line (`--text-model`, `--audio-model`, `--visual-model`)
//!   overrides them. With `modules_text_encoder: roberta`
//!   `text_model` names a RoBERTa (default `roberta-base`);
//! * `text_pooling: cls | mean` — RoBERTa's vector: the `<s>` token's hidden state (default) or the mean over the
//!   real tokens;
//! * `modules_fusion: tmn` — TMN's Tensor Mixer: two modality vectors, each projected to
//!   `fusion_modality_features` (none: as they come), their tensor fusion (outer product of the vectors extended
//!   by a 1), a Linear stem to `fusion_out_features` channels and `fusion_mixer_layers` MLP-Mixer blocks (token
//!   and channel MLPs of `fusion_mixer_token_features` / `fusion_mixer_channel_features` hidden units);
//! * `modules_fusion: cross_attn` — text and audio sequences (GPT-2 or RoBERTa, wav2vec2) attending to each other
//!   at width `fusion_out_features` (heads by `fusion_attention_heads_degree`, the reference's rule);
//! * `sentiment_loss_weight` — a second head for MELD's 3-class sentiment, its cross-entropy added with this
//!   weight (the dataset's `sentiment` column);
//! * `classifier_label_smoothing` (ε) and `classifier_peak_labels` — soft targets `(1 − ε)·y + ε/K`, then TMN's
//!   Peaking Labels (`ce`/`cce` only);
//! * `modules_fusion: lstm` with `modules_audio_encoder: vocal_net` (the frames + voice seed system, README
//!   "Frames, voice and an LSTM"): the ResNet on each of the mosaic's `visual_frames` frames (default 5; needs
//!   `visual_crop: full`), the vocal net (a 1-D CNN, `audio_out_features` wide) on as many equal windows of the
//!   waveform, the two concatenated per time step, an LSTM of `fusion_out_features` units over the steps;
//! * `visual_pretrained: false` — the ResNet starts from torchvision's random initialisation whatever
//!   `visual_model` names: a checkpoint there then gives only the network's widths, `random` the real ResNet-50.
//!   Unset, the ResNet is pretrained unless `visual_model: random`; `true` with `visual_model: random` is an error.
//! * `modules_visual_encoder: resnet50_frames` (needs `visual_crop: full`) — ResNet-50 on each of the mosaic's 5
//!   frames, averaged (MESM's dense FE2E CNN); with `visual_sparse_nucleus_p` (p ∈ (0, 1]) MESM's text-guided
//!   sparse attention after ResNet stage `visual_sparse_stage` (default 2) at hidden width `visual_sparse_features`
//!   (k, default 64), its query the text (and audio) vectors;
//! * `modules_audio_encoder: mel_cnn` (needs `audio_input: normalized_mono`) — MESM's audio CNN over a log-mel
//!   spectrogram; with `audio_sparse_nucleus_p` the same sparse attention, guided by the text vector, after its
//!   block `audio_sparse_stage` (default 2).
//!
//! Unknown keys, wrong types and missing required keys are errors that name the file, the key and what is
//! allowed.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Seed system 3's keys (faces, landmarks, class weights, the plateau scheduler): their checks and accessors.
mod faces;
pub use faces::{DEFAULT_FACE_SIZE, DEFAULT_PLATEAU_FACTOR, DEFAULT_PLATEAU_PATIENCE};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextEncoder {
    None,
    Glove,
    Gpt2,
    Roberta,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisualEncoder {
    None,
    Resnet50,
    /// ResNet-50 on each of the mosaic's 5 frames, the frames' vectors averaged (MESM's visual CNN; FE2E without
    /// `visual_sparse_nucleus_p`).
    Resnet50Frames,
    /// Seed system 3's NN1: a small CNN on each frame's grey face crop (`visual_crop: faces`).
    FaceCnn,
    /// Seed system 3's NN2: an MLP on each frame's 5 RetinaFace landmarks, normalised to the face box.
    FaceLandmarks,
    /// Both, their feature vectors concatenated (the seed's feature-level fusion).
    FaceCnnLandmarks,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudioEncoder {
    None,
    Waveform,
    Wav2vec2,
    /// The frames + voice seed system's 1-D CNN on each frame's window of the waveform (needs `modules_fusion: lstm`).
    VocalNet,
    /// MESM's audio CNN over the log-mel spectrogram (sparse attention with `audio_sparse_nucleus_p`).
    MelCnn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fusion {
    Concat,
    MultiHeadedAttn,
    /// TMN's Tensor Mixer (tensor fusion + MLP-Mixer) of two modality vectors.
    Tmn,
    /// Text and audio sequences attending to each other.
    CrossAttn,
    /// Per-frame visual and audio vectors concatenated per time step, an LSTM over the steps.
    Lstm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BestMetric {
    F1Weighted,
    Acc,
    Loss,
}

/// How the mosaic becomes the image tensor (docs/reference.md §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisualCrop {
    /// Top-left crop of height S and width L of the S-wide resized mosaic, zero padded (docs/reference.md quirk Q6).
    Reference,
    /// The whole resized mosaic.
    Full,
    /// Each frame's face as `faces.csv` locates it (`meld-etl extract --faces`): a grey square crop of
    /// `visual_face_size` pixels and the 5 landmarks; for the face encoders only.
    Faces,
}

/// `classifier_class_weights`: per-class weights of the cross-entropy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassWeights {
    /// The largest training-class count divided by each class's count (seed system 3).
    InverseFrequency,
}

/// `classifier_lr_scheduler`: how the learning rate moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrScheduler {
    /// Linear warm-up over `classifier_warmup_steps`, then linear decay to 0 (the reference; the default).
    Linear,
    /// Constant, cut by `classifier_plateau_factor` when the validation loss has not improved for
    /// `classifier_plateau_patience` epochs (PyTorch `ReduceLROnPlateau`, mode min, threshold 1e-4 rel).
    Plateau,
}

/// What attention layers attend over (docs/reference.md quirk Q7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionScope {
    /// The (B, D) batch is one sequence of length B: samples attend to each other (the reference).
    Batch,
    /// Each sample is its own sequence of length 1.
    Sample,
}

/// What the text encoder reads (docs/reference.md §2.2, quirk Q14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextContext {
    /// The dialogue prompt: every earlier turn of the dialogue, then the row's own (the reference).
    Dialogue,
    /// The row's own turn only.
    Utterance,
}

/// How the WAV becomes the audio vector (docs/reference.md §2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudioInput {
    /// All samples as written, channels interleaved, int16 scale (docs/reference.md quirks Q12/Q13).
    Reference,
    /// Mean over channels, scaled to [-1, 1].
    NormalizedMono,
}

/// The arithmetic of the GPU's matrix products (`precision`, `--precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// IEEE fp32 throughout: the reference's numbers.
    #[default]
    Fp32,
    /// fp32 storage, TF32 tensor-core matrix products (10-bit mantissa inputs, fp32 accumulation): faster on
    /// Ampere and newer GPUs; no effect on the CPU.
    Tf32,
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "fp32" => Ok(Precision::Fp32),
            "tf32" => Ok(Precision::Tf32),
            _ => Err(format!("precision `{s}`: expected fp32 or tf32")),
        }
    }
}

/// The classifier part of the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassifierLoss {
    /// Cross-entropy applied to the softmax probabilities (double softmax, docs/reference.md quirk Q8) — the reference's `cce`.
    Cce,
    /// Cross-entropy on the logits (the corrected option).
    Ce,
    Dice,
    Focal,
}

/// `classifier_loss_fn`: a classifier loss, optionally `+triplet`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LossFn {
    pub classifier: ClassifierLoss,
    pub triplet: bool,
}

impl LossFn {
    pub const ALLOWED: &'static str =
        "cce, ce, dice, focal, cce+triplet, ce+triplet, dice+triplet, focal+triplet";
}

impl TryFrom<String> for LossFn {
    type Error = String;

    fn try_from(value: String) -> std::result::Result<Self, String> {
        let (base, triplet) = match value.strip_suffix("+triplet") {
            Some(base) => (base, true),
            None => (value.as_str(), false),
        };
        let classifier = match base {
            "cce" => ClassifierLoss::Cce,
            "ce" => ClassifierLoss::Ce,
            "dice" => ClassifierLoss::Dice,
            "focal" => ClassifierLoss::Focal,
            _ => {
                return Err(format!(
                    "classifier_loss_fn: unknown loss `{value}`, expected one of {}",
                    LossFn::ALLOWED
                ))
            }
        };
        Ok(LossFn {
            classifier,
            triplet,
        })
    }
}

impl From<LossFn> for String {
    fn from(loss: LossFn) -> String {
        loss.to_string()
    }
}

impl fmt::Display for LossFn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let base = match self.classifier {
            ClassifierLoss::Cce => "cce",
            ClassifierLoss::Ce => "ce",
            ClassifierLoss::Dice => "dice",
            ClassifierLoss::Focal => "focal",
        };
        write!(f, "{base}{}", if self.triplet { "+triplet" } else { "" })
    }
}

/// One layer of the feed-forward head (docs/reference.md §3.8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedForwardLayer {
    #[serde(default)]
    pub out_features: Option<i64>,
    #[serde(default)]
    pub dropout: Option<f64>,
}

fn default_name() -> String {
    "untagged".into()
}
fn default_lr() -> f64 {
    5e-5
}
fn default_wd() -> f64 {
    0.1
}
fn default_warmup() -> usize {
    500
}
fn default_epsilon() -> f64 {
    1e-8
}
fn default_loss() -> LossFn {
    LossFn {
        classifier: ClassifierLoss::Cce,
        triplet: false,
    }
}
fn default_true() -> bool {
    true
}
fn default_metric() -> BestMetric {
    BestMetric::Loss
}
fn default_text() -> TextEncoder {
    TextEncoder::None
}
fn default_visual() -> VisualEncoder {
    VisualEncoder::None
}
fn default_audio() -> AudioEncoder {
    AudioEncoder::None
}
fn default_fusion() -> Fusion {
    Fusion::Concat
}
fn default_crop() -> VisualCrop {
    VisualCrop::Reference
}
fn default_scope() -> AttentionScope {
    AttentionScope::Batch
}
fn default_text_context() -> TextContext {
    TextContext::Dialogue
}
fn default_audio_input() -> AudioInput {
    AudioInput::Reference
}

/// An experiment (ERCConfig of the reference, docs/reference.md §6, plus our keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub classifier_classes: Vec<String>,
    #[serde(default = "default_name")]
    pub classifier_name: String,
    #[serde(default = "default_lr")]
    pub classifier_learning_rate: f64,
    #[serde(default = "default_wd")]
    pub classifier_weight_decay: f64,
    #[serde(default = "default_warmup")]
    pub classifier_warmup_steps: usize,
    #[serde(default = "default_epsilon")]
    pub classifier_epsilon: f64,
    #[serde(default = "default_loss")]
    pub classifier_loss_fn: LossFn,
    #[serde(default)]
    pub classifier_early_stopping_patience: Option<i64>,
    #[serde(default = "default_metric")]
    pub classifier_metric_for_best_model: BestMetric,

    #[serde(default)]
    pub losses_focal_alpha: Option<Vec<f64>>,
    #[serde(default)]
    pub losses_focal_gamma: Option<f64>,
    #[serde(default)]
    pub losses_focal_reduction: Option<String>,

    #[serde(default = "default_text")]
    pub modules_text_encoder: TextEncoder,
    #[serde(default = "default_visual")]
    pub modules_visual_encoder: VisualEncoder,
    #[serde(default = "default_audio")]
    pub modules_audio_encoder: AudioEncoder,
    #[serde(default = "default_fusion")]
    pub modules_fusion: Fusion,

    #[serde(default)]
    pub text_in_features: Option<i64>,
    #[serde(default)]
    pub text_out_features: Option<i64>,
    #[serde(default)]
    pub text_limit_to_n_last_tokens: Option<i64>,
    #[serde(default = "default_true")]
    pub text_l2norm: bool,

    #[serde(default)]
    pub audio_in_features: Option<i64>,
    #[serde(default)]
    pub audio_out_features: Option<i64>,
    #[serde(default)]
    pub audio_waveform_attention_heads_degree: Option<i64>,
    #[serde(default = "default_true")]
    pub audio_l2norm: bool,

    #[serde(default)]
    pub visual_preprocess_faceonly: Option<bool>,
    #[serde(default)]
    pub visual_preprocess_retinaface_weights_path: Option<String>,
    #[serde(default)]
    pub visual_in_features: Option<Vec<i64>>,
    #[serde(default)]
    pub visual_out_features: Option<i64>,
    #[serde(default = "default_true")]
    pub visual_l2norm: bool,

    #[serde(default)]
    pub fusion_attention_heads_degree: Option<i64>,
    #[serde(default)]
    pub fusion_out_features: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fusion_modality_features: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fusion_mixer_layers: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fusion_mixer_token_features: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fusion_mixer_channel_features: Option<i64>,

    #[serde(default)]
    pub feedforward_l2norm: bool,
    #[serde(default)]
    pub feedforward_layers: Option<Vec<FeedForwardLayer>>,

    // ---- keys of ours ----
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The batch size of evaluations (default: `batch_size`); it matters with cross-batch attention, and the
    /// report evaluated row 16 at 8 after training it at 11.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_batch_size: Option<usize>,
    #[serde(default)]
    pub precision: Precision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_glove_path: Option<String>,
    #[serde(default = "default_text_context")]
    pub text_context: TextContext,
    #[serde(default = "default_crop")]
    pub visual_crop: VisualCrop,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visual_short_side: Option<usize>,
    #[serde(default = "default_scope")]
    pub attention_scope: AttentionScope,
    #[serde(default = "default_audio_input")]
    pub audio_input: AudioInput,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visual_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_pooling: Option<crate::encoders::roberta::Pooling>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentiment_loss_weight: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_label_smoothing: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_peak_labels: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visual_frames: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visual_pretrained: Option<bool>,
    // MESM (seed system 2): the text-guided sparse attention of `resnet50_frames`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visual_sparse_nucleus_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visual_sparse_stage: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visual_sparse_features: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_sparse_nucleus_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio_sparse_stage: Option<usize>,
    // ---- seed system 3 (faces + landmarks) and its trainer options ----
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_class_weights: Option<ClassWeights>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_lr_scheduler: Option<LrScheduler>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_plateau_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_plateau_patience: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visual_face_size: Option<usize>,
}

/// Where the pretrained backbones come from, when the command line says (`--text-model`, `--audio-model`,
/// `--visual-model`): each set one wins over the config's key.
#[derive(Debug, Clone, Default)]
pub struct ModelSources {
    pub text: Option<String>,
    pub audio: Option<String>,
    pub visual: Option<String>,
}

impl ModelSources {
    pub fn apply(&self, config: &mut Config) {
        if self.text.is_some() {
            config.text_model = self.text.clone();
        }
        if self.audio.is_some() {
            config.audio_model = self.audio.clone();
        }
        if self.visual.is_some() {
            config.visual_model = self.visual.clone();
        }
    }
}

/// Defaults for our keys when neither the config nor the command line sets them.
pub const DEFAULT_EPOCHS: usize = 10;
pub const DEFAULT_BATCH_SIZE: usize = 64;
pub const DEFAULT_SEED: u64 = 42;
/// The Mixer's depth and hidden widths when the config does not say (`fusion_mixer_*`).
pub const DEFAULT_MIXER_LAYERS: usize = 2;
pub const DEFAULT_MIXER_TOKEN_FEATURES: usize = 256;
pub const DEFAULT_MIXER_CHANNEL_FEATURES: usize = 256;
/// The frames of a mosaic, the LSTM fusion's time steps, when the config does not say (`visual_frames`).
pub const DEFAULT_VISUAL_FRAMES: usize = 5;
/// MESM's sparse attention: after ResNet stage 2 (stride 8), hidden width k = 64, when the config does not say.
pub const DEFAULT_SPARSE_STAGE: usize = 2;
pub const DEFAULT_SPARSE_FEATURES: usize = 64;
/// `visual_model` value for a randomly initialised ResNet-50.
pub const RANDOM_WEIGHTS: &str = "random";
/// The reference's resize target (torchvision `Resize(256)`).
pub const REFERENCE_SHORT_SIDE: usize = 256;

/// A config and the file it came from (errors name the file).
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub path: PathBuf,
    pub config: Config,
}

impl Config {
    /// Reads and validates a YAML config file.
    pub fn load(path: &Path) -> Result<LoadedConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let config = Config::parse(path, &text)?;
        Ok(LoadedConfig {
            path: path.to_path_buf(),
            config,
        })
    }

    /// Parses and validates YAML text; `path` is only used in error messages.
    pub fn parse(path: &Path, text: &str) -> Result<Config> {
        let config: Config = yaml_serde::from_str(text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn invalid(path: &Path, key: &str, message: impl fmt::Display) -> Error {
        Error::Config {
            path: path.to_path_buf(),
            message: format!("{key}: {message}"),
        }
    }

    /// Checks what serde cannot: values that must agree with each other.
    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, message: String| Err(Config::invalid(path, key, message));
        if self.classifier_classes.is_empty() {
            return bad("classifier_classes", "expected at least one class".into());
        }
        let mut sorted = self.classifier_classes.clone();
        sorted.sort();
        sorted.dedup();
        if sorted.len() != self.classifier_classes.len() {
            return bad("classifier_classes", "a class is listed twice".into());
        }
        for class in &self.classifier_classes {
            if class.parse::<meld_shared::Emotion>().is_err() {
                return bad(
                    "classifier_classes",
                    format!(
                        "unknown class `{class}`, expected MELD's emotions: {}",
                        meld_shared::Emotion::ALL.map(|e| e.name()).join(", ")
                    ),
                );
            }
        }
        // written so that NaN is rejected too
        if self.classifier_learning_rate.is_nan() || self.classifier_learning_rate <= 0.0 {
            return bad(
                "classifier_learning_rate",
                format!(
                    "expected a positive number, found {}",
                    self.classifier_learning_rate
                ),
            );
        }
        if self.classifier_weight_decay < 0.0 {
            return bad(
                "classifier_weight_decay",
                "expected a non-negative number".into(),
            );
        }
        if self.classifier_loss_fn.classifier == ClassifierLoss::Focal {
            match &self.losses_focal_alpha {
                None => {
                    return bad(
                        "losses_focal_alpha",
                        format!(
                            "required by `classifier_loss_fn: {}`: one value per class ({})",
                            self.classifier_loss_fn,
                            self.classifier_classes.len()
                        ),
                    )
                }
                Some(alpha) if alpha.len() != self.classifier_classes.len() => {
                    return bad(
                        "losses_focal_alpha",
                        format!(
                            "expected one value per class ({}), found {}",
                            self.classifier_classes.len(),
                            alpha.len()
                        ),
                    )
                }
                _ => {}
            }
        }
        if self.modules_text_encoder == TextEncoder::None
            && self.modules_visual_encoder == VisualEncoder::None
            && self.modules_audio_encoder == AudioEncoder::None
        {
            return bad(
                "modules_text_encoder",
                "every encoder is `none`: at least one modality is needed".into(),
            );
        }
        if self.modules_text_encoder == TextEncoder::Glove {
            match self.text_out_features {
                Some(d) if d > 0 => {}
                other => {
                    return bad(
                        "text_out_features",
                        format!("`modules_text_encoder: glove` needs the GloVe dimension (e.g. 50), found {other:?}"),
                    )
                }
            }
        }
        if self.modules_audio_encoder != AudioEncoder::None {
            match self.audio_in_features {
                Some(n) if n > 0 => {}
                other => {
                    return bad(
                        "audio_in_features",
                        format!("an audio encoder needs the number of samples kept (e.g. 150000), found {other:?}"),
                    )
                }
            }
        }
        if self.modules_audio_encoder == AudioEncoder::Waveform {
            match self.audio_out_features {
                Some(n) if n > 0 => {}
                other => {
                    let message =
                        format!("a waveform encoder needs a positive width, found {other:?}");
                    return bad("audio_out_features", message);
                }
            }
        }
        if let Some(degree) = self.audio_waveform_attention_heads_degree {
            if degree < 1 {
                return bad(
                    "audio_waveform_attention_heads_degree",
                    format!("expected a positive integer or null, found {degree}"),
                );
            }
        }
        if self.modules_fusion == Fusion::MultiHeadedAttn {
            match self.fusion_out_features {
                Some(n) if n > 0 => {}
                other => {
                    return bad(
                        "fusion_out_features",
                        format!("`modules_fusion: multi_headed_attn` needs a positive width, found {other:?}"),
                    )
                }
            }
            match self.fusion_attention_heads_degree {
                Some(n) if n > 0 => {}
                other => {
                    return bad(
                        "fusion_attention_heads_degree",
                        format!("`modules_fusion: multi_headed_attn` needs a positive degree, found {other:?}"),
                    )
                }
            }
        }
        for (i, layer) in self.feedforward_layers.iter().flatten().enumerate() {
            if let Some(n) = layer.out_features {
                if n <= 0 {
                    return bad(
                        &format!("feedforward_layers[{i}].out_features"),
                        format!("expected a positive integer or null, found {n}"),
                    );
                }
            }
            if let Some(p) = layer.dropout {
                if !(0.0..1.0).contains(&p) {
                    return bad(
                        &format!("feedforward_layers[{i}].dropout"),
                        format!("expected a probability in [0, 1), found {p}"),
                    );
                }
            }
        }
        if self.epochs == Some(0) {
            return bad("epochs", "expected a positive integer".into());
        }
        if self.batch_size == Some(0) {
            return bad("batch_size", "expected a positive integer".into());
        }
        self.validate_seeds(path)?;
        self.validate_frames_lstm(path)?;
        self.validate_mesm(path)?;
        if let Some(side) = self.visual_short_side {
            if side < 32 {
                return bad(
                    "visual_short_side",
                    format!(
                        "expected at least 32 pixels (ResNet-50 downsamples 32x), found {side}"
                    ),
                );
            }
        }
        Ok(())
    }

    /// MESM's keys: the sparse attention of `resnet50_frames`, guided by the text (and audio) vectors.
    fn validate_mesm(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, message: String| Err(Config::invalid(path, key, message));
        let mel = self.modules_audio_encoder == AudioEncoder::MelCnn;
        if mel && self.audio_input != AudioInput::NormalizedMono {
            return bad(
                "audio_input",
                "`mel_cnn` computes its spectrogram from 16 kHz mono samples: set `audio_input: normalized_mono`"
                    .into(),
            );
        }
        if self.audio_sparse_nucleus_p.is_some() || self.audio_sparse_stage.is_some() {
            if !mel {
                return bad(
                    "audio_sparse_nucleus_p",
                    "MESM's audio sparse attention applies to `modules_audio_encoder: mel_cnn` only".into(),
                );
            }
            match self.audio_sparse_nucleus_p {
                Some(p) if p > 0.0 && p <= 1.0 => {}
                other => {
                    return bad(
                        "audio_sparse_nucleus_p",
                        format!("the nucleus mass p must be in (0, 1], found {other:?}"),
                    )
                }
            }
            if !(1..=4).contains(&self.audio_sparse_stage()) {
                return bad(
                    "audio_sparse_stage",
                    format!(
                        "a block of the audio CNN, 1 to 4, found {}",
                        self.audio_sparse_stage()
                    ),
                );
            }
            if !self.uses_text() {
                return bad(
                    "audio_sparse_nucleus_p",
                    "the audio attention's query is the text vector: the config has no text encoder".into(),
                );
            }
        }
        let frames = self.modules_visual_encoder == VisualEncoder::Resnet50Frames;
        if frames && self.visual_crop != VisualCrop::Full {
            return bad(
                "visual_crop",
                "`resnet50_frames` splits the whole mosaic into its 5 frames: set `visual_crop: full`".into(),
            );
        }
        let sparse = self.visual_sparse_nucleus_p.is_some()
            || self.visual_sparse_stage.is_some()
            || self.visual_sparse_features.is_some();
        if !sparse {
            return Ok(());
        }
        let key = match (
            self.visual_sparse_nucleus_p,
            self.visual_sparse_stage,
            self.visual_sparse_features,
        ) {
            (Some(_), _, _) => "visual_sparse_nucleus_p",
            (_, Some(_), _) => "visual_sparse_stage",
            _ => "visual_sparse_features",
        };
        if !frames {
            return bad(
                key,
                "MESM's sparse attention applies to `modules_visual_encoder: resnet50_frames` only"
                    .into(),
            );
        }
        match self.visual_sparse_nucleus_p {
            Some(p) if p > 0.0 && p <= 1.0 => {}
            other => {
                return bad(
                    "visual_sparse_nucleus_p",
                    format!("the nucleus mass p must be in (0, 1] (1: every position kept), found {other:?}"),
                )
            }
        }
        if !(1..=4).contains(&self.visual_sparse_stage()) {
            return bad(
                "visual_sparse_stage",
                format!(
                    "a ResNet stage, 1 to 4, found {}",
                    self.visual_sparse_stage()
                ),
            );
        }
        if self.visual_sparse_features() == 0 {
            return bad(
                "visual_sparse_features",
                "expected a positive integer".into(),
            );
        }
        if !self.uses_text() && !self.uses_audio() {
            return bad(
                "visual_sparse_nucleus_p",
                "the sparse attention's query is the text (and audio) vector: the config has neither".into(),
            );
        }
        if matches!(self.modules_fusion, Fusion::CrossAttn) {
            return bad(
                "modules_fusion",
                "`cross_attn` reads sequences, MESM's query is the vectors".into(),
            );
        }
        Ok(())
    }

    /// The ResNet stage after which MESM's sparse attention runs (`visual_sparse_stage`, default 2).
    pub fn visual_sparse_stage(&self) -> usize {
        self.visual_sparse_stage.unwrap_or(DEFAULT_SPARSE_STAGE)
    }

    /// The audio CNN block after which MESM's audio attention runs (`audio_sparse_stage`, default 2).
    pub fn audio_sparse_stage(&self) -> usize {
        self.audio_sparse_stage.unwrap_or(DEFAULT_SPARSE_STAGE)
    }

    /// The sparse attention's hidden width k (`visual_sparse_features`, default 64; the audio's too).
    pub fn visual_sparse_features(&self) -> usize {
        self.visual_sparse_features
            .unwrap_or(DEFAULT_SPARSE_FEATURES)
    }

    /// The keys of the seed systems (TMN's fusion, RoBERTa's pooling, the sentiment task, soft targets).
    fn validate_seeds(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, message: String| Err(Config::invalid(path, key, message));
        let positive = |key: &str, value: Option<i64>| -> Result<()> {
            match value {
                Some(n) if n <= 0 => bad(
                    key,
                    format!("expected a positive integer or null, found {n}"),
                ),
                _ => Ok(()),
            }
        };
        if self.modules_text_encoder == TextEncoder::Roberta {
            if let Some(n) = self.text_limit_to_n_last_tokens.filter(|n| *n > 0) {
                return bad(
                    "text_limit_to_n_last_tokens",
                    format!(
                        "RoBERTa keeps each text's last tokens itself (and needs its first, `<s>`); remove the key \
                         (found {n})"
                    ),
                );
            }
        } else if self.text_pooling.is_some() {
            return bad(
                "text_pooling",
                "applies to `modules_text_encoder: roberta` only".into(),
            );
        }
        let encoders = [self.uses_text(), self.uses_visual(), self.uses_audio()]
            .iter()
            .filter(|u| **u)
            .count();
        let mixer_keys = [
            ("fusion_modality_features", self.fusion_modality_features),
            ("fusion_mixer_layers", self.fusion_mixer_layers),
            (
                "fusion_mixer_token_features",
                self.fusion_mixer_token_features,
            ),
            (
                "fusion_mixer_channel_features",
                self.fusion_mixer_channel_features,
            ),
        ];
        match self.modules_fusion {
            Fusion::Tmn => {
                if encoders != 2 {
                    return bad(
                        "modules_fusion",
                        format!("`tmn` fuses exactly two modalities (the outer product of two vectors), found {encoders}"),
                    );
                }
                for (key, value) in mixer_keys {
                    positive(key, value)?;
                }
            }
            Fusion::CrossAttn => {
                let sequences = matches!(
                    self.modules_text_encoder,
                    TextEncoder::Gpt2 | TextEncoder::Roberta
                ) && self.modules_audio_encoder == AudioEncoder::Wav2vec2
                    && !self.uses_visual();
                if !sequences {
                    return bad(
                        "modules_fusion",
                        "`cross_attn` attends between the token and frame sequences of a text encoder (gpt2, \
                         roberta) and `wav2vec2`, and nothing else"
                            .into(),
                    );
                }
                if let Some(n) = self.audio_out_features.filter(|n| *n > 0) {
                    return bad(
                        "audio_out_features",
                        format!(
                            "`cross_attn` reads wav2vec2's frames, not its pooled and projected vector: remove the \
                             key (found {n})"
                        ),
                    );
                }
            }
            _ => {
                if let Some((key, _)) = mixer_keys.iter().find(|(_, v)| v.is_some()) {
                    return bad(key, "applies to `modules_fusion: tmn` only".into());
                }
            }
        }
        if matches!(self.modules_fusion, Fusion::Tmn | Fusion::CrossAttn) {
            let fusion = if self.modules_fusion == Fusion::Tmn {
                "tmn"
            } else {
                "cross_attn"
            };
            match self.fusion_out_features {
                Some(n) if n > 0 => {}
                other => {
                    return bad(
                        "fusion_out_features",
                        format!(
                            "`modules_fusion: {fusion}` needs a positive width, found {other:?}"
                        ),
                    )
                }
            }
        }
        if self.modules_fusion == Fusion::CrossAttn {
            match self.fusion_attention_heads_degree {
                Some(n) if n > 0 => {}
                other => {
                    return bad(
                        "fusion_attention_heads_degree",
                        format!(
                            "`modules_fusion: cross_attn` needs a positive degree, found {other:?}"
                        ),
                    )
                }
            }
        }
        if let Some(w) = self.sentiment_loss_weight {
            // written so that NaN is rejected too
            if !(w.is_finite() && w >= 0.0) {
                return bad(
                    "sentiment_loss_weight",
                    format!("expected a non-negative number or null, found {w}"),
                );
            }
        }
        if let Some(eps) = self.classifier_label_smoothing {
            if !(0.0..1.0).contains(&eps) {
                return bad(
                    "classifier_label_smoothing",
                    format!("expected ε in [0, 1), found {eps}"),
                );
            }
        }
        let soft = self.classifier_label_smoothing.is_some() || self.peak_labels();
        if soft
            && !matches!(
                self.classifier_loss_fn.classifier,
                ClassifierLoss::Ce | ClassifierLoss::Cce
            )
        {
            let key = if self.peak_labels() {
                "classifier_peak_labels"
            } else {
                "classifier_label_smoothing"
            };
            return bad(
                key,
                format!(
                    "soft targets need a cross-entropy loss (`ce` or `cce`), not `{}`",
                    self.classifier_loss_fn
                ),
            );
        }
        self.validate_faces(path)?;
        Ok(())
    }

    /// Where the pretrained text model comes from (`text_model`; default the reference's `gpt2`, or
    /// `roberta-base` for `modules_text_encoder: roberta`).
    pub fn text_model(&self) -> &str {
        let default = match self.modules_text_encoder {
            TextEncoder::Roberta => crate::encoders::hub::Backbone::Roberta,
            _ => crate::encoders::hub::Backbone::Gpt2,
        };
        self.text_model.as_deref().unwrap_or(default.default_repo())
    }

    /// RoBERTa's pooling (`text_pooling`, default `cls`).
    pub fn text_pooling(&self) -> crate::encoders::roberta::Pooling {
        self.text_pooling
            .unwrap_or(crate::encoders::roberta::Pooling::Cls)
    }

    /// Whether the targets go through Peaking Labels (`classifier_peak_labels`).
    pub fn peak_labels(&self) -> bool {
        self.classifier_peak_labels == Some(true)
    }

    /// The weight of the sentiment head's loss; `None` without a sentiment head.
    pub fn sentiment_weight(&self) -> Option<f64> {
        self.sentiment_loss_weight
    }

    /// Where the pretrained wav2vec2 comes from (`audio_model`, default `facebook/wav2vec2-base`).
    pub fn audio_model(&self) -> &str {
        self.audio_model
            .as_deref()
            .unwrap_or(crate::encoders::hub::Backbone::Wav2vec2.default_repo())
    }

    /// Where the ResNet-50 weights come from (`visual_model`, default torchvision's ImageNet V1 weights);
    /// `None` for a random initialisation.
    pub fn visual_model(&self) -> Option<&str> {
        match self.visual_model.as_deref() {
            Some(RANDOM_WEIGHTS) => None,
            Some(spec) => Some(spec),
            None => Some(crate::encoders::hub::Backbone::Resnet50.default_repo()),
        }
    }

    /// The mosaic's frames, the LSTM fusion's time steps (`visual_frames`, default 5).
    pub fn visual_frames(&self) -> usize {
        self.visual_frames.unwrap_or(DEFAULT_VISUAL_FRAMES)
    }

    /// Whether the ResNet starts from `visual_model`'s weights (`visual_pretrained`; unset: unless `random`).
    pub fn visual_pretrained(&self) -> bool {
        self.visual_pretrained
            .unwrap_or(self.visual_model.as_deref() != Some(RANDOM_WEIGHTS))
    }

    /// The frames + voice + LSTM keys (`modules_fusion: lstm`, `vocal_net`, `visual_frames`,
    /// `visual_pretrained`): each where it means something, and not contradicting another.
    fn validate_frames_lstm(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, message: String| Err(Config::invalid(path, key, message));
        if self.visual_pretrained == Some(true)
            && self.visual_model.as_deref() == Some(RANDOM_WEIGHTS)
        {
            return bad(
                "visual_pretrained",
                "`true` contradicts `visual_model: random` (for a ResNet trained from scratch write \
                 `visual_pretrained: false`)"
                    .into(),
            );
        }
        let lstm = self.modules_fusion == Fusion::Lstm;
        if self.modules_audio_encoder == AudioEncoder::VocalNet && !lstm {
            return bad(
                "modules_audio_encoder",
                "`vocal_net` gives one vector per frame: it needs `modules_fusion: lstm`".into(),
            );
        }
        if self.visual_frames.is_some() && !lstm {
            return bad(
                "visual_frames",
                "applies to `modules_fusion: lstm` only".into(),
            );
        }
        if !lstm {
            return Ok(());
        }
        if self.visual_frames == Some(0) {
            return bad("visual_frames", "expected at least 1 frame".into());
        }
        if self.modules_text_encoder != TextEncoder::None
            || !matches!(
                self.modules_audio_encoder,
                AudioEncoder::None | AudioEncoder::VocalNet
            )
        {
            return bad(
                "modules_fusion",
                "`lstm` runs over time steps: it takes the ResNet's frames and the vocal net's windows \
                 (`modules_text_encoder: none`, `modules_audio_encoder: vocal_net` or none)"
                    .into(),
            );
        }
        if self.modules_visual_encoder != VisualEncoder::None
            && self.visual_crop != VisualCrop::Full
        {
            return bad(
                "visual_crop",
                "`modules_fusion: lstm` cuts the mosaic into its frames: it needs `visual_crop: full` (the \
                 reference's crop keeps only the first frames)"
                    .into(),
            );
        }
        if self.modules_audio_encoder == AudioEncoder::VocalNet
            && !matches!(self.audio_out_features, Some(a) if a > 0)
        {
            return bad(
                "audio_out_features",
                format!(
                    "`vocal_net` needs a positive width, found {:?}",
                    self.audio_out_features
                ),
            );
        }
        match self.fusion_out_features {
            Some(n) if n > 0 => Ok(()),
            other => bad(
                "fusion_out_features",
                format!("`modules_fusion: lstm` needs the LSTM's width, found {other:?}"),
            ),
        }
    }

    /// Whether the visual encoder reads the face-only images (`visual_preprocess_faceonly`).
    pub fn faces_only(&self) -> bool {
        self.visual_preprocess_faceonly == Some(true)
    }

    /// Class names in the order of the class indices: alphabetical, as the reference encodes them (docs/reference.md §2.6).
    pub fn classes(&self) -> Vec<String> {
        let mut classes = self.classifier_classes.clone();
        classes.sort();
        classes
    }

    pub fn epochs(&self) -> usize {
        self.epochs.unwrap_or(DEFAULT_EPOCHS)
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size.unwrap_or(DEFAULT_BATCH_SIZE)
    }

    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or(DEFAULT_SEED)
    }

    pub fn eval_batch_size(&self) -> usize {
        self.eval_batch_size.unwrap_or_else(|| self.batch_size())
    }

    pub fn short_side(&self) -> usize {
        self.visual_short_side.unwrap_or(REFERENCE_SHORT_SIDE)
    }

    /// Early-stopping patience; `None` (null or ≤ 0 in the config) disables early stopping.
    pub fn patience(&self) -> Option<usize> {
        self.classifier_early_stopping_patience
            .filter(|p| *p > 0)
            .map(|p| p as usize)
    }

    pub fn focal_gamma(&self) -> f64 {
        self.losses_focal_gamma.unwrap_or(2.0)
    }

    /// The reference sums unless the reduction is (null or) "mean".
    pub fn focal_mean(&self) -> bool {
        matches!(self.losses_focal_reduction.as_deref(), None | Some("mean"))
    }

    pub fn uses_text(&self) -> bool {
        self.modules_text_encoder != TextEncoder::None
    }

    pub fn uses_visual(&self) -> bool {
        self.modules_visual_encoder != VisualEncoder::None
    }

    /// Whether the visual encoder is a ResNet-50 (whole mosaic or per frame), the one that loads `visual_model`;
    /// the face encoders are small networks trained from scratch.
    pub fn uses_resnet(&self) -> bool {
        matches!(
            self.modules_visual_encoder,
            VisualEncoder::Resnet50 | VisualEncoder::Resnet50Frames
        )
    }

    pub fn uses_audio(&self) -> bool {
        self.modules_audio_encoder != AudioEncoder::None
    }

    /// Number of audio samples kept per item (`audio_in_features`).
    pub fn audio_samples(&self) -> usize {
        self.audio_in_features.unwrap_or(0).max(0) as usize
    }

    /// The config as YAML (what a run folder keeps as "the config used").
    pub fn to_yaml(&self) -> Result<String> {
        yaml_serde::to_string(self)
            .map_err(|e| Error::Other(format!("cannot write config as YAML: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str =
        "classifier_classes: [anger, joy]\nmodules_text_encoder: glove\ntext_out_features: 50\n";

    fn err(text: &str) -> String {
        Config::parse(Path::new("x.yml"), text)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn every_reference_config_loads() {
        // A verbatim copy of the reference repository's configs/ folder.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference-configs");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("yml") {
                continue;
            }
            let loaded = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(!loaded.config.classifier_classes.is_empty());
            n += 1;
        }
        assert_eq!(n, 32, "30 experiments + final.yml + _mock.yml");
    }

    #[test]
    fn our_configs_load_and_match_the_table() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("yml") {
                continue;
            }
            let loaded = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            let c = loaded.config;
            assert!(
                c.epochs.is_some() && c.batch_size.is_some() && c.seed.is_some(),
                "{}",
                path.display()
            );
            names.push(path.file_stem().unwrap().to_string_lossy().to_string());
        }
        for row in [
            "baseline-cce",
            "t-um-glove",
            "a-um-waveform",
            "final-i10-best-l2norm_off",
        ] {
            assert!(names.iter().any(|n| n == row), "configs/{row}.yml missing");
        }
        let c = Config::load(&dir.join("losses-dice_triplet.yml"))
            .unwrap()
            .config;
        assert_eq!(c.batch_size, Some(11));
        assert!(c.classifier_loss_fn.triplet);
        let c = Config::load(&dir.join("final-i03-waveform-200Kx768.yml"))
            .unwrap()
            .config;
        assert_eq!(c.audio_out_features, Some(768), "row 22 ran with A = 768");
    }

    #[test]
    fn defaults_follow_the_reference() {
        let c = Config::parse(Path::new("x.yml"), MINIMAL).unwrap();
        assert_eq!(c.classifier_learning_rate, 5e-5);
        assert_eq!(c.classifier_warmup_steps, 500);
        assert_eq!(c.classifier_loss_fn.to_string(), "cce");
        assert_eq!(c.classifier_metric_for_best_model, BestMetric::Loss);
        assert!(c.text_l2norm && c.audio_l2norm && c.visual_l2norm && !c.feedforward_l2norm);
        assert_eq!(c.visual_crop, VisualCrop::Reference);
        assert_eq!(c.attention_scope, AttentionScope::Batch);
        assert_eq!(c.patience(), None);
        // round trip through YAML
        let again = Config::parse(Path::new("y.yml"), &c.to_yaml().unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn errors_name_file_key_and_allowed_values() {
        let e = err(&format!("{MINIMAL}classifier_lr: 1\n"));
        assert!(
            e.contains("x.yml")
                && e.contains("classifier_lr")
                && e.contains("classifier_learning_rate"),
            "{e}"
        );
        let e = err(&format!("{MINIMAL}classifier_learning_rate: fast\n"));
        assert!(
            e.contains("classifier_learning_rate") && e.contains("fast"),
            "{e}"
        );
        let e = err("modules_text_encoder: glove\n");
        assert!(e.contains("classifier_classes"), "{e}");
        let e = err(&format!("{MINIMAL}modules_audio_encoder: mfcc\n"));
        assert!(
            e.contains("modules_audio_encoder") && e.contains("waveform") && e.contains("wav2vec2"),
            "{e}"
        );
        let e = err(&format!("{MINIMAL}classifier_loss_fn: hinge\n"));
        assert!(
            e.contains("classifier_loss_fn") && e.contains("dice+triplet"),
            "{e}"
        );
        let e = err(&format!("{MINIMAL}classifier_loss_fn: focal\n"));
        assert!(e.contains("losses_focal_alpha"), "{e}");
        let e = err(&format!(
            "{MINIMAL}feedforward_layers:\n  - out_features: 4\n    dropuot: 0.1\n"
        ));
        assert!(
            e.contains("feedforward_layers") && e.contains("dropuot"),
            "{e}"
        );
        let e = err(&format!("{MINIMAL}modules_fusion: multi_headed_attn\n"));
        assert!(e.contains("fusion_out_features"), "{e}");
        let e = err("classifier_classes: [anger, happy]\nmodules_text_encoder: glove\ntext_out_features: 50\n");
        assert!(e.contains("happy") && e.contains("surprise"), "{e}");
    }

    #[test]
    fn backbone_locations_default_to_the_reference_checkpoints() {
        let c = Config::parse(Path::new("x.yml"), MINIMAL).unwrap();
        assert_eq!(c.text_model(), "gpt2");
        assert_eq!(c.audio_model(), "facebook/wav2vec2-base");
        assert_eq!(c.visual_model(), Some("timm/resnet50.tv_in1k"));
        let c = Config::parse(
            Path::new("x.yml"),
            &format!("{MINIMAL}visual_model: random\ntext_model: models/gpt2\n"),
        )
        .unwrap();
        assert_eq!(c.visual_model(), None);
        assert_eq!(c.text_model(), "models/gpt2");
    }

    #[test]
    fn seed_system_keys_are_checked() {
        let tmn = "classifier_classes: [anger, joy]\nmodules_text_encoder: roberta\nmodules_audio_encoder: wav2vec2\naudio_in_features: 16000\nmodules_fusion: tmn\nfusion_out_features: 8\n";
        let c = Config::parse(Path::new("x.yml"), tmn).unwrap();
        assert_eq!(c.text_model(), "roberta-base");
        assert_eq!(c.text_pooling(), crate::encoders::roberta::Pooling::Cls);
        assert!(!c.peak_labels() && c.sentiment_weight().is_none());
        let again = Config::parse(Path::new("y.yml"), &c.to_yaml().unwrap()).unwrap();
        assert_eq!(again, c);
        // the keys of ours stay out of the YAML of configs that do not set them (run fingerprints unchanged)
        let plain = Config::parse(Path::new("x.yml"), MINIMAL)
            .unwrap()
            .to_yaml()
            .unwrap();
        for key in [
            "fusion_mixer",
            "sentiment",
            "peak",
            "smoothing",
            "text_pooling",
            "modality",
        ] {
            assert!(!plain.contains(key), "{key} in\n{plain}");
        }
        let e = err(&format!("{tmn}modules_visual_encoder: resnet50\n"));
        assert!(
            e.contains("modules_fusion") && e.contains("two modalities"),
            "{e}"
        );
        let e = err(&tmn.replace("fusion_out_features: 8\n", ""));
        assert!(
            e.contains("fusion_out_features") && e.contains("tmn"),
            "{e}"
        );
        let e = err(&format!("{tmn}fusion_mixer_layers: 0\n"));
        assert!(e.contains("fusion_mixer_layers"), "{e}");
        let e = err(&format!("{MINIMAL}fusion_mixer_token_features: 64\n"));
        assert!(
            e.contains("fusion_mixer_token_features") && e.contains("tmn"),
            "{e}"
        );
        let e = err(&format!(
            "{MINIMAL}modules_audio_encoder: wav2vec2\naudio_in_features: 100\nmodules_fusion: cross_attn\n"
        ));
        assert!(e.contains("cross_attn") && e.contains("roberta"), "{e}");
        let xattn = tmn.replace("modules_fusion: tmn", "modules_fusion: cross_attn");
        let e = err(&xattn);
        assert!(e.contains("fusion_attention_heads_degree"), "{e}");
        assert!(Config::parse(
            Path::new("x.yml"),
            &format!("{xattn}fusion_attention_heads_degree: 2\n")
        )
        .is_ok());
        let e = err(&format!(
            "{xattn}fusion_attention_heads_degree: 2\naudio_out_features: 64\n"
        ));
        assert!(e.contains("audio_out_features"), "{e}");
        let e = err(&format!("{MINIMAL}text_pooling: mean\n"));
        assert!(e.contains("text_pooling") && e.contains("roberta"), "{e}");
        let e = err(&format!("{tmn}text_limit_to_n_last_tokens: 16\n"));
        assert!(e.contains("text_limit_to_n_last_tokens"), "{e}");
        let e = err(&format!(
            "{MINIMAL}classifier_loss_fn: dice\nclassifier_peak_labels: true\n"
        ));
        assert!(
            e.contains("classifier_peak_labels") && e.contains("dice"),
            "{e}"
        );
        let e = err(&format!("{MINIMAL}classifier_label_smoothing: 1.0\n"));
        assert!(e.contains("classifier_label_smoothing"), "{e}");
        let e = err(&format!("{MINIMAL}sentiment_loss_weight: -1\n"));
        assert!(e.contains("sentiment_loss_weight"), "{e}");
        let e = err(&format!("{MINIMAL}modules_fusion: tensor_mixer\n"));
        assert!(e.contains("tmn") && e.contains("cross_attn"), "{e}");
    }

    #[test]
    fn classes_are_alphabetical() {
        let c = Config::parse(
            Path::new("x.yml"),
            "classifier_classes: [surprise, fear, neutral]\nmodules_text_encoder: glove\ntext_out_features: 50\n",
        )
        .unwrap();
        assert_eq!(c.classes(), ["fear", "neutral", "surprise"]);
    }
}
