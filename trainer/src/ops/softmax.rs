//! Softmax over the last dimension as one node with its backward (candle's fused `softmax_last_dim` has none):
//! the head's probabilities. CPU kernel: one pass per row; generic: candle's composed softmax.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, D};

use super::{contiguous_f32, rows_and_width, with_values, Kernel};
use crate::error::Result;

/// Softmax over the last dimension of x (…, C), any shape.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    match Kernel::select(x, false) {
        Kernel::Generic => generic(x),
        _ => kernel(x),
    }
}

/// The CPU kernel.
pub(crate) fn kernel(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Softmax)?)
}

/// The composed version (exp, sum, division: candle's `ops::softmax`, whose backward is right).
pub(crate) fn generic(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax(x, D::Minus1)?)
}

pub(crate) fn softmax_row(row: &[f32], out: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for (o, v) in out.iter_mut().zip(row) {
        *o = (v - max).exp();
        sum += *o;
    }
    for o in out.iter_mut() {
        *o /= sum;
    }
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, self.name())?;
        let (_, width) = rows_and_width(layout.shape())?;
        let mut p = vec![0f32; x.len()];
        for (row, out) in x.chunks_exact(width).zip(p.chunks_exact_mut(width)) {
            softmax_row(row, out);
        }
        Ok((CpuStorage::F32(p), layout.shape().clone()))
    }

    /// ∂x = p ⊙ (g − Σ_c g·p).
    fn bwd(&self, x: &Tensor, p: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let (_, width) = rows_and_width(x.shape())?;
        let dx = with_values(p, self.name(), |p| {
            with_values(grad, self.name(), |g| {
                let mut dx = vec![0f32; p.len()];
                for ((pr, gr), out) in p
                    .chunks_exact(width)
                    .zip(g.chunks_exact(width))
                    .zip(dx.chunks_exact_mut(width))
                {
                    let gp: f32 = pr.iter().zip(gr).map(|(a, b)| a * b).sum();
                    for ((o, pv), gv) in out.iter_mut().zip(pr).zip(gr) {
                        *o = pv * (gv - gp);
                    }
                }
                Ok(dx)
            })
        })?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_diff, project, uniform};
    use candle_core::Var;

    #[test]
    fn softmax_matches_the_composed_version() {
        let x = Var::from_tensor(&uniform(&[6, 7], 4.0, 3)).unwrap();
        let ours = x.as_tensor().apply_op1(Softmax).unwrap();
        let reference = generic(x.as_tensor()).unwrap();
        assert!(max_diff(&ours, &reference) < 1e-6);
        let g = project(&ours, 4).backward().unwrap();
        let g_ref = project(&reference, 4).backward().unwrap();
        assert!(
            max_diff(
                g.get(x.as_tensor()).unwrap(),
                g_ref.get(x.as_tensor()).unwrap()
            ) < 1e-6
        );
    }
}
