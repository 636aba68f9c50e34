//! Losses (docs/reference.md §3.9). The reference hands every classifier loss the SOFTMAX PROBABILITIES p (B, C) and one-hot
//! targets y (B, C):
//!
//! * `cce` — PyTorch `CrossEntropyLoss(p, y)`: cross-entropy of softmax(p), a double softmax (docs/reference.md quirk Q8), mean;
//! * `ce` — cross-entropy on the logits (the corrected option of ours);
//! * `dice` — 1 − mean_c 2TP_c/(2TP_c + FP_c + FN_c + ε) with soft counts over the batch, all classes;
//! * `focal` — α[class]·(1 − p_t)^γ·(−ln p_t), p_t clamped to [ε, 1 − ε], mean (or sum);
//! * triplet term on the hidden states: per class with ≥ 2 members (and another class present), anchor = first
//!   member, sim = (1 + cos)/2, −ln(mean sim(a, P) / (mean sim(a, P) + mean sim(a, N) + ε)); mean over classes.
//!
//! The classifier losses are ops ([`crate::ops::loss`]: one node each with its closed-form backward, where a
//! kernel exists for the device); the triplet term is composed from candle primitives.
//!
//! Keys of ours, for the seed systems (TMN): training targets may be soft — label smoothing
//! `(1 − ε)·y + ε/K` (`classifier_label_smoothing`), then Peaking Labels ([`crate::ops::peak_labels`],
//! `classifier_peak_labels`) — and a sentiment head adds `w · CE(sentiment logits, MELD's sentiment)`
//! (`sentiment_loss_weight`). Evaluation always scores the one-hot emotion labels (the reported loss stays
//! comparable across configs).

use candle_core::{Tensor, D};

use crate::config::{ClassifierLoss, Config, LossFn};
use crate::data::Batch;
use crate::error::{Error, Result};
use crate::model::HeadOutput;

pub use crate::ops::loss::{cross_entropy, dice, focal};

/// The reference's `cce`: cross-entropy applied to probabilities (double softmax, docs/reference.md Q8).
pub fn cce(probs: &Tensor, y: &Tensor) -> Result<Tensor> {
    cross_entropy(probs, y)
}

/// Cosine similarity of each row of `x` (N, H) with `a` (1, H); norms clamped at 1e-8 as PyTorch does.
fn cosine(a: &Tensor, x: &Tensor) -> Result<Tensor> {
    const EPS2: f64 = 1e-16;
    let a_norm = a.sqr()?.sum_keepdim(D::Minus1)?.maximum(EPS2)?.sqrt()?;
    let x_norm = x.sqr()?.sum_keepdim(D::Minus1)?.maximum(EPS2)?.sqrt()?;
    let a = a.broadcast_div(&a_norm)?;
    let x = x.broadcast_div(&x_norm)?;
    Ok(x.broadcast_mul(&a)?.sum(D::Minus1)?)
}

/// The triplet term over a batch's hidden states (B, H) and class indices; 0 when no class qualifies.
pub fn triplet(hidden: &Tensor, labels: &[usize], eps: f64) -> Result<Tensor> {
    let device = hidden.device();
    let mut classes: Vec<usize> = labels.to_vec();
    classes.sort_unstable();
    classes.dedup();
    let mut terms = Vec::new();
    if classes.len() >= 2 {
        for class in &classes {
            let members: Vec<u32> = (0..labels.len())
                .filter(|i| labels[*i] == *class)
                .map(|i| i as u32)
                .collect();
            if members.len() < 2 {
                continue;
            }
            let others: Vec<u32> = (0..labels.len())
                .filter(|i| labels[*i] != *class)
                .map(|i| i as u32)
                .collect();
            let pick = |ids: &[u32]| -> Result<Tensor> {
                Ok(hidden.index_select(&Tensor::new(ids, device)?, 0)?)
            };
            let anchor = pick(&members[..1])?;
            let positive = cosine(&anchor, &pick(&members[1..])?)?
                .affine(0.5, 0.5)?
                .mean_all()?;
            let negative = cosine(&anchor, &pick(&others)?)?
                .affine(0.5, 0.5)?
                .mean_all()?;
            let ratio = (&positive / (&positive + negative)?.affine(1.0, eps)?)?;
            terms.push(ratio.log()?.neg()?);
        }
    }
    if terms.is_empty() {
        return Ok(Tensor::new(0f32, device)?);
    }
    Ok(Tensor::stack(&terms, 0)?.mean_all()?)
}

/// The configured loss of an experiment.
#[derive(Debug, Clone)]
pub struct Loss {
    pub kind: LossFn,
    eps: f64,
    alpha: Option<Vec<f32>>,
    /// `alpha` as a tensor on the device of the first batch (built once, not copied to the device every step).
    alpha_tensor: std::sync::OnceLock<Tensor>,
    gamma: f64,
    mean: bool,
    /// Label smoothing ε of the training targets.
    smoothing: Option<f64>,
    /// Peaking Labels on the training targets.
    peak: bool,
    /// The sentiment head's loss weight.
    sentiment: Option<f64>,
    /// `classifier_class_weights`: the training cross-entropy's class weights (C), see [`super::class_weights`].
    class_weights: Option<Tensor>,
}

