//! The whole classifier (docs/reference.md §3): encoders → fusion → feed-forward head → logits → softmax, built from a config.
//! Top-level parameter prefixes: `text`, `visual`, `audio`, `fusion`, `head` (and `sentiment_head` with a sentiment
//! task); a pretrained backbone's weights keep their checkpoint names under its prefix (`text.h.0.attn.c_attn.weight`,
//! `text.encoder.layer.0.attention.self.query.weight`, `audio.encoder.layers.3.attention.q_proj.weight`,
//! `visual.layer1.0.conv1.weight`).
//!
//! The cross-attention fusion reads the encoders' sequences instead of their vectors: GPT-2's and RoBERTa's
//! last hidden states with the token mask, wav2vec2's frames (all real: the reference pads audio with zeros it
//! feeds as samples).

use std::path::PathBuf;

use candle_core::{Device, Tensor};

use super::frames_lstm::{frame_features, FramesLstm};
use super::fusion::Fusion;
use super::head::{Head, HeadOutput};
use super::mixer::MixerSizes;
use crate::config::{AudioEncoder, Config, Fusion as FusionKind, TextEncoder, VisualEncoder};
use crate::data::tokenizer::MAX_TOKENS;
use crate::data::Batch;
use crate::data::GloveVocab;
use crate::encoders::check;
use crate::encoders::glove::GloveEncoder;
use crate::encoders::gpt2::Gpt2Encoder;
use crate::encoders::hub::{self, Backbone};
use crate::encoders::mel_cnn::{AudioSparseSpec, MelCnn};
use crate::encoders::resnet::Config as ResNetConfig;
use crate::encoders::resnet::ResNet50;
use crate::encoders::resnet_frames::{FramesResNet, SparseSpec};
use crate::encoders::roberta::RobertaEncoder;
use crate::encoders::vocal_net::VocalNet;
use crate::encoders::wav2vec2::Wav2Vec2Encoder;
use crate::encoders::waveform::WaveformEncoder;
use crate::error::{Error, Result};
use crate::nn::params::ParamStore;
use crate::nn::Ctx;

/// Where the pretrained backbones a config uses are: model folders (GPT-2, RoBERTa, wav2vec2) and the ResNet-50
/// weights (a file, or a sharded checkpoint's index). `None` for an encoder the config does not use — and for
/// ResNet-50, random weights.
#[derive(Debug, Clone, Default)]
pub struct Backbones {
    pub gpt2: Option<PathBuf>,
    pub roberta: Option<PathBuf>,
    pub wav2vec2: Option<PathBuf>,
    pub resnet50: Option<PathBuf>,
}

impl Backbones {
    /// Finds the files of every pretrained backbone `config` uses (`text_model`, `audio_model`,
    /// `visual_model`: local folders or Hugging Face hub ids, any weight format) and checks each checkpoint's
    /// headers against its architecture (and the reference's parameter count for the reference's hub ids), before
    /// any data is read.
    pub fn resolve(config: &Config) -> Result<Self> {
        let env = hub::HubEnv::from_env();
        let mut found = Backbones::default();
        for (backbone, spec) in check::needed(config) {
            let report = check::check(&env, backbone, &spec, false).map_err(|e| match backbone {
                Backbone::Resnet50 => Error::Other(format!(
                    "{e}\n(or set `visual_model: random` to train the ResNet-50 from random weights)"
                )),
                _ => e,
            })?;
            if let Some(problem) = report.problem() {
                return Err(Error::data(&report.checkpoint.path, problem));
            }
            tracing::info!(
                "{backbone} `{spec}`: {} parameters from {} ({})",
                hub::millions(report.parameters),
                report.checkpoint.path.display(),
                report.checkpoint.describe()
            );
            let slot = match backbone {
                Backbone::Gpt2 => &mut found.gpt2,
                Backbone::Roberta => &mut found.roberta,
                Backbone::Wav2vec2 => &mut found.wav2vec2,
                Backbone::Resnet50 => &mut found.resnet50,
            };
            *slot = Some(match backbone {
                Backbone::Resnet50 => report.checkpoint.path,
                _ => report.location,
            });
        }
        Ok(found)
    }
}

