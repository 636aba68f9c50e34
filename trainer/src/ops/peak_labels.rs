//! Peaking Labels (PeakL, from TMN): a transform of soft targets that sharpens flat, uncertain distributions.
//!
//! Per row y (…, K) of a distribution over K classes:
//! `r = −tanh(Σ_k y_k·ln y_k)` (0·ln 0 = 0; r = tanh of the entropy, in [0, 1)), `z = max(0, y − r/K)`, and the
//! result `z / Σ_k z_k`. Everything below r/K is cut, the rest shifted down by it: the flatter the row, the more is
//! cut. The largest entry is at least 1/K > r/K, so a row never becomes all zero.
//!
//! On label-smoothed one-hot targets `(1 − ε)·onehot + ε/K` the off-target entries ε/K are cut whenever
//! ε < tanh(H): for K = 7 that is every ε below ≈ 0.96, so PeakL gives the one-hot label back (see the tests).
//!
//! Targets are data: the op carries no gradient (its input is detached). CPU kernel: one pass per row in f64;
//! generic: the composition (the entropy as `y·ln max(y, tiny)`). No CUDA kernel: (B, K) targets are tiny.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, D};

use super::{contiguous_f32, rows_and_width, Kernel};
use crate::error::Result;

/// PeakL of the distributions in the last dimension of `y` (any shape), detached.
pub fn peak_labels(y: &Tensor) -> Result<Tensor> {
    let y = y.detach();
    match Kernel::select(&y, false) {
        Kernel::Generic => generic(&y),
        _ => kernel(&y),
    }
}

/// The CPU kernel.
pub(crate) fn kernel(y: &Tensor) -> Result<Tensor> {
    Ok(y.contiguous()?.apply_op1_no_bwd(&PeakLabels)?)
}

/// The composed version.
pub(crate) fn generic(y: &Tensor) -> Result<Tensor> {
    let k = y.dim(D::Minus1)? as f64;
    // y·ln y with 0·ln 0 = 0: ln of a tiny positive number instead of −∞ (0·−∞ would be NaN)
    let ylogy = (y * y.maximum(f32::MIN_POSITIVE as f64)?.log()?)?;
    let r = ylogy.sum_keepdim(D::Minus1)?.tanh()?.neg()?;
    let z = y.broadcast_sub(&(r / k)?)?.relu()?;
    Ok(z.broadcast_div(&z.sum_keepdim(D::Minus1)?)?)
}

/// One row's PeakL, in f64.
pub(crate) fn peak_row(y: &[f32], out: &mut [f32]) {
    let k = y.len() as f64;
    let plogp: f64 = y
        .iter()
        .map(|&v| v as f64)
        .filter(|v| *v > 0.0)
        .map(|v| v * v.ln())
        .sum();
    let cut = -plogp.tanh() / k;
    let z: Vec<f64> = y.iter().map(|&v| (v as f64 - cut).max(0.0)).collect();
    let total: f64 = z.iter().sum();
    for (o, v) in out.iter_mut().zip(z) {
        *o = (v / total) as f32;
    }
}

struct PeakLabels;

impl CustomOp1 for PeakLabels {
    fn name(&self) -> &'static str {
        "peak-labels"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = contiguous_f32(storage, layout, self.name())?;
        let (_, width) = rows_and_width(layout.shape())?;
        let mut out = vec![0f32; y.len()];
        for (row, o) in y.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
            peak_row(row, o);
        }
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::max_diff;
    use candle_core::Device;

    fn smoothed(class: usize, eps: f32, k: usize) -> Vec<f32> {
        (0..k)
            .map(|c| if c == class { 1.0 - eps } else { 0.0 } + eps / k as f32)
            .collect()
    }

    #[test]
    fn kernel_matches_the_composition_and_sums_to_one() {
        let rows = [
            vec![0.4f32, 0.3, 0.2, 0.1, 0.0, 0.0, 0.0],
            vec![1.0 / 7.0; 7],
            vec![0.05, 0.6, 0.05, 0.1, 0.1, 0.05, 0.05],
            smoothed(2, 0.3, 7),
        ];
        let y = Tensor::from_vec(rows.concat(), (4, 7), &Device::Cpu).unwrap();
        let ours = kernel(&y).unwrap();
        let theirs = generic(&y).unwrap();
        assert!(
            max_diff(&ours, &theirs) < 1e-6,
            "{}",
            max_diff(&ours, &theirs)
        );
        for row in ours.to_vec2::<f32>().unwrap() {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6, "{row:?}");
        }
        // a uniform row stays uniform (every entry shifted by the same r/K)
        let uniform = &ours.to_vec2::<f32>().unwrap()[1];
        assert!(uniform.iter().all(|v| (v - 1.0 / 7.0).abs() < 1e-6));
    }

    /// What MELD's one label per utterance means for PeakL: label smoothing, then PeakL, is the one-hot label again
    /// for every ε up to ≈ 0.96 with 7 classes (the off-target ε/K lies under the cut tanh(H)/K) — and not beyond.
    #[test]
    fn smoothed_one_hot_labels_come_back_one_hot() {
        for eps in [0.05f32, 0.1, 0.3, 0.5, 0.9, 0.95] {
            let mut out = vec![0f32; 7];
            peak_row(&smoothed(4, eps, 7), &mut out);
            let mut expected = vec![0f32; 7];
            expected[4] = 1.0;
            assert_eq!(out, expected, "ε = {eps}");
        }
        let mut out = vec![0f32; 7];
        peak_row(&smoothed(4, 0.99, 7), &mut out);
        assert!(out[0] > 0.0 && out[4] < 1.0, "{out:?}");
    }
}
