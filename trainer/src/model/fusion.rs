//! Fusion of the modality embeddings (docs/reference.md §3.6), always in the order text, visual, audio (absent ones skipped).
//!
//! * `concat`: concatenate, then l2-normalise the concatenation (always, whatever the per-encoder flags say).
//! * `multi_headed_attn`: per-modality projections to p_m = ⌊F·d_m/Σd⌋ (the remainder goes to the largest p_m,
//!   first on ties), concatenated to x (B, F); y = LayerNorm(x + MHA(x, x, x)) with the reference's attention
//!   across the batch by default (docs/reference.md quirk Q7; `attention_scope: sample` for per-sample attention). No l2.

use candle_core::Tensor;

use crate::config::AttentionScope;
use crate::error::Result;
use crate::nn::attention::{heads_for_degree, MultiheadAttention};
use crate::nn::params::ParamStore;
use crate::nn::{LayerNorm, Linear};

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

    pub fn out_features(&self) -> usize {
        match self {
            Fusion::Concat { out_features } | Fusion::Attention { out_features, .. } => {
                *out_features
            }
        }
    }

    /// Modality embeddings (in order text, visual, audio) → (B, out_features).
    pub fn forward(&self, embeddings: &[Tensor]) -> Result<Tensor> {
        match self {
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
