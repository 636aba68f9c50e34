//! Fusion of the modality embeddings (docs/reference.md §3.6), always in the order text, visual, audio (absent ones skipped).
//!
//! * `concat`: concatenate, then l2-normalise the concatenation (always, whatever the per-encoder flags say).
//! * `multi_headed_attn`: per-modality projections to p_m = ⌊F·d_m/Σd⌋ (the remainder goes to the largest p_m,
//!   first on ties), concatenated to x (B, F); y = LayerNorm(x + MHA(x, x, x)) with the reference's attention
//!   across the batch by default (docs/reference.md quirk Q7; `attention_scope: sample` for per-sample attention). No l2.
//! * `tmn`: TMN's Tensor Mixer of exactly two modality vectors ([`super::mixer`]), no l2.
//! * `cross_attn` (TMN's cross-attention ablation): the text encoder's token states and wav2vec2's frames, each
//!   projected to width d, attend to each other — `t' = LayerNorm(t + attn(t → a))`, `a' = LayerNorm(a + attn(a →
//!   t))`, padding left out — and the masked means of t' and a' are concatenated (B, 2d). No l2.
//! * `lstm` (the frames + voice seed system, [`super::frames_lstm`]): per-time-step sequences (B, T, d_m)
//!   concatenated per step, an LSTM over the steps, its last hidden state. No l2.

use candle_core::Tensor;

use super::frames_lstm::FramesLstm;
use super::mixer::{MixerSizes, TensorMixer};
use crate::config::AttentionScope;
use crate::error::{Error, Result};
use crate::nn::attention::{heads_for_degree, CrossAttention, MultiheadAttention};
use crate::nn::params::ParamStore;
use crate::nn::{masked_mean, LayerNorm, Linear};

/// Projection widths of the modalities present (in order) for a fused width `f` (docs/reference.md §3.6 steps 1–2).
pub fn projection_sizes(dims: &[usize], f: usize) -> Vec<usize> {
    let total: usize = dims.iter().sum();
    let mut sizes: Vec<usize> = dims
        .iter()
        .map(|d| (f as f64 * (*d as f64 / total as f64)) as usize)
        .collect();
    let remainder = f - sizes.iter().sum::<usize>();
    if let Some(largest) = sizes.iter().copied().max() {
        if let Some(at) = sizes.iter().position(|s| *s == largest) {
            sizes[at] += remainder;
        }
    }
    sizes
}

#[derive(Debug, Clone)]
pub enum Fusion {
    Concat {
        out_features: usize,
    },
    Attention {
        projections: Vec<Linear>,
        attention: MultiheadAttention,
        norm: LayerNorm,
        out_features: usize,
    },
    Tmn(Box<TensorMixer>),
    CrossModal(Box<CrossModal>),
    /// The frames + voice seed system's LSTM over per-step sequences.
    Lstm(Box<FramesLstm>),
}

/// The cross-attention fusion's layers (see the module doc).
#[derive(Debug, Clone)]
pub struct CrossModal {
    proj_text: Linear,
    proj_audio: Linear,
    text_to_audio: CrossAttention,
    audio_to_text: CrossAttention,
    layer_norm_text: LayerNorm,
    layer_norm_audio: LayerNorm,
    width: usize,
}

impl CrossModal {
    /// `dims`: the widths of the text tokens' and the audio frames' states.
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        dims: [usize; 2],
        width: usize,
        heads: usize,
    ) -> Result<Self> {
        Ok(CrossModal {
            proj_text: Linear::new(store, &format!("{name}.proj_text"), dims[0], width)?,
            proj_audio: Linear::new(store, &format!("{name}.proj_audio"), dims[1], width)?,
            text_to_audio: CrossAttention::new(
                store,
                &format!("{name}.text_to_audio"),
                width,
                heads,
            )?,
            audio_to_text: CrossAttention::new(
                store,
                &format!("{name}.audio_to_text"),
                width,
                heads,
            )?,
            layer_norm_text: LayerNorm::new(store, &format!("{name}.layer_norm_text"), width)?,
            layer_norm_audio: LayerNorm::new(store, &format!("{name}.layer_norm_audio"), width)?,
            width,
        })
    }

    /// Text states (B, Lt, dt) with their mask (B, Lt), audio states (B, La, da) with theirs → (B, 2·width).
    pub fn forward(
        &self,
        text: &Tensor,
        text_mask: &Tensor,
        audio: &Tensor,
        audio_mask: &Tensor,
    ) -> Result<Tensor> {
        let t = self.proj_text.forward(text)?;
        let a = self.proj_audio.forward(audio)?;
        let t2 = self
            .layer_norm_text
            .forward(&(&t + self.text_to_audio.forward(&t, &a, audio_mask)?)?)?;
        let a2 = self
            .layer_norm_audio
            .forward(&(&a + self.audio_to_text.forward(&a, &t, text_mask)?)?)?;
        Ok(Tensor::cat(
            &[masked_mean(&t2, text_mask)?, masked_mean(&a2, audio_mask)?],
            1,
        )?)
    }
}

impl Fusion {
    pub fn concat(dims: &[usize]) -> Self {
        Fusion::Concat {
            out_features: dims.iter().sum(),
        }
    }