/// The text encoder of a config.
enum TextModule {
    Glove(GloveEncoder),
    Gpt2 {
        encoder: Box<Gpt2Encoder>,
        /// Right truncation: the tokenizer's 1024, or a smaller model's context.
        max_tokens: usize,
        /// `text_limit_to_n_last_tokens`: keep only the last n columns of the padded batch.
        last_tokens: Option<usize>,
    },
    /// Rows already `<s> … </s>` and cut to the model's positions by its tokenizer.
    Roberta(Box<RobertaEncoder>),
}

/// The audio encoder of a config.
// One per model: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum AudioModule {
    Waveform(WaveformEncoder),
    Wav2vec2(Wav2Vec2Encoder),
    /// One vector per frame's window (B, T, A), for the LSTM fusion.
    VocalNet(VocalNet),
    /// MESM's log-mel CNN; its sparse attention's query is the text vector.
    MelCnn(MelCnn),
}

pub struct Model {
    pub store: ParamStore,
    text: Option<TextModule>,
    visual: Option<ResNet50>,
    /// MESM's per-frame ResNet (`resnet50_frames`), built after the encoders whose vectors are its query.
    frames: Option<FramesResNet>,
    audio: Option<AudioModule>,
    /// `visual_crop: faces`: seed system 3's face CNN and/or landmarks MLP (the visual modality).
    faces: Option<super::face_net::FaceNet>,
    fusion: Fusion,
    head: Head,
    /// MELD's sentiment (3 classes), with a sentiment task.
    sentiment_head: Option<Head>,
    pub classes: usize,
    device: Device,
    /// The mosaic's frames (`visual_frames`): the time steps of a per-step fusion.
    time_steps: usize,
}

impl Model {
    /// Builds the model of `config` with weights initialised from `seed` and no pretrained weights: a random
    /// ResNet-50, and an error for GPT-2 and wav2vec2 (see [`Model::build_with`]). `vocab` is required for GloVe.
    pub fn build(
        config: &Config,
        vocab: Option<&GloveVocab>,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        Model::build_with(config, vocab, &Backbones::default(), device, seed)
    }

