//! Feed-forward head and classifier (docs/reference.md §3.8): per configured layer `Linear → ReLU → Dropout(p)` (ReLU after the
//! last layer too; a null width reuses the previous one; no layers → one `Linear(in→in) → ReLU`), optional l2 on
//! the hidden state (`feedforward_l2norm`), then `Linear(hidden → classes)` logits and softmax probabilities.

use candle_core::{Tensor, D};

use crate::config::FeedForwardLayer;
use crate::error::Result;
use crate::nn::params::ParamStore;
use crate::nn::{Ctx, Dropout, Linear};
use crate::ops;

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
    /// The sentiment head's logits (B, 3), with a sentiment task (`sentiment_loss_weight`).
    pub sentiment_logits: Option<Tensor>,
    /// Each modality's encoder output the fusion read, `(modality, (B, D))` (a sequence as its masked mean over
    /// time): what the feature-spread diagnostic measures (`train::diagnostics`).
    pub features: Vec<(&'static str, Tensor)>,
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
        let rows = x.elem_count() / x.dim(D::Minus1)?.max(1);
        let mut h = x.clone();
        for (linear, dropout) in &self.layers {
            let shape = candle_core::Shape::from((rows, linear.out_features));
            let mask = match dropout {
                Some(d) => d.mask(&shape, x.device(), ctx)?,
                None => None,
            };
            h = linear.forward_act(&h, true, mask)?;
        }
        let h = ops::l2_normalize_if(h, self.l2norm)?;
        let logits = self.logits.forward_act(&h, false, None)?;
        let probs = ops::softmax(&logits)?;
        Ok(HeadOutput {
            probs,
            logits,
            hidden: h,
            sentiment_logits: None,
            features: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::max_diff;
    use crate::testing::uniform;
    use candle_core::{Device, Var};

    /// The fused forward (and backward) equals the composed candle operations it replaced — Linear, ReLU,
    /// Dropout with the same draws from the same generator, l2, Linear, softmax — in probabilities, hidden state
    /// and the gradient of every parameter and of the input.
    #[test]
    fn fused_head_matches_the_composed_operations() {
        let mut store = ParamStore::new(&Device::Cpu, 3);
        let layers = [
            FeedForwardLayer {
                out_features: Some(16),
                dropout: Some(0.3),
            },
            FeedForwardLayer {
                out_features: None,
                dropout: None,
            },
        ];
        let head = Head::new(&mut store, "head", 12, &layers, true, 7).unwrap();
        let x = Var::from_tensor(&uniform(&[8, 12], 1.0, 31)).unwrap();

        let fused = head.forward(x.as_tensor(), &mut Ctx::train(5)).unwrap();

        let mut ctx = Ctx::train(5);
        let mut h = x.as_tensor().clone();
        for (linear, dropout) in &head.layers {
            h = linear.forward(&h).unwrap().relu().unwrap();
            if let Some(dropout) = dropout {
                h = dropout.forward(&h, &mut ctx).unwrap();
            }
        }
        let hidden = crate::ops::concat_l2::generic(&h).unwrap();
        let probs =
            candle_nn::ops::softmax(&head.logits.forward(&hidden).unwrap(), D::Minus1).unwrap();

        assert!(max_diff(&fused.probs, &probs) < 1e-6);
        assert!(max_diff(&fused.hidden, &hidden) < 1e-6);
        let dropped = hidden
            .eq(0f32)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap();
        assert!(
            dropped.sum_all().unwrap().to_scalar::<f32>().unwrap() > 10.0,
            "dropout and ReLU zero some units"
        );

        let objective = |p: &Tensor, h: &Tensor| {
            let a = (p * uniform(&[8, 7], 1.0, 32)).unwrap().sum_all().unwrap();
            (a + (h * uniform(&[8, 16], 1.0, 33)).unwrap().sum_all().unwrap()).unwrap()
        };
        let g = objective(&fused.probs, &fused.hidden).backward().unwrap();
        let g_ref = objective(&probs, &hidden).backward().unwrap();
        let mut vars: Vec<(String, Var)> = store.trainable();
        vars.push(("input".into(), x));
        for (name, var) in &vars {
            let (ours, reference) = (g.get(var.as_tensor()), g_ref.get(var.as_tensor()));
            let (ours, reference) = (ours.expect(name), reference.expect(name));
            assert!(
                max_diff(ours, reference) < 1e-5,
                "{name}: {}",
                max_diff(ours, reference)
            );
        }
    }
}
