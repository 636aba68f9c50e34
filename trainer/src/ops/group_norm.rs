//! Per-channel GroupNorm (one group per channel, PyTorch `nn.GroupNorm(C, C)`) over the time axis of a
//! channels-last sequence (B, T, C), optionally followed by GELU (erf), as one CPU op with its own backward.
//!
//! For each (b, c): `z = (x − μ_bc) / √(σ²_bc + eps) · γ_c + β_c` with μ, σ² (biased) over the T steps, then
//! `y = z` or `y = z·Φ(z)`.
//!
//! Why: wav2vec2's first conv layer normalises a (2, 29 999, 512) map (123 MB); candle-nn's `GroupNorm` composes
//! ~10 full-size ops (means, centring, squares, broadcasts) whose backward adds as many again, and the GELU after
//! it ~8 more backward. Here the forward is two passes over x and the backward two passes over (x, ∂L/∂y), with
//! the gradients of x, γ and β. Generic: candle-nn's `GroupNorm` (and `gelu_erf`) between transposes.
//!
//! CUDA (`kernels/group_norm.cu`): every kernel that reads x runs on a 2-D grid — (b, chunk of steps) in
//! `blockIdx.y`, blocks of 32 adjacent channels in x, each thread moving down its channel by adds (no 64-bit
//! division per value); per-(b, c) sums in two deterministic stages (partials per chunk of steps, then one block
//! per (b, c) or per channel adding them by a fixed tree), a pass for y; the backward is a second op, stateless
//! (statistics recomputed from x), returning `[∂x | ∂γ | ∂β]` packed.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::gelu::{gelu, gelu_grad};
use super::{contiguous_f32, with_cpu_f32, Kernel};
use crate::error::{Error, Result};

/// Time steps per parallel task (each task reads whole channels-last rows, so reads stay sequential).
const STEPS: usize = 256;

struct GroupNormOp {
    eps: f64,
    gelu: bool,
    /// Filled by the forward, read by the backward: per (b, c), the mean and 1/√(σ² + eps).
    stats: Mutex<Vec<(f32, f32)>>,
}

