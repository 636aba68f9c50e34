//! LayerNorm over the last dimension (`y = (x − μ)/√(σ² + eps) · γ + β`, σ² biased) as one CPU op with its own
//! backward for x, γ and β.
//!
//! Why: candle's fused `ops::layer_norm` drops gradients (see the dependency notes), and the gradient-safe
//! `ops::layer_norm_slow` is composed of ~8 ops forward and about twice as many backward. wav2vec2 applies 25
//! LayerNorms per step; on (2, 468, 768) one composed LayerNorm took ~0.09 s forward+backward on 2 loaded cores
//! (most of it candle's elementwise barrier), more than a third of an attention block. Here the forward is one
//! pass per row and the backward one pass over (x, ∂L/∂y). Generic: `ops::layer_norm_slow` (composed).
//!
//! CUDA (`kernels/layer_norm.cu`): one block per row forward; the backward is a second op, stateless (the row
//! statistics are recomputed from x), one block per row for ∂x, then deterministic column sums for ∂γ and ∂β,
//! returned packed `[∂x | ∂γ | ∂β]` and narrowed.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous_f32, with_cpu_f32, Kernel};
use crate::error::{Error, Result};

/// Rows per parallel task.
const ROWS: usize = 8;

struct LayerNormOp {
    eps: f64,
    /// Filled by the forward, read by the backward: per row, the mean and 1/√(σ² + eps).
    stats: Mutex<Vec<(f32, f32)>>,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        gamma_storage: &CpuStorage,
        gamma_layout: &Layout,
        beta_storage: &CpuStorage,
        beta_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(x_storage, x_layout, "layer norm")?;
        let gamma = contiguous_f32(gamma_storage, gamma_layout, "layer norm γ")?;
        let beta = contiguous_f32(beta_storage, beta_layout, "layer norm β")?;
        let d = gamma.len();
        let rows = x.len() / d;
        let mut y = vec![0f32; x.len()];
        let mut stats = vec![(0f32, 0f32); rows];
        y.par_chunks_mut(d * ROWS)
            .zip(x.par_chunks(d * ROWS))
            .zip(stats.par_chunks_mut(ROWS))
            .for_each(|((y, x), stats)| {
                for ((y, x), stat) in y.chunks_mut(d).zip(x.chunks(d)).zip(stats.iter_mut()) {
                    // two passes in f64: exact enough whatever the row's offset
                    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
                    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
                    let (mean, inv) = (mean as f32, (1.0 / (var + self.eps).sqrt()) as f32);
                    for (((y, &x), &g), &b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
                        *y = (x - mean) * inv * g + b;
                    }
                    *stat = (mean, inv);
                }
            });
        *self
            .stats
            .lock()
            .map_err(|_| candle_core::Error::Msg("layer norm statistics poisoned".into()))? = stats;
        Ok((CpuStorage::F32(y), x_layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
        gamma: &candle_core::CudaStorage,
        gamma_layout: &Layout,
        beta: &candle_core::CudaStorage,
        beta_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{alloc, input, launch, storage, to_u32, LAYER_NORM};
        use candle_core::backend::BackendStorage;
        const OP: &str = "layer norm";
        let dev = x.device();
        let (xv, gv, bv) = (
            input(x, x_layout, OP)?,
            input(gamma, gamma_layout, OP)?,
            input(beta, beta_layout, OP)?,
        );
        let d = gv.len();
        let rows = xv.len() / d;
        let mut y = alloc::<f32>(dev, xv.len())?;
        let (grid, d) = (to_u32(rows, OP)?, to_u32(d, OP)?);
        // layer_norm_fwd(const float* x, const float* gamma, const float* beta, float* y, unsigned d, double eps)
        launch!(
            dev,
            LAYER_NORM,
            "layer_norm_fwd",
            grid,
            [&xv, &gv, &bv, &mut y, &d, &self.eps]
        );
        Ok((storage(y, dev), x_layout.shape().clone()))
    }

    /// With x̂ = (x − μ)/σ and `ĝ = ∂L/∂y ⊙ γ`: `∂L/∂x = (ĝ − mean(ĝ) − x̂·mean(ĝ·x̂))/σ` per row,
    /// `∂L/∂γ = Σ_rows ∂L/∂y ⊙ x̂`, `∂L/∂β = Σ_rows ∂L/∂y`.
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = gamma.elem_count();
        if x.device().is_cuda() {
            let grad = grad_res.contiguous()?;
            let packed = x.apply_op3_no_bwd(gamma, &grad, &LayerNormGrad { eps: self.eps })?;
            let len = x.elem_count();
            return Ok((
                Some(packed.narrow(0, 0, len)?.reshape(x.shape())?),
                Some(packed.narrow(0, len, d)?),
                Some(packed.narrow(0, len + d, d)?),
            ));
        }
        let gamma_v = gamma.to_vec1::<f32>()?;
        let stats = self
            .stats
            .lock()
            .map_err(|_| candle_core::Error::Msg("layer norm statistics poisoned".into()))?;
        if stats.len() * d != x.elem_count() {
            candle_core::bail!("layer norm backward: the forward kept no statistics");
        }
        let (grad_x, grad_gamma, grad_beta) = with_cpu_f32(x, "layer norm backward", |xv| {
            with_cpu_f32(grad_res, "layer norm backward", |g| {
                let mut out = vec![0f32; xv.len()];
                let (grad_gamma, grad_beta) = out
                    .par_chunks_mut(d * ROWS)
                    .zip(xv.par_chunks(d * ROWS).zip(g.par_chunks(d * ROWS)))
                    .zip(stats.par_chunks(ROWS))
                    .fold(
                        || (vec![0f64; d], vec![0f64; d]),
                        |(mut gg, mut gb), ((out, (x, g)), stats)| {
                            for (((out, x), g), &(mean, inv)) in out
                                .chunks_mut(d)
                                .zip(x.chunks(d))
                                .zip(g.chunks(d))
                                .zip(stats)
                            {
                                let (mut s1, mut s2) = (0f32, 0f32);
                                for ch in 0..d {
                                    let xhat = (x[ch] - mean) * inv;
                                    let gh = g[ch] * gamma_v[ch];
                                    s1 += gh;
                                    s2 += gh * xhat;
                                    gg[ch] += (g[ch] * xhat) as f64;
                                    gb[ch] += g[ch] as f64;
                                }
                                let (m1, m2) = (s1 / d as f32, s2 / d as f32);
                                for ch in 0..d {
                                    let xhat = (x[ch] - mean) * inv;
                                    out[ch] = inv * (g[ch] * gamma_v[ch] - m1 - xhat * m2);
                                }
                            }
                            (gg, gb)
                        },
                    )
                    .reduce(
                        || (vec![0f64; d], vec![0f64; d]),
                        |(mut a1, mut a2), (b1, b2)| {
                            a1.iter_mut().zip(&b1).for_each(|(a, b)| *a += b);
                            a2.iter_mut().zip(&b2).for_each(|(a, b)| *a += b);
                            (a1, a2)
                        },
                    );
                let to_f32 = |v: Vec<f64>| v.into_iter().map(|s| s as f32).collect::<Vec<f32>>();
                (out, to_f32(grad_gamma), to_f32(grad_beta))
            })
        })??;
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(grad_x, x.shape(), device)?),
            Some(Tensor::from_vec(grad_gamma, d, device)?),
            Some(Tensor::from_vec(grad_beta, d, device)?),
        ))
    }
}