    /// Builds the model of `config`: pretrained backbones from `backbones`, every other weight initialised
    /// from `seed` (which also seeds the backbones' dropout and masking).
    pub fn build_with(
        config: &Config,
        vocab: Option<&GloveVocab>,
        backbones: &Backbones,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        let needs = |what: &str, key: &str| {
            Error::Other(format!(
                "the {what} encoder needs its pretrained model (`{key}`), none was given"
            ))
        };
        let mut store = ParamStore::new(device, seed);
        let mut names = Vec::new();
        let mut dims = Vec::new();
        // the widths of the encoders' sequences (tokens, frames), for a fusion that reads them
        let mut sequence_dims = Vec::new();
        let text = match config.modules_text_encoder {
            TextEncoder::None => None,
            TextEncoder::Glove => {
                let vocab = vocab
                    .ok_or_else(|| Error::Other("the GloVe encoder needs a vocabulary".into()))?;
                let encoder = GloveEncoder::new(&mut store, "text", vocab, config.text_l2norm)?;
                names.push("text");
                dims.push(encoder.out_features());
                Some(TextModule::Glove(encoder))
            }
            TextEncoder::Gpt2 => {
                let dir = backbones
                    .gpt2
                    .as_ref()
                    .ok_or_else(|| needs("GPT-2", "text_model"))?;
                let loaded = crate::encoders::gpt2::load(dir, device, seed)?;
                store.import("text", &loaded.vars)?;
                let max_tokens = MAX_TOKENS.min(loaded.model.config().n_positions);
                let encoder = Gpt2Encoder::new(loaded.model, config.text_l2norm);
                names.push("text");
                dims.push(encoder.out_features());
                sequence_dims.push(encoder.out_features());
                Some(TextModule::Gpt2 {
                    encoder: Box::new(encoder),
                    max_tokens,
                    last_tokens: config
                        .text_limit_to_n_last_tokens
                        .filter(|n| *n > 0)
                        .map(|n| n as usize),
                })
            }
            TextEncoder::Roberta => {
                let dir = backbones
                    .roberta
                    .as_ref()
                    .ok_or_else(|| needs("RoBERTa", "text_model"))?;
                let loaded = crate::encoders::roberta::load(
                    dir,
                    config.text_pooling(),
                    config.text_l2norm,
                    device,
                    seed,
                )?;
                store.import("text", &loaded.vars)?;
                names.push("text");
                dims.push(loaded.encoder.out_features());
                sequence_dims.push(loaded.encoder.model.config().hidden_size);
                Some(TextModule::Roberta(Box::new(loaded.encoder)))
            }
        };
        let visual = match config.modules_visual_encoder {
            VisualEncoder::None => None,
            VisualEncoder::Resnet50 => {
                let encoder = match &backbones.resnet50 {
                    None => ResNet50::new(&mut store, "visual", config.visual_l2norm)?,
                    // `visual_pretrained: false`: the checkpoint's network, re-initialised
                    Some(weights) if !config.visual_pretrained() => ResNet50::with_config(
                        &mut store,
                        "visual",
                        &ResNetConfig::from_checkpoint(weights)?,
                        config.visual_l2norm,
                    )?,
                    Some(weights) => ResNet50::from_torchvision(
                        &mut store,
                        "visual",
                        weights,
                        config.visual_l2norm,
                    )?,
                };
                names.push("visual");
                dims.push(encoder.out_features());
                Some(encoder)
            }
            VisualEncoder::Resnet50Frames => None,
            VisualEncoder::FaceCnn
            | VisualEncoder::FaceLandmarks
            | VisualEncoder::FaceCnnLandmarks => None,
        };
        let faces = if config.uses_faces() {
            let kind = config.modules_visual_encoder;
            let encoder = super::face_net::FaceNet::new(
                &mut store,
                "visual",
                (kind != VisualEncoder::FaceLandmarks).then_some(super::face_net::CNN_CHANNELS),
                kind != VisualEncoder::FaceCnn,
                config.face_size(),
                config.face_features(),
            )?;
            names.push("visual");
            dims.push(encoder.out_features());
            Some(encoder)
        } else {
            None
        };
        // where the per-frame ResNet's vector goes among the modalities (text, visual, audio)
        let frames_at = dims.len();
        let audio = match config.modules_audio_encoder {
            AudioEncoder::None => None,
            AudioEncoder::Waveform => {
                let encoder = WaveformEncoder::new(
                    &mut store,
                    "audio",
                    config.audio_samples(),
                    config.audio_out_features.unwrap_or(0).max(1) as usize,
                    config
                        .audio_waveform_attention_heads_degree
                        .map(|d| d.max(1) as usize),
                    config.attention_scope,
                    config.audio_l2norm,
                )?;
                names.push("audio");
                dims.push(encoder.out_features());
                Some(AudioModule::Waveform(encoder))
            }
            AudioEncoder::Wav2vec2 => {
                let dir = backbones
                    .wav2vec2
                    .as_ref()
                    .ok_or_else(|| needs("wav2vec2", "audio_model"))?;
                let out_features = config.audio_out_features.filter(|n| *n > 0);
                let loaded = crate::encoders::wav2vec2::load(
                    dir,
                    out_features,
                    config.audio_l2norm,
                    device,
                    seed,
                )?;
                store.import("audio", &loaded.vars)?;
                names.push("audio");
                dims.push(loaded.encoder.out_features());
                sequence_dims.push(loaded.encoder.model.config().hidden_size);
                Some(AudioModule::Wav2vec2(loaded.encoder))
            }
            AudioEncoder::VocalNet => {
                let encoder = VocalNet::new(
                    &mut store,
                    "audio",
                    config.audio_samples(),
                    config.visual_frames(),
                    config.audio_out_features.unwrap_or(0).max(1) as usize,
                )?;
                names.push("audio");
                dims.push(encoder.out_features());
                Some(AudioModule::VocalNet(encoder))
            }
            AudioEncoder::MelCnn => {
                let sparse = config.audio_sparse_nucleus_p.map(|p| AudioSparseSpec {
                    stage: config.audio_sparse_stage(),
                    // the text vector (validated: a text encoder exists, and comes first)
                    query: dims.first().copied().unwrap_or(0),
                    features: config.visual_sparse_features(),
                    p,
                });
                let encoder = MelCnn::new(&mut store, crate::encoders::mel_cnn::WIDTHS, sparse)?;
                names.push("audio");
                dims.push(encoder.out_features());
                Some(AudioModule::MelCnn(encoder))
            }
        };
        let frames = match config.modules_visual_encoder {
            VisualEncoder::Resnet50Frames => {
                let sparse = config.visual_sparse_nucleus_p.map(|p| SparseSpec {
                    stage: config.visual_sparse_stage(),
                    query: dims.iter().sum(),
                    features: config.visual_sparse_features(),
                    p: Some(p),
                });
                let encoder = FramesResNet::new(
                    &mut store,
                    backbones.resnet50.as_deref(),
                    sparse,
                    config.visual_l2norm,
                )?;
                names.insert(frames_at, "visual");
                dims.insert(frames_at, encoder.out_features());
                Some(encoder)
            }
            _ => None,
        };
        let fusion = match config.modules_fusion {
            FusionKind::Concat => Fusion::concat(&dims),
            FusionKind::MultiHeadedAttn => Fusion::attention(
                &mut store,
                "fusion",
                &names,
                &dims,
                config.fusion_out_features.unwrap_or(0).max(1) as usize,
                config.fusion_attention_heads_degree.unwrap_or(1).max(1) as usize,
                config.attention_scope,
            )?,
            FusionKind::Tmn => {
                let size =
                    |v: Option<i64>, default: usize| v.map_or(default, |n| n.max(1) as usize);
                let sizes = MixerSizes {
                    projections: [config.fusion_modality_features.map(|n| n.max(1) as usize); 2],
                    channels: size(config.fusion_out_features, 1),
                    layers: size(
                        config.fusion_mixer_layers,
                        crate::config::DEFAULT_MIXER_LAYERS,
                    ),
                    token_hidden: size(
                        config.fusion_mixer_token_features,
                        crate::config::DEFAULT_MIXER_TOKEN_FEATURES,
                    ),
                    channel_hidden: size(
                        config.fusion_mixer_channel_features,
                        crate::config::DEFAULT_MIXER_CHANNEL_FEATURES,
                    ),
                };
                Fusion::tmn(&mut store, "fusion", &names, &dims, sizes)?
            }
            FusionKind::CrossAttn => {
                let [text, audio] = sequence_dims[..] else {
                    return Err(Error::Other(format!(
                        "the cross-attention fusion needs a text and an audio sequence, the config has {}",
                        names.join(" and ")
                    )));
                };
                Fusion::cross_attention(
                    &mut store,
                    "fusion",
                    [text, audio],
                    config.fusion_out_features.unwrap_or(0).max(1) as usize,
                    config.fusion_attention_heads_degree.unwrap_or(1).max(1) as usize,
                )?
            }
            FusionKind::Lstm => Fusion::Lstm(Box::new(FramesLstm::new(
                &mut store,
                "fusion",
                &dims,
                config.fusion_out_features.unwrap_or(0).max(1) as usize,
            )?)),
        };
        let classes = config.classifier_classes.len();
        let head = Head::new(
            &mut store,
            "head",
            fusion.out_features(),
            config.feedforward_layers.as_deref().unwrap_or(&[]),
            config.feedforward_l2norm,
            classes,
        )?;
        let sentiment_head = match config.sentiment_weight() {
            Some(_) => Some(Head::new(
                &mut store,
                "sentiment_head",
                fusion.out_features(),
                config.feedforward_layers.as_deref().unwrap_or(&[]),
                config.feedforward_l2norm,
                meld_shared::Sentiment::ALL.len(),
            )?),
            None => None,
        };
        Ok(Model {
            store,
            text,
            visual,
            frames,
            audio,
            faces,
            fusion,
            head,
            sentiment_head,
            classes,
            device: device.clone(),
            time_steps: config.visual_frames(),
        })
    }