/// Adds `f(row, b)` over the rows (B·T of them, T per batch element) into per-(b, c) f64 sums, in parallel over
/// blocks of steps.
fn sum_rows(
    rows: usize,
    t: usize,
    c: usize,
    b: usize,
    f: impl Fn(usize, &mut [f64], &mut [f64]) + Sync,
) -> (Vec<f64>, Vec<f64>) {
    (0..rows)
        .into_par_iter()
        .with_min_len(STEPS)
        .fold(
            || (vec![0f64; b * c], vec![0f64; b * c]),
            |(mut s1, mut s2), r| {
                let at = (r / t) * c;
                f(r, &mut s1[at..at + c], &mut s2[at..at + c]);
                (s1, s2)
            },
        )
        .reduce(
            || (vec![0f64; b * c], vec![0f64; b * c]),
            |(mut a1, mut a2), (b1, b2)| {
                a1.iter_mut().zip(&b1).for_each(|(a, b)| *a += b);
                a2.iter_mut().zip(&b2).for_each(|(a, b)| *a += b);
                (a1, a2)
            },
        )
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "group-norm-per-channel"
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
        let (b, t, c) = x_layout.shape().dims3()?;
        let x = contiguous_f32(x_storage, x_layout, "group norm")?;
        let gamma = contiguous_f32(gamma_storage, gamma_layout, "group norm γ")?;
        let beta = contiguous_f32(beta_storage, beta_layout, "group norm β")?;
        // One pass for Σx and Σx² in f64 (exact enough for the variance at these sizes), then one for y.
        let (sum, sum_sq) = sum_rows(b * t, t, c, b, |r, s1, s2| {
            for ((s1, s2), &v) in s1.iter_mut().zip(s2.iter_mut()).zip(&x[r * c..(r + 1) * c]) {
                let v = v as f64;
                *s1 += v;
                *s2 += v * v;
            }
        });
        let stats: Vec<(f32, f32)> = sum
            .iter()
            .zip(&sum_sq)
            .map(|(&s1, &s2)| {
                let mean = s1 / t as f64;
                let var = (s2 / t as f64 - mean * mean).max(0.0);
                (mean as f32, (1.0 / (var + self.eps).sqrt()) as f32)
            })
            .collect();
        // z = x·scale + shift per (b, c)
        let affine: Vec<(f32, f32)> = stats
            .iter()
            .enumerate()
            .map(|(i, &(mean, inv))| {
                let scale = inv * gamma[i % c];
                (scale, beta[i % c] - mean * scale)
            })
            .collect();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(c)
            .zip(x.par_chunks(c))
            .enumerate()
            .with_min_len(STEPS)
            .for_each(|(r, (y, x))| {
                let affine = &affine[(r / t) * c..(r / t + 1) * c];
                for ((y, &x), &(scale, shift)) in y.iter_mut().zip(x).zip(affine) {
                    let z = x * scale + shift;
                    *y = if self.gelu { gelu(z) } else { z };
                }
            });
        *self
            .stats
            .lock()
            .map_err(|_| candle_core::Error::Msg("group norm statistics poisoned".into()))? = stats;
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
        use super::cuda::{
            alloc, group_norm_launches, input, launch, storage, to_u32, GROUP_NORM,
            GROUP_NORM_STEPS, MAX_GRID_Y,
        };
        use candle_core::backend::BackendStorage;
        const OP: &str = "group norm";
        let dev = x.device();
        let (b, t, c) = x_layout.shape().dims3()?;
        let (xv, gv, bv) = (
            input(x, x_layout, OP)?,
            input(gamma, gamma_layout, OP)?,
            input(beta, beta_layout, OP)?,
        );
        let (launches, chunks) = group_norm_launches(b, t, c, MAX_GRID_Y)?;
        let stats = cuda_stats(dev, &xv, (b, t, c), (&launches, chunks), self.eps)?;
        let mut y = alloc::<f32>(dev, xv.len())?;
        let (t_u, c_u, gelu) = (to_u32(t, OP)?, to_u32(c, OP)?, self.gelu as i32);
        for (y0, grid) in &launches {
            // gn_fwd(const float* x, const float* gamma, const float* beta, const float* stats, float* y,
            //        unsigned t, unsigned c, unsigned chunk, unsigned chunks, int gelu, unsigned y0)
            launch!(
                dev,
                GROUP_NORM,
                "gn_fwd",
                *grid,
                [
                    &xv,
                    &gv,
                    &bv,
                    &stats,
                    &mut y,
                    &t_u,
                    &c_u,
                    &GROUP_NORM_STEPS,
                    &chunks,
                    &gelu,
                    y0
                ]
            );
        }
        Ok((storage(y, dev), x_layout.shape().clone()))
    }

    /// With `dz = ∂L/∂z` (∂L/∂y·GELU′(z) when fused) and x̂ = (x − μ)/σ:
    /// `∂L/∂γ = Σ dz·x̂`, `∂L/∂β = Σ dz`, `∂L/∂x = γ/σ · (dz − mean_t(dz) − x̂·mean_t(dz·x̂))`.
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, t, c) = x.dims3()?;
        if x.device().is_cuda() {
            let op = GroupNormGrad {
                eps: self.eps,
                gelu: self.gelu,
                beta: beta.contiguous()?,
            };
            let packed = x.apply_op3_no_bwd(gamma, &grad_res.contiguous()?, &op)?;
            let len = x.elem_count();
            return Ok((
                Some(packed.narrow(0, 0, len)?.reshape((b, t, c))?),
                Some(packed.narrow(0, len, c)?),
                Some(packed.narrow(0, len + c, c)?),
            ));
        }
        let stats = self
            .stats
            .lock()
            .map_err(|_| candle_core::Error::Msg("group norm statistics poisoned".into()))?
            .clone();
        if stats.len() != b * c {
            candle_core::bail!("group norm backward: the forward kept no statistics");
        }
        let gamma_v = gamma.to_vec1::<f32>()?;
        let beta_v = beta.to_vec1::<f32>()?;
        let (grad_x, s1, s2) = with_cpu_f32(x, "group norm backward", |xv| {
            with_cpu_f32(
                grad_res,
                "group norm backward",
                |g| -> candle_core::Result<_> {
                    // Pass 1: dz into the output buffer, Σ dz and Σ dz·x̂ per (b, c).
                    let mut out = vec![0f32; xv.len()];
                    out.par_chunks_mut(c)
                        .enumerate()
                        .with_min_len(STEPS)
                        .for_each(|(r, out)| {
                            let st = &stats[(r / t) * c..(r / t + 1) * c];
                            let (xr, gr) = (&xv[r * c..(r + 1) * c], &g[r * c..(r + 1) * c]);
                            for ch in 0..c {
                                let (mean, inv) = st[ch];
                                let xhat = (xr[ch] - mean) * inv;
                                out[ch] = if self.gelu {
                                    gr[ch] * gelu_grad(xhat * gamma_v[ch] + beta_v[ch])
                                } else {
                                    gr[ch]
                                };
                            }
                        });
                    let (s1, s2) = sum_rows(b * t, t, c, b, |r, s1, s2| {
                        let st = &stats[(r / t) * c..(r / t + 1) * c];
                        let (xr, dz) = (&xv[r * c..(r + 1) * c], &out[r * c..(r + 1) * c]);
                        for ch in 0..c {
                            let xhat = (xr[ch] - st[ch].0) * st[ch].1;
                            s1[ch] += dz[ch] as f64;
                            s2[ch] += (dz[ch] * xhat) as f64;
                        }
                    });
                    // Pass 2: ∂L/∂x in place.
                    let mean1: Vec<f32> = s1.iter().map(|&s| (s / t as f64) as f32).collect();
                    let mean2: Vec<f32> = s2.iter().map(|&s| (s / t as f64) as f32).collect();
                    out.par_chunks_mut(c)
                        .enumerate()
                        .with_min_len(STEPS)
                        .for_each(|(r, out)| {
                            let at = (r / t) * c;
                            let xr = &xv[r * c..(r + 1) * c];
                            for ch in 0..c {
                                let (mean, inv) = stats[at + ch];
                                let xhat = (xr[ch] - mean) * inv;
                                out[ch] = gamma_v[ch]
                                    * inv
                                    * (out[ch] - mean1[at + ch] - xhat * mean2[at + ch]);
                            }
                        });
                    Ok((out, s1, s2))
                },
            )
        })???;
        let per_channel = |s: &[f64]| -> Vec<f32> {
            (0..c)
                .map(|ch| (0..b).map(|bi| s[bi * c + ch]).sum::<f64>() as f32)
                .collect()
        };
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(grad_x, (b, t, c), device)?),
            Some(Tensor::from_vec(per_channel(&s2), c, device)?),
            Some(Tensor::from_vec(per_channel(&s1), c, device)?),
        ))
    }
}