/// The backward on a GPU: (x, γ, ∂L/∂y) → `[∂x | ∂γ | ∂β]` (flat), the statistics recomputed from x.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct LayerNormGrad {
    eps: f64,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("layer-norm-grad runs on CUDA only (the CPU backward is the op's bwd)")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
        gamma: &candle_core::CudaStorage,
        gamma_layout: &Layout,
        grad: &candle_core::CudaStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{
            alloc, input, launch, layer_norm_partials, per_thread, storage, to_u32, LAYER_NORM,
            LAYER_NORM_ROWS,
        };
        use candle_core::backend::BackendStorage;
        const OP: &str = "layer norm backward";
        let dev = x.device();
        let (xv, gv, gradv) = (
            input(x, x_layout, OP)?,
            input(gamma, gamma_layout, OP)?,
            input(grad, grad_layout, OP)?,
        );
        let (len, d) = (xv.len(), gv.len());
        let rows = len / d;
        let mut out = alloc::<f32>(dev, len + 2 * d)?;
        let mut stats = alloc::<f32>(dev, 2 * rows)?;
        let (rows_u, d_u) = (to_u32(rows, OP)?, to_u32(d, OP)?);
        let (mut dx, mut params) = out.split_at_mut(len);
        // layer_norm_bwd_rows(const float* x, const float* gamma, const float* grad, float* dx, float* stats,
        //                     unsigned d, double eps)
        launch!(
            dev,
            LAYER_NORM,
            "layer_norm_bwd_rows",
            rows_u,
            [&xv, &gv, &gradv, &mut dx, &mut stats, &d_u, &self.eps]
        );
        let (grid, chunks) = layer_norm_partials(rows, d)?;
        let mut partials = alloc::<f64>(dev, 2 * d * chunks as usize)?;
        // layer_norm_bwd_partials(const float* x, const float* grad, const float* stats, double* partials,
        //                         unsigned rows, unsigned d, unsigned chunk, unsigned chunks)
        launch!(
            dev,
            LAYER_NORM,
            "layer_norm_bwd_partials",
            grid,
            [
                &xv,
                &gradv,
                &stats,
                &mut partials,
                &rows_u,
                &d_u,
                &LAYER_NORM_ROWS,
                &chunks
            ]
        );
        let (mut dgamma, mut dbeta) = params.split_at_mut(d);
        // layer_norm_bwd_params(const double* partials, float* dgamma, float* dbeta, unsigned d, unsigned chunks)
        launch!(
            dev,
            LAYER_NORM,
            "layer_norm_bwd_params",
            per_thread(d)?,
            [&partials, &mut dgamma, &mut dbeta, &d_u, &chunks]
        );
        Ok((storage(out, dev), Shape::from(len + 2 * d)))
    }
}

