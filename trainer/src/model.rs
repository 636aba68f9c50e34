//! The whole classifier (§3): encoders → fusion → feed-forward head → logits → softmax, built from a config.
//! Top-level parameter prefixes: `text`, `visual`, `audio`, `fusion`, `head`.

use candle_core::{Device, Tensor};

use crate::config::{AudioEncoder, Config, Fusion as FusionKind, TextEncoder, VisualEncoder};
use crate::dataset::Batch;
use crate::error::{Error, Result};
use crate::fusion::Fusion;
use crate::glove::{GloveEncoder, GloveVocab};
use crate::head::{Head, HeadOutput};
use crate::nn::Ctx;
use crate::params::ParamStore;
use crate::resnet::ResNet50;
use crate::waveform::WaveformEncoder;

pub struct Model {
    pub store: ParamStore,
    text: Option<GloveEncoder>,
    visual: Option<ResNet50>,
    audio: Option<WaveformEncoder>,
    fusion: Fusion,
    head: Head,
    pub classes: usize,
    device: Device,
}

impl Model {
    /// Builds the model of `config` with weights initialised from `seed`; `vocab` is required for GloVe.
    pub fn build(
        config: &Config,
        vocab: Option<&GloveVocab>,
        device: &Device,
        seed: u64,
    ) -> Result<Self> {
        let mut store = ParamStore::new(device, seed);
        let mut names = Vec::new();
        let mut dims = Vec::new();
        let text = match config.modules_text_encoder {
            TextEncoder::None => None,
            TextEncoder::Glove => {
                let vocab = vocab
                    .ok_or_else(|| Error::Other("the GloVe encoder needs a vocabulary".into()))?;
                let encoder = GloveEncoder::new(&mut store, "text", vocab, config.text_l2norm)?;
                names.push("text");
                dims.push(encoder.out_features());
                Some(encoder)
            }
            TextEncoder::Gpt2 => {
                return Err(Error::Other("the GPT-2 encoder is not built yet".into()))
            }
        };
        let visual = match config.modules_visual_encoder {
            VisualEncoder::None => None,
            VisualEncoder::Resnet50 => {
                let encoder = ResNet50::new(&mut store, "visual", config.visual_l2norm)?;
                names.push("visual");
                dims.push(encoder.out_features());
                Some(encoder)
            }
        };
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
                Some(encoder)
            }
            AudioEncoder::Wav2vec2 => {
                return Err(Error::Other("the wav2vec2 encoder is not built yet".into()))
            }
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
        Ok(Model {
            store,
            text,
            visual,
            audio,
            fusion,
            head,
            classes,
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Width of the fused representation.
    pub fn fusion_features(&self) -> usize {
        self.fusion.out_features()
    }

    pub fn forward(&self, batch: &Batch, ctx: &mut Ctx) -> Result<HeadOutput> {
        let mut embeddings = Vec::new();
        if let Some(text) = &self.text {
            embeddings.push(text.forward(&batch.text_ids, &self.device)?);
        }
        if let Some(visual) = &self.visual {
            let x = batch
                .visual
                .as_ref()
                .ok_or_else(|| Error::Other("batch without images for the visual encoder".into()))?
                .to_device(&self.device)?;
            embeddings.push(visual.forward(&x, ctx.train)?);
        }
        if let Some(audio) = &self.audio {
            let x = batch
                .audio
                .as_ref()
                .ok_or_else(|| Error::Other("batch without audio for the audio encoder".into()))?
                .to_device(&self.device)?;
            embeddings.push(audio.forward(&x, ctx)?);
        }
        let fused = self.fusion.forward(&embeddings)?;
        self.head.forward(&fused, ctx)
    }

    /// Probabilities of a batch in evaluation mode, detached from any graph.
    pub fn predict(&self, batch: &Batch) -> Result<Tensor> {
        let mut ctx = Ctx::eval();
        Ok(self.forward(batch, &mut ctx)?.probs.detach())
    }
}
