//! Losses (§3.9). The reference hands every classifier loss the SOFTMAX PROBABILITIES p (B, C) and one-hot
//! targets y (B, C):
//!
//! * `cce` — PyTorch `CrossEntropyLoss(p, y)`: cross-entropy of softmax(p), a double softmax (quirk Q8), mean;
//! * `ce` — cross-entropy on the logits (the corrected option of ours);
//! * `dice` — 1 − mean_c 2TP_c/(2TP_c + FP_c + FN_c + ε) with soft counts over the batch, all classes;
//! * `focal` — α[class]·(1 − p_t)^γ·(−ln p_t), p_t clamped to [ε, 1 − ε], mean (or sum);
//! * triplet term on the hidden states: per class with ≥ 2 members (and another class present), anchor = first
//!   member, sim = (1 + cos)/2, −ln(mean sim(a, P) / (mean sim(a, P) + mean sim(a, N) + ε)); mean over classes.
//!
//! The classifier losses run as single fused nodes on the CPU ([`crate::fused`], each with its closed-form
//! backward); elsewhere, and for the triplet term, they are composed from candle primitives so gradients flow
//! (see the gradient tests; the tests below hold the fused versions to the composed ones).

use candle_core::{Tensor, D};

use crate::config::{ClassifierLoss, Config, LossFn};
use crate::error::Result;
use crate::fused;

/// Cross-entropy with probability targets: mean_b −Σ_c y_bc·log_softmax(x)_bc.
pub fn cross_entropy(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    if fused::applies(x) && x.rank() == 2 {
        return fused::cross_entropy(x, y);
    }
    cross_entropy_composed(x, y)
}

fn cross_entropy_composed(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(x, D::Minus1)?;
    Ok((y * log_p)?.sum(D::Minus1)?.mean_all()?.neg()?)
}

/// The reference's `cce`: cross-entropy applied to probabilities (double softmax, Q8).
pub fn cce(probs: &Tensor, y: &Tensor) -> Result<Tensor> {
    cross_entropy(probs, y)
}

/// Soft Dice loss over the batch, macro over all classes, ε in the denominator only.
pub fn dice(probs: &Tensor, y: &Tensor, eps: f64) -> Result<Tensor> {
    if fused::applies(probs) && probs.rank() == 2 {
        return fused::dice(probs, y, eps);
    }
    dice_composed(probs, y, eps)
}

fn dice_composed(probs: &Tensor, y: &Tensor, eps: f64) -> Result<Tensor> {
    let tp = (probs * y)?.sum(0)?;
    let fp = (probs * y.affine(-1.0, 1.0)?)?.sum(0)?;
    let fneg = (probs.affine(-1.0, 1.0)? * y)?.sum(0)?;
    let numerator = (&tp * 2.0)?;
    let denominator = ((&numerator + fp)? + fneg)?.affine(1.0, eps)?;
    let per_class = (numerator / denominator)?;
    Ok(per_class.mean_all()?.affine(-1.0, 1.0)?)
}

/// Focal loss with per-class α (C), focusing γ, mean or sum reduction.
pub fn focal(
    probs: &Tensor,
    y: &Tensor,
    alpha: &Tensor,
    gamma: f64,
    eps: f64,
    mean: bool,
) -> Result<Tensor> {
    if fused::applies(probs) && probs.rank() == 2 {
        return fused::focal(probs, y, alpha, gamma, eps, mean);
    }
    focal_composed(probs, y, alpha, gamma, eps, mean)
}