    /// The backbones' own dropout generators, by module (what a resume checkpoint saves).
    pub fn generators(&self) -> Vec<(&'static str, &std::sync::Mutex<rand_chacha::ChaCha8Rng>)> {
        let mut out = Vec::new();
        match &self.text {
            Some(TextModule::Gpt2 { encoder, .. }) => out.push(("text", encoder.model.rng())),
            Some(TextModule::Roberta(encoder)) => out.push(("text", encoder.model.rng())),
            _ => {}
        }
        if let Some(AudioModule::Wav2vec2(encoder)) = &self.audio {
            out.push(("audio", encoder.model.rng()));
        }
        out
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Width of the fused representation.
    pub fn fusion_features(&self) -> usize {
        self.fusion.out_features()
    }

    pub fn forward(&self, batch: &Batch, ctx: &mut Ctx) -> Result<HeadOutput> {
        let sequences = self.fusion.needs_sequences();
        let mut embeddings = Vec::new();
        let mut states = Vec::new();
        match &self.text {
            None => {}
            Some(TextModule::Glove(encoder)) => {
                embeddings.push(encoder.forward(&batch.text_ids, &self.device)?)
            }
            Some(TextModule::Gpt2 {
                encoder,
                max_tokens,
                last_tokens,
            }) => {
                let pad = encoder.model.config().pad_token_id();
                let (ids, mask) = pad_right(
                    &batch.text_ids,
                    pad,
                    *max_tokens,
                    *last_tokens,
                    &self.device,
                )?;
                if sequences {
                    states.push((encoder.model.forward(&ids, &mask, ctx.train)?, mask));
                } else {
                    embeddings.push(encoder.forward(&ids, &mask, ctx.train)?);
                }
            }
            Some(TextModule::Roberta(encoder)) => {
                let cfg = encoder.model.config();
                let (ids, mask) = pad_right(
                    &batch.text_ids,
                    cfg.pad_token_id,
                    cfg.max_tokens(),
                    None,
                    &self.device,
                )?;
                if sequences {
                    states.push((encoder.model.forward(&ids, &mask, ctx.train)?, mask));
                } else {
                    embeddings.push(encoder.forward(&ids, &mask, ctx.train)?);
                }
            }
        }
        if let Some(visual) = &self.visual {
            let x = batch
                .visual
                .as_ref()
                .ok_or_else(|| Error::Other("batch without images for the visual encoder".into()))?
                .to_device(&self.device)?;
            if self.fusion.per_step() {
                embeddings.push(frame_features(visual, &x, self.time_steps, ctx.train)?);
            } else {
                embeddings.push(visual.forward(&x, ctx.train)?);
            }
        }
        if let Some(faces) = &self.faces {
            let inputs = batch.faces.as_ref().ok_or_else(|| {
                Error::Other("batch without face crops for the face encoders".into())
            })?;
            let on_device = crate::data::face_crops::FaceBatch {
                crops: inputs.crops.to_device(&self.device)?,
                landmarks: inputs.landmarks.to_device(&self.device)?,
                mask: inputs.mask.to_device(&self.device)?,
            };
            embeddings.push(faces.forward(&on_device)?);
        }
        let frames_at = embeddings.len();
        if let Some(audio) = &self.audio {
            let x = batch
                .audio
                .as_ref()
                .ok_or_else(|| Error::Other("batch without audio for the audio encoder".into()))?
                .to_device(&self.device)?;
            match audio {
                AudioModule::Waveform(encoder) => embeddings.push(encoder.forward(&x, ctx)?),
                AudioModule::Wav2vec2(encoder) if sequences => {
                    let frames = encoder.model.forward(&x, ctx.train)?.last_hidden_state;
                    let (b, t, _) = frames.dims3()?;
                    let mask = Tensor::ones((b, t), candle_core::DType::U32, &self.device)?;
                    states.push((frames, mask));
                }
                AudioModule::Wav2vec2(encoder) => embeddings.push(encoder.forward(&x, ctx.train)?),
                AudioModule::VocalNet(encoder) => embeddings.push(encoder.forward(&x)?),
                AudioModule::MelCnn(encoder) => {
                    // the text vector comes first among the embeddings
                    let query = embeddings.first().cloned();
                    embeddings.push(encoder.forward(&x, query.as_ref(), ctx.train)?)
                }
            }
        }
        if let Some(frames) = &self.frames {
            let x = batch
                .visual
                .as_ref()
                .ok_or_else(|| Error::Other("batch without images for the visual encoder".into()))?
                .to_device(&self.device)?;
            // the query: the other modalities' vectors (text, audio), as the fusion receives them
            let query = match frames.needs_query() {
                true => Some(Tensor::cat(&embeddings, 1)?),
                false => None,
            };
            let v = frames.forward(&x, query.as_ref(), ctx.train)?;
            embeddings.insert(frames_at, v);
        }
        let fused = if sequences {
            self.fusion.forward_sequences(&states)?
        } else {
            self.fusion.forward(&embeddings)?
        };
        let mut out = self.head.forward(&fused, ctx)?;
        if !ctx.train {
            // measured in eval mode only (`train::diagnostics`): training steps skip the extra ops
            out.features = self.modality_features(sequences, &embeddings, &states)?;
        }
        if let Some(head) = &self.sentiment_head {
            out.sentiment_logits = Some(head.forward(&fused, ctx)?.logits);
        }
        Ok(out)
    }

    /// Each modality's vector for the feature-spread diagnostic, detached: an encoder's output vector as it is, a
    /// sequence as its mean over the real positions. The encoders give their vectors (or, for a fusion that reads
    /// sequences, their sequences) in the order text, visual, audio.
    fn modality_features(
        &self,
        sequences: bool,
        embeddings: &[Tensor],
        states: &[(Tensor, Tensor)],
    ) -> Result<Vec<(&'static str, Tensor)>> {
        let present: Vec<&'static str> = [
            ("text", self.text.is_some()),
            (
                "visual",
                self.visual.is_some() || self.frames.is_some() || self.faces.is_some(),
            ),
            ("audio", self.audio.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, used)| used.then_some(name))
        .collect();
        let mut out = Vec::new();
        if !sequences && present.len() == embeddings.len() {
            for (name, x) in present.iter().zip(embeddings) {
                out.push((*name, x.detach()));
            }
        } else if sequences && present.len() == states.len() {
            for (name, (x, mask)) in present.iter().zip(states) {
                let x = x.detach();
                let mask = mask.to_dtype(x.dtype())?.unsqueeze(2)?;
                let sum = x.broadcast_mul(&mask)?.sum(1)?;
                let count = mask.sum(1)?.clamp(1f64, f64::MAX)?;
                out.push((*name, sum.broadcast_div(&count)?));
            }
        } else {
            tracing::debug!(
                "feature spread: {} modalities, {} vectors, {} sequences: not measured",
                present.len(),
                embeddings.len(),
                states.len()
            );
        }
        Ok(out)
    }