/// Per (b, c) the f32 mean and 1/√(σ² + eps), as `[mean, inv]` pairs: `gn_partials` over `launches` (from
/// [`super::cuda::group_norm_launches`], with its `chunks`), then `gn_stats`, one block per (b, c).
#[cfg(feature = "cuda")]
fn cuda_stats(
    dev: &candle_core::cuda_backend::CudaDevice,
    x: &candle_core::cuda_backend::cudarc::driver::CudaView<'_, f32>,
    (b, t, c): (usize, usize, usize),
    (launches, chunks): (&[(u32, super::cuda::Grid)], u32),
    eps: f64,
) -> candle_core::Result<candle_core::cuda_backend::cudarc::driver::CudaSlice<f32>> {
    use super::cuda::{alloc, launch, per_block, to_u32, GROUP_NORM, GROUP_NORM_STEPS};
    const OP: &str = "group norm";
    let mut partials = alloc::<f64>(dev, 2 * b * c * chunks as usize)?;
    let (t_u, c_u) = (to_u32(t, OP)?, to_u32(c, OP)?);
    for (y0, grid) in launches {
        // gn_partials(const float* x, double* partials, unsigned t, unsigned c, unsigned chunk, unsigned chunks,
        //             unsigned y0)
        launch!(
            dev,
            GROUP_NORM,
            "gn_partials",
            *grid,
            [x, &mut partials, &t_u, &c_u, &GROUP_NORM_STEPS, &chunks, y0]
        );
    }
    let mut stats = alloc::<f32>(dev, 2 * b * c)?;
    // gn_stats(const double* partials, float* stats, unsigned chunks, unsigned t, double eps)
    launch!(
        dev,
        GROUP_NORM,
        "gn_stats",
        per_block(b * c)?,
        [&partials, &mut stats, &chunks, &t_u, &eps]
    );
    Ok(stats)
}

/// The backward on a GPU: (x, γ, ∂L/∂y) with β beside them → `[∂x | ∂γ | ∂β]` (flat), statistics recomputed.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct GroupNormGrad {
    eps: f64,
    gelu: bool,
    /// Read by the kernels (GELU′ at x̂·γ + β); contiguous, on the device of x.
    beta: Tensor,
}

