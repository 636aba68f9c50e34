//! `classifier_class_weights: inverse_frequency` (seed system 3): class c weighs `max_k n_k / n_c`, the
//! training split's counts n (the seed's "largest class count divided by each class's count"; a class with no
//! training row gets weight 0: it has no target to weigh).
//!
//! The weighted loss is PyTorch's `CrossEntropyLoss(weight=w)` with class-index targets:
//! `Σ_i w[y_i]·(−log p_i[y_i]) / Σ_i w[y_i]` — the mean divides by the sum of the targets' weights. It is the
//! existing cross-entropy op on rescaled targets: with `t_ic = y_ic·w_c·B / Σ_jk y_jk·w_k`,
//! `−(1/B) Σ_i Σ_c t_ic·log p_ic` is that ratio, and the op's backward `(p·Σ_c t − t)/B` is its gradient, so every
//! device keeps its fused kernel. Soft targets (label smoothing) weigh each class's share alike (PyTorch
//! divides by B instead for probability targets). Only training is weighted: evaluation reports the plain loss,
//! comparable across configs (as Keras, the seed's library, reports `val_loss`).

use candle_core::{Tensor, D};

use crate::error::Result;

/// Weights `max n / n_c` of the classes of `labels` (indices below `classes`).
pub fn inverse_frequency(labels: &[usize], classes: usize) -> Vec<f32> {
    let mut counts = vec![0usize; classes];
    for l in labels {
        if let Some(n) = counts.get_mut(*l) {
            *n += 1;
        }
    }
    let largest = counts.iter().copied().max().unwrap_or(0) as f64;
    counts
        .iter()
        .map(|n| {
            if *n == 0 {
                0.0
            } else {
                (largest / *n as f64) as f32
            }
        })
        .collect()
}

/// The targets `t = y ⊙ w · B / Σ(y ⊙ w)` that make the plain cross-entropy of `y` (B, C) the weighted one.
pub fn weighted_targets(y: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let b = y.dim(0)? as f64;
    let yw = y.broadcast_mul(weights)?;
    // on the device, no read back: a training batch always weighs > 0 (only classes without a training row
    // weigh 0, and training batches hold training rows)
    let total = yw.sum_all()?;
    Ok(yw.broadcast_div(&total)?.affine(b, 0.0)?)
}

/// The weighted cross-entropy on logits (B, C) straight from its definition, composed of candle ops: the
/// reference [`weighted_targets`] is tested against.
pub fn weighted_cross_entropy_generic(
    logits: &Tensor,
    y: &Tensor,
    weights: &Tensor,
) -> Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let yw = y.broadcast_mul(weights)?;
    let numerator = (yw.clone() * log_p)?.sum_all()?.neg()?;
    Ok((numerator / yw.sum_all()?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn weights_are_largest_count_over_count() {
        assert_eq!(
            inverse_frequency(&[0, 0, 0, 0, 1, 1, 2], 4),
            [1.0, 2.0, 4.0, 0.0]
        );
    }

    #[test]
    fn rescaled_targets_give_the_weighted_loss_and_gradient() {
        let dev = Device::Cpu;
        let x = Var::from_vec(
            vec![
                0.3f32, -1.0, 2.0, 0.5, 0.1, -0.4, 1.2, 0.0, 0.7, -2.0, 0.2, 0.9,
            ],
            (4, 3),
            &dev,
        )
        .unwrap();
        let y = Tensor::from_vec(
            vec![1f32, 0., 0., 0., 0., 1., 0., 1., 0., 1., 0., 0.],
            (4, 3),
            &dev,
        )
        .unwrap();
        let w = Tensor::new(&[1f32, 2.5, 4.0], &dev).unwrap();
        let fused =
            crate::ops::loss::cross_entropy(&x, &weighted_targets(&y, &w).unwrap()).unwrap();
        let generic = weighted_cross_entropy_generic(&x, &y, &w).unwrap();
        let (a, b) = (
            fused.to_scalar::<f32>().unwrap(),
            generic.to_scalar::<f32>().unwrap(),
        );
        assert!((a - b).abs() < 1e-6, "{a} {b}");
        let ga = fused
            .backward()
            .unwrap()
            .get(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let gb = generic
            .backward()
            .unwrap()
            .get(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (p, q) in ga.iter().zip(&gb) {
            assert!((p - q).abs() < 1e-6, "{ga:?} {gb:?}");
        }
    }
}
