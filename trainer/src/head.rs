//! Feed-forward head and classifier (§3.8): per configured layer `Linear → ReLU → Dropout(p)` (ReLU after the
//! last layer too; a null width reuses the previous one; no layers → one `Linear(in→in) → ReLU`), optional l2 on
//! the hidden state (`feedforward_l2norm`), then `Linear(hidden → classes)` logits and softmax probabilities.

use candle_core::Tensor;

use crate::config::FeedForwardLayer;
use crate::error::Result;
use crate::fused;
use crate::nn::{Ctx, Dropout, Linear};
use crate::params::ParamStore;

#[derive(Debug, Clone)]
pub struct Head {
    layers: Vec<(Linear, Option<Dropout>)>,
    l2norm: bool,
    logits: Linear,
}

/// What the model returns for a batch.
pub struct HeadOutput {
    /// Softmax probabilities (B, classes).
    pub probs: Tensor,
    pub logits: Tensor,
    /// Feed-forward output (after the optional l2): the triplet loss's input.
    pub hidden: Tensor,
}

impl Head {
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        in_features: usize,
        layers: &[FeedForwardLayer],
        l2norm: bool,
        classes: usize,
    ) -> Result<Self> {
        let mut built = Vec::new();
        let mut width = in_features;
        if layers.is_empty() {
            built.push((
                Linear::new(store, &format!("{name}.ff.0"), width, width)?,
                None,
            ));
        }
        for (i, layer) in layers.iter().enumerate() {
            let out = layer.out_features.map(|n| n as usize).unwrap_or(width);
            let linear = Linear::new(store, &format!("{name}.ff.{i}"), width, out)?;
            built.push((linear, layer.dropout.map(|p| Dropout::new(p as f32))));
            width = out;
        }
        Ok(Head {
            layers: built,
            l2norm,
            logits: Linear::new(store, &format!("{name}.logits"), width, classes)?,
        })
    }

    pub fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<HeadOutput> {
        // Each `Linear → ReLU → Dropout` is one fused node, as are the l2 and the softmax (on the CPU; composed
        // candle operations elsewhere): the head is small, and per-operation overhead was most of its cost.
        let batch = x.dim(0)?;
        let mut h = x.clone();
        for (linear, dropout) in &self.layers {
            let mask = dropout.and_then(|d| d.mask(batch * linear.out_features, ctx));
            h = linear.forward_fused(&h, true, mask)?;
        }
        if self.l2norm {
            h = fused::l2_normalize(&h)?;
        }
        let logits = self.logits.forward_fused(&h, false, None)?;
        let probs = fused::softmax(&logits)?;
        Ok(HeadOutput {
            probs,
            logits,
            hidden: h,
        })
    }
}