impl CustomOp3 for GroupNormGrad {
    fn name(&self) -> &'static str {
        "group-norm-grad"
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
        candle_core::bail!("group-norm-grad runs on CUDA only (the CPU backward is the op's bwd)")
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
            alloc, group_norm_launches, input, launch, per_block, storage, to_u32, with_tensor,
            GROUP_NORM, GROUP_NORM_STEPS, MAX_GRID_Y,
        };
        use candle_core::backend::BackendStorage;
        const OP: &str = "group norm backward";
        let dev = x.device();
        let (b, t, c) = x_layout.shape().dims3()?;
        let (xv, gv, gradv) = (
            input(x, x_layout, OP)?,
            input(gamma, gamma_layout, OP)?,
            input(grad, grad_layout, OP)?,
        );
        let len = xv.len();
        let (launches, chunks) = group_norm_launches(b, t, c, MAX_GRID_Y)?;
        let stats = cuda_stats(dev, &xv, (b, t, c), (&launches, chunks), self.eps)?;
        let (b_u, t_u, c_u, gelu) = (
            to_u32(b, OP)?,
            to_u32(t, OP)?,
            to_u32(c, OP)?,
            self.gelu as i32,
        );
        let mut out = alloc::<f32>(dev, len + 2 * c)?;
        with_tensor(&self.beta, OP, |bv| {
            let mut partials = alloc::<f64>(dev, 2 * b * c * chunks as usize)?;
            for (y0, grid) in &launches {
                // gn_bwd_partials(const float* x, const float* grad, const float* gamma, const float* beta,
                //                 const float* stats, double* partials, unsigned t, unsigned c, unsigned chunk,
                //                 unsigned chunks, int gelu, unsigned y0)
                launch!(
                    dev,
                    GROUP_NORM,
                    "gn_bwd_partials",
                    *grid,
                    [
                        &xv,
                        &gradv,
                        &gv,
                        &bv,
                        &stats,
                        &mut partials,
                        &t_u,
                        &c_u,
                        &GROUP_NORM_STEPS,
                        &chunks,
                        &gelu,
                        y0
                    ]
                );
            }
            let mut means = alloc::<f32>(dev, 2 * b * c)?;
            let (mut dx, mut params) = out.split_at_mut(len);
            let (mut dgamma, mut dbeta) = params.split_at_mut(c);
            // gn_bwd_finish(const double* partials, float* means, float* dgamma, float* dbeta, unsigned b,
            //               unsigned c, unsigned chunks, unsigned t)
            launch!(
                dev,
                GROUP_NORM,
                "gn_bwd_finish",
                per_block(c)?,
                [
                    &partials,
                    &mut means,
                    &mut dgamma,
                    &mut dbeta,
                    &b_u,
                    &c_u,
                    &chunks,
                    &t_u
                ]
            );
            for (y0, grid) in &launches {
                // gn_bwd_dx(const float* x, const float* grad, const float* gamma, const float* beta,
                //           const float* stats, const float* means, float* dx, unsigned t, unsigned c,
                //           unsigned chunk, unsigned chunks, int gelu, unsigned y0)
                launch!(
                    dev,
                    GROUP_NORM,
                    "gn_bwd_dx",
                    *grid,
                    [
                        &xv,
                        &gradv,
                        &gv,
                        &bv,
                        &stats,
                        &means,
                        &mut dx,
                        &t_u,
                        &c_u,
                        &GROUP_NORM_STEPS,
                        &chunks,
                        &gelu,
                        y0
                    ]
                );
            }
            Ok(())
        })?;
        Ok((storage(out, dev), Shape::from(len + 2 * c)))
    }
}

/// GroupNorm with one group per channel over the steps of x (B, T, C), affine γ, β (C), then GELU (erf) if
/// `gelu`. The fused op for f32 on the CPU; candle-nn's `GroupNorm` (channels-first) elsewhere.
pub fn group_norm_per_channel(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    gelu: bool,
) -> Result<Tensor> {
    let (_, t, c) = x.dims3()?;
    if gamma.dims() != [c] || beta.dims() != [c] || t == 0 {
        return Err(Error::Other(format!(
            "group norm over {c} channels: input {:?}, γ {:?}, β {:?}",
            x.dims(),
            gamma.dims(),
            beta.dims()
        )));
    }
    match Kernel::select(x, true) {
        Kernel::Generic => generic(x, gamma, beta, eps, gelu),
        _ => fused(x, gamma, beta, eps, gelu),
    }
}

