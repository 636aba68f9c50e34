//! How much each modality's encoder output varies across the samples of a batch: the check that found the
//! frames + voice + LSTM seed's stall (its ImageNet ResNet gave nearly the same features for every clip, and the
//! loss saturated within 10 % of the first epoch whatever the hyper-parameters). Every run records it per epoch in
//! `metrics.jsonl` and warns when a modality's spread collapses.
//!
//! Measured on the validation pass (eval mode): dropout's noise would otherwise pass for variation between
//! samples. Per batch, the variance over the batch of each feature, averaged over the features; averaged over
//! the batches (those of one sample carry no spread and are left out). Its `share` is that variance over the
//! features' mean square: scale-free, so an l2-normalised text vector and raw ResNet activations compare.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};

use crate::error::Result;

/// Below this share of their mean square, a modality's features are called collapsed: samples differ by less
/// than 1 % of the features' RMS (encoders that learn sit several orders of magnitude above it).
pub const COLLAPSED_SHARE: f64 = 1e-4;

/// One modality's spread over an evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// Mean over batches of the per-feature variance across the batch, averaged over features.
    pub variance: f64,
    /// `variance` over the features' mean square.
    pub share: f64,
}

impl Spread {
    pub fn collapsed(&self) -> bool {
        self.share.is_nan() || self.share < COLLAPSED_SHARE
    }
}

/// Sums over batches, per modality.
#[derive(Debug, Default)]
pub struct FeatureSpread {
    sums: BTreeMap<&'static str, (f64, f64, usize)>,
}

impl FeatureSpread {
    /// Adds one batch's encoder outputs, `(modality, (B, D))`, detached.
    pub fn add(&mut self, features: &[(&'static str, Tensor)]) -> Result<()> {
        for (name, x) in features {
            let x = x.detach().to_dtype(DType::F32)?.flatten_from(1)?;
            if x.dim(0)? < 2 {
                continue;
            }
            let centred = x.broadcast_sub(&x.mean_keepdim(0)?)?;
            let variance = centred.sqr()?.mean_all()?.to_scalar::<f32>()? as f64;
            let mean_square = x.sqr()?.mean_all()?.to_scalar::<f32>()? as f64;
            let slot = self.sums.entry(name).or_insert((0.0, 0.0, 0));
            slot.0 += variance;
            slot.1 += mean_square;
            slot.2 += 1;
        }
        Ok(())
    }

    pub fn finish(&self) -> BTreeMap<String, Spread> {
        self.sums
            .iter()
            .map(|(name, (variance, mean_square, n))| {
                let variance = variance / *n as f64;
                let mean_square = mean_square / *n as f64;
                let share = if mean_square > 0.0 {
                    variance / mean_square
                } else {
                    0.0
                };
                (name.to_string(), Spread { variance, share })
            })
            .collect()
    }
}

/// Logs a warning for each modality whose features collapsed; returns their names.
pub fn warn_collapsed(epoch: usize, spreads: &BTreeMap<String, Spread>) -> Vec<String> {
    let mut collapsed = Vec::new();
    for (name, spread) in spreads {
        if spread.collapsed() {
            tracing::warn!(
                "epoch {epoch}: the {name} encoder's features barely vary across the batch (variance {:.3e}, \
                 {:.2e} of their mean square): it gives nearly the same output for every sample, so the classifier \
                 cannot learn from it (a frozen or saturated encoder; the frames + voice + LSTM seed's ResNet did \
                 this until trained from scratch)",
                spread.variance,
                spread.share
            );
            collapsed.push(name.clone());
        }
    }
    collapsed
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn spread_is_the_batch_variance_and_a_constant_encoder_is_flagged() {
        let varied = Tensor::new(&[[1f32, 2.0], [3.0, 6.0]], &Device::Cpu).unwrap();
        let constant = Tensor::new(&[[0.5f32, -2.0], [0.5, -2.0]], &Device::Cpu).unwrap();
        let single = Tensor::new(&[[9f32, 9.0]], &Device::Cpu).unwrap();
        let mut spread = FeatureSpread::default();
        spread
            .add(&[("text", varied.clone()), ("audio", constant.clone())])
            .unwrap();
        // a batch of one sample carries no spread: left out
        spread
            .add(&[("text", single.clone()), ("audio", single)])
            .unwrap();
        let spreads = spread.finish();
        // feature 0: values 1, 3 → variance 1; feature 1: 2, 6 → 4; mean 2.5. Mean square (1+4+9+36)/4 = 12.5.
        let text = spreads["text"];
        assert!((text.variance - 2.5).abs() < 1e-6, "{text:?}");
        assert!((text.share - 0.2).abs() < 1e-6, "{text:?}");
        assert!(!text.collapsed());
        let audio = spreads["audio"];
        assert_eq!(audio.variance, 0.0);
        assert!(audio.collapsed());
        assert_eq!(warn_collapsed(1, &spreads), ["audio"]);
        // all-zero features (a dead ReLU layer) are collapsed too
        let zeros = Tensor::zeros((4, 3), DType::F32, &Device::Cpu).unwrap();
        let mut spread = FeatureSpread::default();
        spread.add(&[("visual", zeros)]).unwrap();
        assert!(spread.finish()["visual"].collapsed());
    }
}