impl Loss {
    pub fn new(config: &Config) -> Self {
        Loss {
            kind: config.classifier_loss_fn,
            eps: config.classifier_epsilon,
            alpha: config
                .losses_focal_alpha
                .as_ref()
                .map(|a| a.iter().map(|v| *v as f32).collect()),
            alpha_tensor: std::sync::OnceLock::new(),
            gamma: config.focal_gamma(),
            mean: config.focal_mean(),
            smoothing: config.classifier_label_smoothing,
            peak: config.peak_labels(),
            sentiment: config.sentiment_weight(),
            class_weights: None,
        }
    }

    /// Weighs the training cross-entropy's classes (`classifier_class_weights`; weights on the model's device).
    pub fn with_class_weights(mut self, weights: Tensor) -> Self {
        self.class_weights = Some(weights);
        self
    }

    /// The training targets of one-hot labels y (B, C): smoothed and peaked as configured, else y itself.
    pub fn targets(&self, y: &Tensor) -> Result<Tensor> {
        let mut y = y.clone();
        if let Some(eps) = self.smoothing.filter(|e| *e > 0.0) {
            let k = y.dim(D::Minus1)? as f64;
            y = y.affine(1.0 - eps, eps / k)?;
        }
        if self.peak {
            y = crate::ops::peak_labels(&y)?;
        }
        Ok(y)
    }

    /// The classifier part (what evaluation reports as the loss).
    pub fn classifier(&self, probs: &Tensor, logits: &Tensor, y: &Tensor) -> Result<Tensor> {
        match self.kind.classifier {
            ClassifierLoss::Cce => cce(probs, y),
            ClassifierLoss::Ce => cross_entropy(logits, y),
            ClassifierLoss::Dice => dice(probs, y, self.eps),
            ClassifierLoss::Focal => {
                let alpha = match self.alpha_tensor.get() {
                    Some(t) if t.device().same_device(probs.device()) => t.clone(),
                    _ => {
                        let values = self.alpha.clone().unwrap_or_default();
                        let t = Tensor::from_vec(values.clone(), values.len(), probs.device())?;
                        let _ = self.alpha_tensor.set(t.clone());
                        t
                    }
                };
                focal(probs, y, &alpha, self.gamma, self.eps, self.mean)
            }
        }
    }

    /// Training loss: classifier part (on the [`Loss::targets`] of the one-hot `y`) plus, for `*+triplet`, the
    /// triplet term (weight 1).
    pub fn training(
        &self,
        probs: &Tensor,
        logits: &Tensor,
        y: &Tensor,
        hidden: &Tensor,
        labels: &[usize],
    ) -> Result<Tensor> {
        let mut targets = self.targets(y)?;
        if let Some(w) = &self.class_weights {
            targets = super::class_weights::weighted_targets(&targets, w)?;
        }
        let loss = self.classifier(probs, logits, &targets)?;
        if self.kind.triplet {
            Ok((loss + triplet(hidden, labels, self.eps)?)?)
        } else {
            Ok(loss)
        }
    }
}

impl Loss {
    /// A training step's loss on a batch: [`Loss::training`] on its emotions plus, with a sentiment head, the
    /// weighted cross-entropy of its sentiment logits.
    pub fn step(&self, out: &HeadOutput, batch: &Batch, classes: usize) -> Result<Tensor> {
        let device = out.logits.device();
        let y = batch.one_hot(classes, device)?;
        let loss = self.training(&out.probs, &out.logits, &y, &out.hidden, &batch.labels)?;
        let Some(weight) = self.sentiment else {
            return Ok(loss);
        };
        let logits = out.sentiment_logits.as_ref().ok_or_else(|| {
            Error::Other(
                "`sentiment_loss_weight` is set but the model has no sentiment head".into(),
            )
        })?;
        let sentiment = cross_entropy(logits, &batch.sentiment_one_hot(device)?)?;
        Ok((loss + (sentiment * weight)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(rows: &[&[f32]]) -> Tensor {
        let r = rows.len();
        let c = rows[0].len();
        Tensor::from_vec(rows.concat(), (r, c), &Device::Cpu).unwrap()
    }

    fn scalar(x: Tensor) -> f32 {
        x.to_scalar::<f32>().unwrap()
    }

    #[test]
    fn spec_unit_values() {
        let p = t(&[&[0.1, 0.9], &[0.8, 0.2], &[0.4, 0.6]]);
        let y = t(&[&[0.0, 1.0], &[0.0, 1.0], &[1.0, 0.0]]);
        assert!((scalar(cce(&p, &y).unwrap()) - 0.735576).abs() < 1e-6);
        let y0 = t(&[&[1.0, 0.0], &[1.0, 0.0], &[1.0, 0.0]]);
        assert!((scalar(dice(&p, &y0, 1e-8).unwrap()) - 0.697674).abs() < 1e-6);
    }

    #[test]
    fn triplet_is_zero_without_a_valid_class_and_positive_otherwise() {
        let h = t(&[&[1.0, 0.0], &[0.0, 1.0], &[1.0, 1.0]]);
        assert_eq!(scalar(triplet(&h, &[0, 1, 2], 1e-8).unwrap()), 0.0);
        assert_eq!(scalar(triplet(&h, &[0, 0, 0], 1e-8).unwrap()), 0.0);
        // class 0: anchor (1,0), positive (1,1): sim 0.8536; negative (0,1): sim 0.5
        let v = scalar(triplet(&h, &[0, 1, 0], 1e-8).unwrap());
        let sp = (1.0 + 1.0 / 2f32.sqrt()) / 2.0;
        assert!((v - (-(sp / (sp + 0.5)).ln())).abs() < 1e-6, "{v}");
    }
}