fn focal_composed(
    probs: &Tensor,
    y: &Tensor,
    alpha: &Tensor,
    gamma: f64,
    eps: f64,
    mean: bool,
) -> Result<Tensor> {
    let pt = (probs * y)?.sum(D::Minus1)?.clamp(eps, 1.0 - eps)?;
    let alpha_b = y.broadcast_mul(&alpha.unsqueeze(0)?)?.sum(D::Minus1)?;
    let modulating = pt.affine(-1.0, 1.0)?.powf(gamma)?;
    let per_sample = ((alpha_b * modulating)? * pt.log()?.neg()?)?;
    Ok(if mean {
        per_sample.mean_all()?
    } else {
        per_sample.sum_all()?
    })
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
    gamma: f64,
    mean: bool,
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
            gamma: config.focal_gamma(),
            mean: config.focal_mean(),
        }
    }

    /// The classifier part (what evaluation reports as the loss).
    pub fn classifier(&self, probs: &Tensor, logits: &Tensor, y: &Tensor) -> Result<Tensor> {
        match self.kind.classifier {
            ClassifierLoss::Cce => cce(probs, y),
            ClassifierLoss::Ce => cross_entropy(logits, y),
            ClassifierLoss::Dice => dice(probs, y, self.eps),
            ClassifierLoss::Focal => {
                let values = self.alpha.clone().unwrap_or_default();
                let alpha = Tensor::from_vec(values.clone(), values.len(), probs.device())?;
                focal(probs, y, &alpha, self.gamma, self.eps, self.mean)
            }
        }
    }

    /// Training loss: classifier part plus, for `*+triplet`, the triplet term (weight 1).
    pub fn training(
        &self,
        probs: &Tensor,
        logits: &Tensor,
        y: &Tensor,
        hidden: &Tensor,
        labels: &[usize],
    ) -> Result<Tensor> {
        let loss = self.classifier(probs, logits, y)?;
        if self.kind.triplet {
            Ok((loss + triplet(hidden, labels, self.eps)?)?)
        } else {
            Ok(loss)
        }
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

/// The fused CPU losses against the composed candle versions they replace, in value and gradient.
#[cfg(test)]
mod fused_tests {
    use super::*;
    use crate::fused::tests::uniform;
    use crate::testing::{max_abs, max_diff};
    use candle_core::{Device, Var};

    fn one_hot(labels: &[usize], classes: usize) -> Tensor {
        let mut y = vec![0f32; labels.len() * classes];
        for (i, l) in labels.iter().enumerate() {
            y[i * classes + l] = 1.0;
        }
        Tensor::from_vec(y, (labels.len(), classes), &Device::Cpu).unwrap()
    }

    fn check(name: &str, fused: impl Fn(&Tensor) -> Tensor, composed: impl Fn(&Tensor) -> Tensor) {
        let logits = Var::from_tensor(&uniform(&[12, 7], 3.0, 11)).unwrap();
        // Through the candle softmax, as the losses see probabilities in training.
        let probs = candle_nn::ops::softmax(logits.as_tensor(), D::Minus1).unwrap();
        let (ours, reference) = (fused(&probs), composed(&probs));
        let (a, b) = (
            ours.to_scalar::<f32>().unwrap(),
            reference.to_scalar::<f32>().unwrap(),
        );
        assert!(
            (a - b).abs() <= 1e-6 * b.abs().max(1.0),
            "{name}: {a} vs {b}"
        );
        assert!(a.abs() > 1e-3, "{name}: a non-trivial value");
        let g = ours.backward().unwrap();
        let g_ref = reference.backward().unwrap();
        let (g, g_ref) = (
            g.get(logits.as_tensor()).unwrap(),
            g_ref.get(logits.as_tensor()).unwrap(),
        );
        let scale = max_abs(g_ref);
        assert!(scale > 1e-4, "{name}: a non-trivial gradient");
        assert!(
            max_diff(g, g_ref) <= 1e-5 * scale,
            "{name}: gradients differ by {}",
            max_diff(g, g_ref)
        );
    }

    #[test]
    fn fused_losses_match_the_composed_ones() {
        // Every class present but one (6 never occurs), as in small batches.
        let y = one_hot(&[0, 1, 2, 3, 4, 5, 0, 4, 4, 3, 1, 2], 7);
        check(
            "cce",
            |p| cce(p, &y).unwrap(),
            |p| cross_entropy_composed(p, &y).unwrap(),
        );
        check(
            "dice",
            |p| dice(p, &y, 1e-8).unwrap(),
            |p| dice_composed(p, &y, 1e-8).unwrap(),
        );
        let alpha = Tensor::new(
            &[9.01f32, 36.86, 37.27, 5.73, 2.12, 14.63, 8.29],
            &Device::Cpu,
        )
        .unwrap();
        for (gamma, mean) in [(2.0, true), (0.5, false), (0.0, true)] {
            check(
                "focal",
                |p| focal(p, &y, &alpha, gamma, 1e-8, mean).unwrap(),
                |p| focal_composed(p, &y, &alpha, gamma, 1e-8, mean).unwrap(),
            );
        }
        // `ce` takes the logits themselves.
        let logits = Var::from_tensor(&uniform(&[12, 7], 3.0, 12)).unwrap();
        let ours = cross_entropy(logits.as_tensor(), &y).unwrap();
        let reference = cross_entropy_composed(logits.as_tensor(), &y).unwrap();
        assert!(
            (ours.to_scalar::<f32>().unwrap() - reference.to_scalar::<f32>().unwrap()).abs() < 1e-5
        );
        let g = ours.backward().unwrap();
        let g_ref = reference.backward().unwrap();
        assert!(
            max_diff(
                g.get(logits.as_tensor()).unwrap(),
                g_ref.get(logits.as_tensor()).unwrap()
            ) < 1e-6
        );
    }
}