/// LayerNorm of x (…, D) with γ, β (D).
pub fn layer_norm(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let d = x.dims().last().copied().unwrap_or(0);
    if gamma.dims() != [d] || beta.dims() != [d] || d == 0 {
        return Err(Error::Other(format!(
            "layer norm: input {:?}, γ {:?}, β {:?}",
            x.dims(),
            gamma.dims(),
            beta.dims()
        )));
    }
    match Kernel::select(x, true) {
        Kernel::Generic => generic(x, gamma, beta, eps),
        _ => fused(x, gamma, beta, eps),
    }
}

/// The composed version (candle's `layer_norm_slow`, whose backward is right).
pub(crate) fn generic(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(candle_nn::ops::layer_norm_slow(x, gamma, beta, eps as f32)?)
}

/// The kernel op: its CPU body on a CPU tensor, its CUDA body on a GPU.
pub(crate) fn fused(x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f64) -> Result<Tensor> {
    let op = LayerNormOp {
        eps,
        stats: Mutex::new(Vec::new()),
    };
    Ok(x.contiguous()?
        .apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{grads_through, max_abs};
    use candle_core::{Device, Var};

    /// Values and the gradients of x, γ, β against `ops::layer_norm_slow`, rank 3 and 2, rows not a multiple of
    /// the task size, inputs with an offset.
    #[test]
    fn matches_layer_norm_slow_forward_and_backward() {
        let dev = Device::Cpu;
        for dims in [vec![2, 13, 24], vec![5, 7]] {
            let d = *dims.last().unwrap();
            let x = Var::from_tensor(&(Tensor::randn(2f32, 3.0, dims.as_slice(), &dev).unwrap()))
                .unwrap();
            let gamma = Var::from_tensor(&Tensor::randn(1f32, 0.3, d, &dev).unwrap()).unwrap();
            let beta = Var::from_tensor(&Tensor::randn(0f32, 0.3, d, &dev).unwrap()).unwrap();
            let ours = fused(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), 1e-5).unwrap();
            let reference =
                generic(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), 1e-5).unwrap();
            assert!(max_abs(&(&ours - &reference).unwrap()) < 1e-5, "{dims:?}");
            let upstream = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
            let g_ours = grads_through(&ours, &upstream);
            let g_ref = grads_through(&reference, &upstream);
            for v in [x.as_tensor(), gamma.as_tensor(), beta.as_tensor()] {
                let (a, r) = (g_ours.get(v).unwrap(), g_ref.get(v).unwrap());
                assert_eq!(a.dims(), v.dims());
                assert!(max_abs(r) > 1e-2, "{dims:?}: a real gradient");
                let err = max_abs(&(a - r).unwrap()) / max_abs(r);
                assert!(err < 1e-5, "{dims:?}: relative error {err}");
            }
        }
    }
}
