//! `dropout(softmax(x, last dim))` — attention probabilities — as one CPU op with its own backward.
//!
//! Why: candle-nn's gradient-safe `ops::softmax` is composed of five full-size ops (max, subtract, exp, sum,
//! divide) and its backward of about twice as many, and dropout adds a mask tensor and a product each way. On
//! wav2vec2's attention maps (2 × 12 × 468 × 468 per layer, 21 MB) those passes cost more than the attention's
//! matrix products in a CPU profile, much of it in candle's elementwise thread barrier. Here the forward is one
//! pass per row and the backward one pass over (p, ∂L/∂y): `∂L/∂x = p ⊙ (g − Σ_row g ⊙ p)` with `g = ∂L/∂y ⊙ m`.
//!
//! The dropout mask is drawn by [`Mask::draw`] as the composed path draws it (one `f64` per element, in
//! order, from the same generator), so both paths give the same result. Generic: softmax, then dropout.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::dropout::{dropout_shared, lock, Mask};
use super::{contiguous_f32, with_cpu_f32, Kernel};
use crate::error::Result;

struct SoftmaxDropout {
    /// Inverted-dropout factors (0 or 1/(1−p)), one per element; None: no dropout.
    mask: Option<Vec<f32>>,
    /// The softmax before dropout, kept by the forward for the backward.
    probs: Mutex<Vec<f32>>,
}

/// Rows per parallel task.
const ROWS: usize = 16;

impl CustomOp1 for SoftmaxDropout {
    fn name(&self) -> &'static str {
        "softmax-dropout"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "softmax-dropout")?;
        let n = layout.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut probs = vec![0f32; x.len()];
        probs
            .par_chunks_mut(n * ROWS)
            .zip(x.par_chunks(n * ROWS))
            .for_each(|(p, x)| {
                for (p, x) in p.chunks_mut(n).zip(x.chunks(n)) {
                    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for (p, &x) in p.iter_mut().zip(x) {
                        *p = (x - max).exp();
                        sum += *p;
                    }
                    for p in p.iter_mut() {
                        *p /= sum;
                    }
                }
            });
        let y = match &self.mask {
            Some(mask) => {
                let mut y = vec![0f32; x.len()];
                y.par_chunks_mut(n * ROWS)
                    .zip(probs.par_chunks(n * ROWS).zip(mask.par_chunks(n * ROWS)))
                    .for_each(|(y, (p, m))| {
                        for ((y, &p), &m) in y.iter_mut().zip(p).zip(m) {
                            *y = p * m;
                        }
                    });
                y
            }
            None => probs.clone(),
        };
        *self
            .probs
            .lock()
            .map_err(|_| candle_core::Error::Msg("softmax probabilities poisoned".into()))? = probs;
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let n = arg.dims().last().copied().unwrap_or(1).max(1);
        let probs = self
            .probs
            .lock()
            .map_err(|_| candle_core::Error::Msg("softmax probabilities poisoned".into()))?;
        if probs.len() != arg.elem_count() {
            candle_core::bail!("softmax-dropout backward: the forward kept no probabilities");
        }
        let grad_x = with_cpu_f32(grad_res, "softmax-dropout backward", |g| {
            let mut out = vec![0f32; g.len()];
            out.par_chunks_mut(n * ROWS)
                .enumerate()
                .for_each(|(block, out)| {
                    let at = block * n * ROWS;
                    for (r, out) in out.chunks_mut(n).enumerate() {
                        let lo = at + r * n;
                        let (p, g) = (&probs[lo..lo + n], &g[lo..lo + n]);
                        // g ⊙ m, then Σ g·p over the row
                        match &self.mask {
                            Some(mask) => {
                                for ((o, &g), &m) in out.iter_mut().zip(g).zip(&mask[lo..lo + n]) {
                                    *o = g * m;
                                }
                            }
                            None => out.copy_from_slice(g),
                        }
                        let dot: f32 = out.iter().zip(p).map(|(&g, &p)| g * p).sum();
                        for (o, &p) in out.iter_mut().zip(p) {
                            *o = p * (*o - dot);
                        }
                    }
                });
            out
        })?;
        Ok(Some(Tensor::from_vec(grad_x, arg.shape(), arg.device())?))
    }
}

/// `dropout(softmax(x, last dim), p)` for x of any rank ≥ 1 (dropout in training only, p > 0), masks from `rng`.
pub fn softmax_dropout(x: &Tensor, p: f64, train: bool, rng: &Mutex<ChaCha8Rng>) -> Result<Tensor> {
    match Kernel::select(x, false) {
        Kernel::Cpu if x.rank() > 0 => fused(x, p, train, rng),
        _ => generic(x, p, train, rng),
    }
}

fn generic(x: &Tensor, p: f64, train: bool, rng: &Mutex<ChaCha8Rng>) -> Result<Tensor> {
    let y = super::softmax::generic(x)?;
    dropout_shared(&y, p, train, rng)
}

fn fused(x: &Tensor, p: f64, train: bool, rng: &Mutex<ChaCha8Rng>) -> Result<Tensor> {
    let mask = if train && p > 0.0 {
        Some(Mask::draw(x.shape(), p, x.device(), &mut *lock(rng)?)?.into_host()?)
    } else {
        None
    };
    let op = SoftmaxDropout {
        mask,
        probs: Mutex::new(Vec::new()),
    };
    Ok(x.contiguous()?.apply_op1(op)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{grads_through, max_abs};
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};

    /// Values and the input gradient against the composed softmax + dropout from the same seed, with and
    /// without dropout, batch > 1, rows not a multiple of the task size.
    #[test]
    fn matches_composed_softmax_and_dropout() {
        let dev = Device::Cpu;
        for (shape, p, train) in [
            ((2, 3, 7, 9), 0.1, true),
            ((3, 2, 5, 33), 0.0, true),
            ((2, 4, 6, 6), 0.5, false),
        ] {
            let x = Var::from_tensor(&(Tensor::randn(0f32, 3.0, shape, &dev).unwrap())).unwrap();
            let rng_a = Mutex::new(ChaCha8Rng::seed_from_u64(5));
            let rng_b = Mutex::new(ChaCha8Rng::seed_from_u64(5));
            let ours = fused(x.as_tensor(), p, train, &rng_a).unwrap();
            let reference = generic(x.as_tensor(), p, train, &rng_b).unwrap();
            let case = format!("{shape:?} p {p} train {train}");
            assert!(max_abs(&(&ours - &reference).unwrap()) < 1e-6, "{case}");
            if train && p > 0.0 {
                let zeros = ours
                    .eq(0f32)
                    .unwrap()
                    .to_dtype(candle_core::DType::F32)
                    .unwrap();
                let dropped = zeros.sum_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(dropped > 0.0, "{case}: some probabilities dropped");
            }
            // the generators advanced alike
            assert_eq!(
                rng_a.lock().unwrap().gen::<u64>(),
                rng_b.lock().unwrap().gen::<u64>(),
                "{case}"
            );
            let upstream = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
            let g_ours = grads_through(&ours, &upstream);
            let g_ref = grads_through(&reference, &upstream);
            let (a, r) = (
                g_ours.get(x.as_tensor()).unwrap(),
                g_ref.get(x.as_tensor()).unwrap(),
            );
            assert!(max_abs(r) > 1e-3, "{case}: a real gradient");
            assert!(max_abs(&(a - r).unwrap()) < 1e-5, "{case}");
        }
    }
}
