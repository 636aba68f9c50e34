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
//!
//! CUDA (`kernels/softmax_dropout.cu`, one block per row): the mask is a [`Counter`] drawn inside the kernels; the
//! backward is a second op that recomputes the probabilities from x and the mask from its key (nothing is kept
//! between the passes).

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::dropout::{dropout_shared, lock, Counter, Mask};
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

/// dropout(softmax(x)) on a GPU, the mask (if any) drawn inside the kernels from its counter. CUDA only.
struct SoftmaxDropoutCuda {
    counter: Option<Counter>,
}

impl CustomOp1 for SoftmaxDropoutCuda {
    fn name(&self) -> &'static str {
        "softmax-dropout-cuda"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!(
            "softmax-dropout-cuda runs on CUDA only (the CPU kernel keeps a host mask)"
        )
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda_forward(storage, layout, self.counter)
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let grad_x = arg.apply_op2_no_bwd(
            &grad_res.contiguous()?,
            &SoftmaxDropoutGrad {
                counter: self.counter,
            },
        )?;
        Ok(Some(grad_x))
    }
}

/// The forward kernel over rows of the last dimension: `softmax_fwd` or `softmax_dropout_fwd`.
#[cfg(feature = "cuda")]
fn cuda_forward(
    x: &candle_core::CudaStorage,
    layout: &Layout,
    counter: Option<Counter>,
) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
    use super::cuda::{alloc, input, launch, storage, to_u32, SOFTMAX_DROPOUT};
    use candle_core::backend::BackendStorage;
    const OP: &str = "softmax-dropout";
    let dev = x.device();
    let (rows, width) = super::rows_and_width(layout.shape())?;
    let xv = input(x, layout, OP)?;
    let mut y = alloc::<f32>(dev, xv.len())?;
    let (grid, width) = (to_u32(rows, OP)?, to_u32(width, OP)?);
    match counter {
        // softmax_fwd(const float* x, float* y, unsigned width)
        None => launch!(
            dev,
            SOFTMAX_DROPOUT,
            "softmax_fwd",
            grid,
            [&xv, &mut y, &width]
        ),
        Some(c) => {
            let (key, threshold, scale) = (c.key, c.threshold(), c.scale());
            // softmax_dropout_fwd(const float* x, float* y, unsigned width, unsigned long long key,
            //                     unsigned threshold, float scale)
            launch!(
                dev,
                SOFTMAX_DROPOUT,
                "softmax_dropout_fwd",
                grid,
                [&xv, &mut y, &width, &key, &threshold, &scale]
            );
        }
    }
    Ok((storage(y, dev), layout.shape().clone()))
}

/// The backward on a GPU, stateless: ∂L/∂x from (x, ∂L/∂y), the probabilities recomputed from x and the mask from
/// its counter.
struct SoftmaxDropoutGrad {
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    counter: Option<Counter>,
}

impl CustomOp2 for SoftmaxDropoutGrad {
    fn name(&self) -> &'static str {
        "softmax-dropout-grad"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!(
            "softmax-dropout-grad runs on CUDA only (the CPU backward is the op's bwd)"
        )
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
        grad: &candle_core::CudaStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        cuda_backward(x, x_layout, self.counter, grad, grad_layout)
    }
}

#[cfg(feature = "cuda")]
fn cuda_backward(
    x: &candle_core::CudaStorage,
    x_layout: &Layout,
    counter: Option<Counter>,
    grad: &candle_core::CudaStorage,
    grad_layout: &Layout,
) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
    use super::cuda::{alloc, input, launch, storage, to_u32, SOFTMAX_DROPOUT};
    use candle_core::backend::BackendStorage;
    const OP: &str = "softmax-dropout backward";
    if x_layout.shape() != grad_layout.shape() {
        candle_core::bail!(
            "{OP}: gradient {:?} for x {:?}",
            grad_layout.shape(),
            x_layout.shape()
        );
    }
    let dev = x.device();
    let (rows, width) = super::rows_and_width(x_layout.shape())?;
    let xv = input(x, x_layout, OP)?;
    let gv = input(grad, grad_layout, OP)?;
    let mut dx = alloc::<f32>(dev, xv.len())?;
    let (grid, width) = (to_u32(rows, OP)?, to_u32(width, OP)?);
    match counter {
        // softmax_bwd(const float* x, const float* grad, float* dx, unsigned width)
        None => launch!(
            dev,
            SOFTMAX_DROPOUT,
            "softmax_bwd",
            grid,
            [&xv, &gv, &mut dx, &width]
        ),
        Some(c) => {
            let (key, threshold, scale) = (c.key, c.threshold(), c.scale());
            // softmax_dropout_bwd(const float* x, const float* grad, float* dx, unsigned width,
            //                     unsigned long long key, unsigned threshold, float scale)
            launch!(
                dev,
                SOFTMAX_DROPOUT,
                "softmax_dropout_bwd",
                grid,
                [&xv, &gv, &mut dx, &width, &key, &threshold, &scale]
            );
        }
    }
    Ok((storage(dx, dev), x_layout.shape().clone()))
}