pub(crate) fn generic(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    gelu: bool,
) -> Result<Tensor> {
    let c = gamma.elem_count();
    let norm = candle_nn::GroupNorm::new(gamma.clone(), beta.clone(), c, c, eps)?;
    let y = candle_core::Module::forward(&norm, &x.transpose(1, 2)?.contiguous()?)?;
    let y = if gelu { y.gelu_erf()? } else { y };
    Ok(y.transpose(1, 2)?)
}

/// The kernel op: its CPU body on a CPU tensor, its CUDA body on a GPU.
pub(crate) fn fused(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    gelu: bool,
) -> Result<Tensor> {
    let op = GroupNormOp {
        eps,
        gelu,
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

    /// Values and gradients of x, γ and β against candle-nn's composed GroupNorm (+ gelu_erf), batch > 1, with
    /// and without GELU, T not a multiple of the task size.
    #[test]
    fn matches_candle_nn_group_norm_forward_and_backward() {
        let dev = Device::Cpu;
        for (b, t, c, fused_gelu) in [(2, 600, 5, true), (3, 37, 4, false), (1, 300, 3, true)] {
            // channels with an offset and a scale each, as conv outputs have
            let x = (Tensor::randn(0f32, 1.0, (b, t, c), &dev).unwrap() * 3.0).unwrap();
            let x = Var::from_tensor(&(x + 1.5).unwrap()).unwrap();
            let gamma = Var::from_tensor(&Tensor::randn(1f32, 0.3, c, &dev).unwrap()).unwrap();
            let beta = Var::from_tensor(&Tensor::randn(0f32, 0.3, c, &dev).unwrap()).unwrap();
            let (x_t, g_t, b_t) = (x.as_tensor(), gamma.as_tensor(), beta.as_tensor());
            let ours = fused(x_t, g_t, b_t, 1e-5, fused_gelu).unwrap();
            let reference = generic(x_t, g_t, b_t, 1e-5, fused_gelu).unwrap();
            let case = format!("b{b} t{t} c{c} gelu {fused_gelu}");
            assert!(max_abs(&(&ours - &reference).unwrap()) < 1e-5, "{case}");
            let upstream = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
            let g_ours = grads_through(&ours, &upstream);
            let g_ref = grads_through(&reference, &upstream);
            for v in [x.as_tensor(), gamma.as_tensor(), beta.as_tensor()] {
                let (a, r) = (g_ours.get(v).unwrap(), g_ref.get(v).unwrap());
                assert_eq!(a.dims(), v.dims());
                let err = max_abs(&(a - r).unwrap()) / max_abs(r);
                assert!(err < 1e-4, "{case}: relative error {err}");
            }
        }
    }

    /// ∂/∂x against central differences of the op itself (f64-free check of the backward formula).
    #[test]
    fn input_gradient_matches_finite_differences() {
        let dev = Device::Cpu;
        let (b, t, c) = (2, 9, 3);
        let xv: Vec<f32> = (0..b * t * c)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 3.0)
            .collect();
        let gamma = Tensor::new(&[1.2f32, 0.7, -0.5], &dev).unwrap();
        let beta = Tensor::new(&[0.1f32, -0.3, 0.4], &dev).unwrap();
        let weights: Vec<f32> = (0..b * t * c)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 5.0)
            .collect();
        let w = Tensor::from_vec(weights, (b, t, c), &dev).unwrap();
        let loss = |xv: &[f32]| -> f64 {
            let x = Tensor::from_vec(xv.to_vec(), (b, t, c), &dev).unwrap();
            let y = group_norm_per_channel(&x, &gamma, &beta, 1e-5, true).unwrap();
            (y * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        };
        let x = Var::from_tensor(&Tensor::from_vec(xv.clone(), (b, t, c), &dev).unwrap()).unwrap();
        let y = group_norm_per_channel(x.as_tensor(), &gamma, &beta, 1e-5, true).unwrap();
        let grads = grads_through(&y, &w);
        let analytic = grads
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let h = 1e-2f32;
        for i in [0, 4, 13, 27, 40, b * t * c - 1] {
            let (mut plus, mut minus) = (xv.clone(), xv.clone());
            plus[i] += h;
            minus[i] -= h;
            let numeric = (loss(&plus) - loss(&minus)) / (2.0 * h as f64);
            assert!(
                (analytic[i] as f64 - numeric).abs() < 2e-3,
                "x[{i}]: {} vs {numeric}",
                analytic[i]
            );
        }
    }
}