    /// MESM's fraction of feature-map positions kept in the training forwards since the last call, by modality
    /// (`{"visual": 0.41, "audio": 0.55}`; 1.0 for a dense CNN); `None` without MESM's CNNs.
    pub fn mesm_kept_fraction(&self) -> Option<std::collections::BTreeMap<String, f64>> {
        let mut kept = std::collections::BTreeMap::new();
        if let Some(fraction) = self.frames.as_ref().and_then(|f| f.take_kept_fraction()) {
            kept.insert("visual".to_string(), fraction);
        }
        if let Some(AudioModule::MelCnn(encoder)) = &self.audio {
            if let Some(fraction) = encoder.take_kept_fraction() {
                kept.insert("audio".to_string(), fraction);
            }
        }
        (!kept.is_empty()).then_some(kept)
    }

    /// Probabilities of a batch in evaluation mode, detached from any graph.
    pub fn predict(&self, batch: &Batch) -> Result<Tensor> {
        let mut ctx = Ctx::eval();
        Ok(self.forward(batch, &mut ctx)?.probs.detach())
    }
}

/// GPT-2 inputs of a batch of token-id rows: `(input_ids, attention_mask)` (B, L), padded on the right with
/// `pad` to the longest row and truncated on the right at `max_tokens` (the reference's tokenizer call), then,
/// with `last_tokens`, only the last columns kept (`text_limit_to_n_last_tokens`).
pub fn pad_right(
    rows: &[Vec<u32>],
    pad: u32,
    max_tokens: usize,
    last_tokens: Option<usize>,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let b = rows.len();
    let width = rows.iter().map(Vec::len).max().unwrap_or(0).min(max_tokens);
    if width == 0 {
        return Err(Error::Other("a GPT-2 batch without any token".into()));
    }
    let mut ids = vec![pad; b * width];
    let mut mask = vec![0u32; b * width];
    for (r, row) in rows.iter().enumerate() {
        let n = row.len().min(width);
        ids[r * width..r * width + n].copy_from_slice(&row[..n]);
        mask[r * width..r * width + n].fill(1);
    }
    let keep = match last_tokens {
        Some(n) if n < width => n,
        _ => width,
    };
    // GPT-2 pools each row at its last real token: a row must keep one (a short row of a batch cut to its last
    // columns keeps none).
    for (r, row) in rows.iter().enumerate() {
        if mask[r * width + width - keep..(r + 1) * width]
            .iter()
            .all(|m| *m == 0)
        {
            return Err(Error::Other(format!(
                "GPT-2 batch row {r} ({} tokens) has no real token in the {keep} columns kept",
                row.len()
            )));
        }
    }
    let ids = Tensor::from_vec(ids, (b, width), device)?;
    let mask = Tensor::from_vec(mask, (b, width), device)?;
    Ok((
        ids.narrow(1, width - keep, keep)?,
        mask.narrow(1, width - keep, keep)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpt2_batches_pad_and_truncate_on_the_right() {
        let rows = vec![vec![5, 6, 7], vec![8], vec![1, 2, 3, 4, 5, 6]];
        let (ids, mask) = pad_right(&rows, 99, 4, None, &Device::Cpu).unwrap();
        assert_eq!(
            ids.to_vec2::<u32>().unwrap(),
            [[5, 6, 7, 99], [8, 99, 99, 99], [1, 2, 3, 4]]
        );
        assert_eq!(
            mask.to_vec2::<u32>().unwrap(),
            [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
        );
        // the last 2 columns: rows 0 and 1 keep no real token, which GPT-2's pooling cannot take
        let err = pad_right(&rows, 99, 1024, Some(2), &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains("row 0") && err.contains("2 columns"), "{err}");
        let full = vec![vec![1, 2, 3], vec![4, 5, 6]];
        let (ids, mask) = pad_right(&full, 99, 1024, Some(2), &Device::Cpu).unwrap();
        assert_eq!(ids.to_vec2::<u32>().unwrap(), [[2, 3], [5, 6]]);
        assert_eq!(mask.to_vec2::<u32>().unwrap(), [[1, 1], [1, 1]]);
    }
}