/// `dropout(softmax(x, last dim), p)` for x of any rank ≥ 1 (dropout in training only, p > 0), masks from `rng`.
pub fn softmax_dropout(x: &Tensor, p: f64, train: bool, rng: &Mutex<ChaCha8Rng>) -> Result<Tensor> {
    match Kernel::select(x, true) {
        Kernel::Cpu if x.rank() > 0 => fused(x, p, train, rng),
        Kernel::Cuda if x.rank() > 0 => cuda(x, draw(x, p, train, rng)?),
        _ => generic(x, p, train, rng),
    }
}

/// dropout(softmax(x)) with a given mask (`None`: softmax alone) on the body [`Kernel::select`] picks for x: what
/// [`softmax_dropout`] runs once its mask is drawn. The device check passes the same mask to every body.
pub(crate) fn with_mask(x: &Tensor, mask: Option<Mask>) -> Result<Tensor> {
    match Kernel::select(x, true) {
        Kernel::Cpu if x.rank() > 0 => cpu_kernel(x, mask.map(Mask::into_host).transpose()?),
        Kernel::Cuda if x.rank() > 0 => cuda(x, mask),
        _ => generic_with_mask(x, mask),
    }
}

/// The composed version with a given mask: softmax, then the product with the mask.
pub(crate) fn generic_with_mask(x: &Tensor, mask: Option<Mask>) -> Result<Tensor> {
    let y = super::softmax::generic(x)?;
    Ok(match mask {
        Some(mask) => (&y * mask.into_tensor(y.shape(), y.device(), y.dtype())?)?,
        None => y,
    })
}

fn generic(x: &Tensor, p: f64, train: bool, rng: &Mutex<ChaCha8Rng>) -> Result<Tensor> {
    let y = super::softmax::generic(x)?;
    dropout_shared(&y, p, train, rng)
}

/// The mask of a forward: drawn in training with p > 0, as [`dropout_shared`] draws it.
fn draw(x: &Tensor, p: f64, train: bool, rng: &Mutex<ChaCha8Rng>) -> Result<Option<Mask>> {
    Ok(if train && p > 0.0 {
        Some(Mask::draw(x.shape(), p, x.device(), &mut *lock(rng)?)?)
    } else {
        None
    })
}

fn fused(x: &Tensor, p: f64, train: bool, rng: &Mutex<ChaCha8Rng>) -> Result<Tensor> {
    let mask = draw(x, p, train, rng)?.map(Mask::into_host).transpose()?;
    cpu_kernel(x, mask)
}

/// The CPU kernel with a host mask.
pub(crate) fn cpu_kernel(x: &Tensor, mask: Option<Vec<f32>>) -> Result<Tensor> {
    let op = SoftmaxDropout {
        mask,
        probs: Mutex::new(Vec::new()),
    };
    Ok(x.contiguous()?.apply_op1(op)?)
}

/// The CUDA kernels: softmax alone, or with the counter mask drawn inside them. A host mask on a GPU tensor (not
/// what [`Mask::draw`] gives there) takes the composed path.
fn cuda(x: &Tensor, mask: Option<Mask>) -> Result<Tensor> {
    let counter = match mask {
        None => None,
        Some(Mask::Counter { counter, len }) if len == x.elem_count() => Some(counter),
        Some(other) => return generic_with_mask(x, Some(other)),
    };
    Ok(x.contiguous()?.apply_op1(SoftmaxDropoutCuda { counter })?)
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