    /// `names` are the modalities present (`text`, `visual`, `audio`), `dims` their widths.
    pub fn attention(
        store: &mut ParamStore,
        name: &str,
        names: &[&str],
        dims: &[usize],
        out_features: usize,
        degree: usize,
        scope: AttentionScope,
    ) -> Result<Self> {
        let sizes = projection_sizes(dims, out_features);
        let projections = names
            .iter()
            .zip(dims.iter().zip(&sizes))
            .map(|(m, (d, p))| Linear::new(store, &format!("{name}.proj_{m}"), *d, *p))
            .collect::<Result<Vec<_>>>()?;
        let heads = heads_for_degree(out_features, degree);
        Ok(Fusion::Attention {
            projections,
            attention: MultiheadAttention::new(
                store,
                &format!("{name}.attn"),
                out_features,
                heads,
                scope,
            )?,
            norm: LayerNorm::new(store, &format!("{name}.layer_norm"), out_features)?,
            out_features,
        })
    }

    /// TMN's Tensor Mixer of the two modalities present (`names`, `dims`; rows from the first).
    pub fn tmn(
        store: &mut ParamStore,
        name: &str,
        names: &[&str],
        dims: &[usize],
        sizes: MixerSizes,
    ) -> Result<Self> {
        let (&[a, b], &[da, db]) = (names, dims) else {
            return Err(Error::Other(format!(
                "the tensor mixer fuses two modalities, not {}",
                names.len()
            )));
        };
        Ok(Fusion::Tmn(Box::new(TensorMixer::new(
            store,
            name,
            [a, b],
            [da, db],
            sizes,
        )?)))
    }

    /// The cross-attention fusion of text tokens (width `dims[0]`) and audio frames (`dims[1]`).
    pub fn cross_attention(
        store: &mut ParamStore,
        name: &str,
        dims: [usize; 2],
        width: usize,
        degree: usize,
    ) -> Result<Self> {
        let heads = heads_for_degree(width, degree);
        Ok(Fusion::CrossModal(Box::new(CrossModal::new(
            store, name, dims, width, heads,
        )?)))
    }

    pub fn out_features(&self) -> usize {
        match self {
            Fusion::Concat { out_features } | Fusion::Attention { out_features, .. } => {
                *out_features
            }
            Fusion::Tmn(mixer) => mixer.out_features(),
            Fusion::CrossModal(c) => 2 * c.width,
            Fusion::Lstm(l) => l.out_features(),
        }
    }

    /// Whether the encoders give one vector per time step, (B, T, d), to [`Fusion::forward`] (the LSTM fusion).
    pub fn per_step(&self) -> bool {
        matches!(self, Fusion::Lstm(_))
    }

    /// Whether the fusion reads the encoders' sequences ([`Fusion::forward_sequences`]) rather than their vectors.
    pub fn needs_sequences(&self) -> bool {
        matches!(self, Fusion::CrossModal(_))
    }

    /// The encoders' sequences `(states (B, L, d), mask (B, L))`, text first, → (B, out_features).
    pub fn forward_sequences(&self, sequences: &[(Tensor, Tensor)]) -> Result<Tensor> {
        match (self, sequences) {
            (Fusion::CrossModal(c), [(t, tm), (a, am)]) => c.forward(t, tm, a, am),
            _ => Err(Error::Other(format!(
                "this fusion does not read {} sequences",
                sequences.len()
            ))),
        }
    }

    /// Modality embeddings (in order text, visual, audio) → (B, out_features).
    pub fn forward(&self, embeddings: &[Tensor]) -> Result<Tensor> {
        match self {
            Fusion::Tmn(mixer) => match embeddings {
                [a, b] => mixer.forward(a, b),
                _ => Err(Error::Other(format!(
                    "the tensor mixer fuses two modalities, not {}",
                    embeddings.len()
                ))),
            },
            Fusion::CrossModal(_) => Err(Error::Other(
                "the cross-attention fusion reads sequences, not vectors".into(),
            )),
            // the encoders give (B, T, d) per-step sequences under this fusion
            Fusion::Lstm(lstm) => lstm.forward(embeddings),
            Fusion::Concat { .. } => crate::ops::concat_l2_normalize(embeddings),
            Fusion::Attention {
                projections,
                attention,
                norm,
                ..
            } => {
                let projected = projections
                    .iter()
                    .zip(embeddings)
                    .map(|(p, e)| p.forward(e))
                    .collect::<Result<Vec<_>>>()?;
                let x = Tensor::cat(&projected, 1)?;
                norm.forward(&(&x + attention.forward(&x)?)?)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projection_sizes_match_the_spec_table() {
        assert_eq!(projection_sizes(&[50, 2048, 50], 512), [11, 490, 11]);
        assert_eq!(projection_sizes(&[768, 2048, 1536], 512), [90, 242, 180]);
        assert_eq!(projection_sizes(&[768, 2048, 1536], 1024), [180, 483, 361]);
        assert_eq!(projection_sizes(&[768, 2048, 50], 512), [137, 367, 8]);
        assert_eq!(projection_sizes(&[768, 2048, 256], 512), [128, 342, 42]);
        assert_eq!(projection_sizes(&[768, 2048, 768], 512), [109, 294, 109]);
    }
}
