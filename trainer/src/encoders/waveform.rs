//! Raw-waveform audio encoder (docs/reference.md §3.4): an MLP on the (B, N) sample vector, A = `audio_out_features`:
//! `Linear(N→3A) → ReLU → Dropout(0.1) → Linear(3A→2A) → ReLU → Dropout(0.1) → Linear(2A→A) → ReLU → Dropout(0.1)`
//! (the embedding is non-negative), then optionally (`audio_waveform_attention_heads_degree`, row 23) a
//! multi-head attention over the batch with a residual add and LayerNorm(A), then l2 if `audio_l2norm`.
//!
//! Parameter names follow the reference's `nn.Sequential`: `audio.ff.0`, `audio.ff.3`, `audio.ff.6`.

use candle_core::Tensor;

use crate::config::AttentionScope;
use crate::error::Result;
use crate::nn::attention::{heads_for_degree, MultiheadAttention};
use crate::nn::params::ParamStore;
use crate::nn::{Ctx, Dropout, LayerNorm, Linear};
use crate::ops::l2_normalize_if;

#[derive(Debug, Clone)]
pub struct WaveformEncoder {
    layers: [Linear; 3],
    dropout: Dropout,
    attention: Option<(MultiheadAttention, LayerNorm)>,
    l2norm: bool,
    out_features: usize,
}

impl WaveformEncoder {
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        in_features: usize,
        out_features: usize,
        attention_degree: Option<usize>,
        scope: AttentionScope,
        l2norm: bool,
    ) -> Result<Self> {
        let a = out_features;
        let layers = [
            Linear::new(store, &format!("{name}.ff.0"), in_features, 3 * a)?,
            Linear::new(store, &format!("{name}.ff.3"), 3 * a, 2 * a)?,
            Linear::new(store, &format!("{name}.ff.6"), 2 * a, a)?,
        ];
        let attention = match attention_degree {
            Some(degree) => Some((
                MultiheadAttention::new(
                    store,
                    &format!("{name}.attn"),
                    a,
                    heads_for_degree(a, degree),
                    scope,
                )?,
                LayerNorm::new(store, &format!("{name}.layer_norm"), a)?,
            )),
            None => None,
        };
        Ok(WaveformEncoder {
            layers,
            dropout: Dropout::new(0.1),
            attention,
            l2norm,
            out_features,
        })
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// (B, N) → (B, A).
    pub fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        let mut h = x.clone();
        for layer in &self.layers {
            h = self.dropout.forward(&layer.forward(&h)?.relu()?, ctx)?;
        }
        if let Some((attention, norm)) = &self.attention {
            h = norm.forward(&(&h + attention.forward(&h)?)?)?;
        }
        l2_normalize_if(h, self.l2norm)
    }
}
