//! 2-D batch normalisation as PyTorch's `nn.BatchNorm2d` (eps, momentum 0.1, affine) and an optional ReLU, with
//! a fused CPU kernel. The layer holding the tensors is [`crate::nn::BatchNorm`].
//!
//! Per channel c of x (N, C, H, W), over its M = N·H·W values:
//! `y = (x − μ_c) / √(σ²_c + eps) · γ_c + β_c`, where in **training** μ and σ² are the batch mean and the
//! *biased* variance, and the running statistics move as `r ← (1 − m)·r + m·s` with the *unbiased* variance
//! (σ²·M/(M−1)) for `running_var`; in **evaluation** μ and σ² are the running statistics.
//!
//! Why not `candle_nn::BatchNorm`: its values and running statistics are right (checked against PyTorch), but it
//! is built from ~10 separate tensor ops (a transposed copy, means, squares, broadcasts) whose backward passes
//! add as many again; on the CPU a ResNet-50 step spent a large share of its time there. Here the whole forward is
//! two passes over x and the backward two passes over (x, ∂L/∂y), as a candle custom op with its own gradient for
//! x, γ and β. Generic: `candle_nn::BatchNorm` over the same variables.
//!
//! CUDA (`kernels/batch_norm.cu`): the same op's `cuda_fwd` returns one packed buffer — y, then per channel the
//! mean, variance and 1/√(σ² + eps) it normalised with — narrowed here into y and the statistics; in training the
//! running statistics move by tensor ops on the device (nothing comes back to the host). The backward is a second
//! op that reads x, that packed output and ∂L/∂y (no state kept between the passes) and returns
//! `[∂x | ∂γ | ∂β]` packed. Every kernel that reads x runs on a 2-D grid — the channel in `blockIdx.y`, chunks of
//! its N·H·W values in x, walked with 32-bit counters (no 64-bit division per value); channel sums run in
//! deterministic stages (partials per chunk, then one block per channel adding them by a fixed tree).

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, ModuleT, Shape, Tensor, Var};
use rayon::prelude::*;

use super::{contiguous_f32, with_cpu_f32, Kernel};
use crate::error::{Error, Result};

const EPS: f64 = 1e-5;
const MOMENTUM: f64 = 0.1;

/// The tensors of a BatchNorm2d: affine weight and bias (C), running statistics (C) as variables (training
/// moves them in place, so that the store that owns them saves the new values).
pub struct BatchNormTensors<'a> {
    pub weight: &'a Tensor,
    pub bias: &'a Tensor,
    pub running_mean: &'a Var,
    pub running_var: &'a Var,
}

/// BatchNorm2d of x (N, C, H, W) → (N, C, H, W), then ReLU when `relu` (the same pass: candle's ReLU costs a pass
/// forward and four backward, and ResNet follows most of its BatchNorms with one); `train` uses batch statistics
/// and moves the running ones.
pub fn batch_norm(x: &Tensor, t: &BatchNormTensors<'_>, train: bool, relu: bool) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    let channels = t.weight.elem_count();
    if c != channels {
        return Err(Error::Other(format!(
            "batch norm over {channels} channels got an input of shape {:?}",
            x.dims()
        )));
    }
    match Kernel::select(x, true) {
        Kernel::Generic => generic(x, t, train, relu),
        Kernel::Cuda => cuda(x, t, train, relu),
        Kernel::Cpu => fused(x, t, train, relu),
    }
}

/// candle's own layer over the same variables (values and running statistics checked against PyTorch).
pub(crate) fn generic(
    x: &Tensor,
    t: &BatchNormTensors<'_>,
    train: bool,
    relu: bool,
) -> Result<Tensor> {
    let layer = candle_nn::BatchNorm::new_with_momentum(
        t.weight.elem_count(),
        t.running_mean.as_tensor().clone(),
        t.running_var.as_tensor().clone(),
        t.weight.clone(),
        t.bias.clone(),
        EPS,
        MOMENTUM,
    )?;
    let y = layer.forward_t(x, train)?;
    Ok(if relu { y.relu()? } else { y })
}

/// The CPU kernel.
pub(crate) fn fused(
    x: &Tensor,
    t: &BatchNormTensors<'_>,
    train: bool,
    relu: bool,
) -> Result<Tensor> {
    let stats = if train {
        None
    } else {
        let mean = t.running_mean.as_detached_tensor().to_vec1::<f32>()?;
        let var = t.running_var.as_detached_tensor().to_vec1::<f32>()?;
        Some(
            mean.iter()
                .zip(&var)
                .map(|(&m, &v)| ChannelStats {
                    mean: m,
                    inv_std: (1.0 / (v as f64 + EPS).sqrt()) as f32,
                    var: v as f64,
                })
                .collect(),
        )
    };
    let op = BatchNormOp {
        train,
        relu,
        stats: Arc::new(Mutex::new(stats)),
        running: None,
    };
    let stats = op.stats.clone();
    let y = x
        .contiguous()?
        .apply_op3(&t.weight.contiguous()?, &t.bias.contiguous()?, op)?;
    if train {
        let stats = stats
            .lock()
            .map_err(|_| Error::Other("batch-norm statistics poisoned".into()))?;
        let stats = stats.as_ref().ok_or_else(|| {
            Error::Other("batch norm: the forward kernel kept no statistics".into())
        })?;
        let (n, _, h, w) = x.dims4()?;
        update_running(t, stats, n * h * w)?;
    }
    Ok(y)
}

/// The CUDA kernel: the op's packed output narrowed into y and, in training, the batch statistics that move the
/// running ones (tensor ops on the device).
fn cuda(x: &Tensor, t: &BatchNormTensors<'_>, train: bool, relu: bool) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let running = if train {
        None
    } else {
        Some((
            t.running_mean.as_detached_tensor().contiguous()?,
            t.running_var.as_detached_tensor().contiguous()?,
        ))
    };
    let op = BatchNormOp {
        train,
        relu,
        stats: Arc::new(Mutex::new(None)),
        running,
    };
    let packed = x
        .contiguous()?
        .apply_op3(&t.weight.contiguous()?, &t.bias.contiguous()?, op)?;
    let len = x.elem_count();
    if train {
        let stats = packed.narrow(0, len, 2 * c)?.detach();
        update_running_on_device(
            t,
            &stats.narrow(0, 0, c)?,
            &stats.narrow(0, c, c)?,
            n * h * w,
        )?;
    }
    Ok(packed.narrow(0, 0, len)?.reshape((n, c, h, w))?)
}

/// [`update_running`] from the batch mean and biased variance as device tensors (C).
fn update_running_on_device(
    t: &BatchNormTensors<'_>,
    mean: &Tensor,
    var: &Tensor,
    count: usize,
) -> Result<()> {
    let unbias = if count > 1 {
        count as f64 / (count - 1) as f64
    } else {
        1.0
    };
    let old_mean = t.running_mean.as_detached_tensor();
    let old_var = t.running_var.as_detached_tensor();
    let new_mean = (old_mean.affine(1.0 - MOMENTUM, 0.0)? + mean.affine(MOMENTUM, 0.0)?)?;
    let new_var = (old_var.affine(1.0 - MOMENTUM, 0.0)? + var.affine(MOMENTUM * unbias, 0.0)?)?;
    t.running_mean.set(&new_mean.to_dtype(old_mean.dtype())?)?;
    t.running_var.set(&new_var.to_dtype(old_var.dtype())?)?;
    Ok(())
}

fn update_running(t: &BatchNormTensors<'_>, stats: &[ChannelStats], count: usize) -> Result<()> {
    // PyTorch's unbiased correction M/(M−1). With a single value per channel (PyTorch refuses to train on
    // that) the running variance takes the biased one, 0, rather than ∞.
    let unbias = if count > 1 {
        count as f64 / (count - 1) as f64
    } else {
        1.0
    };
    let device = t.running_mean.device().clone();
    let old_mean = t.running_mean.as_detached_tensor().to_vec1::<f32>()?;
    let old_var = t.running_var.as_detached_tensor().to_vec1::<f32>()?;
    let mean: Vec<f32> = old_mean
        .iter()
        .zip(stats)
        .map(|(&r, s)| ((1.0 - MOMENTUM) * r as f64 + MOMENTUM * s.mean as f64) as f32)
        .collect();
    let var: Vec<f32> = old_var
        .iter()
        .zip(stats)
        .map(|(&r, s)| ((1.0 - MOMENTUM) * r as f64 + MOMENTUM * s.var * unbias) as f32)
        .collect();
    t.running_mean
        .set(&Tensor::from_vec(mean, stats.len(), &device)?)?;
    t.running_var
        .set(&Tensor::from_vec(var, stats.len(), &device)?)?;
    Ok(())
}

/// One channel's normalisation: its mean, 1/√(σ² + eps) and σ² (biased in training).
#[derive(Debug, Clone, Copy)]
struct ChannelStats {
    mean: f32,
    inv_std: f32,
    var: f64,
}

/// The fused kernel: arguments x (N, C, H, W), γ (C), β (C). In training `stats` starts empty and the forward
/// fills it with the batch statistics (read back by the layer and by the backward); in evaluation it holds the
/// running statistics.
struct BatchNormOp {
    train: bool,
    /// Whether a ReLU follows (fused): y = max(0, bn(x)).
    relu: bool,
    stats: Arc<Mutex<Option<Vec<ChannelStats>>>>,
    /// CUDA, evaluation: the running mean and variance (C each, on the device), which the kernel normalises with.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    running: Option<(Tensor, Tensor)>,
}

/// Sum of `f` over a slice, with eight independent accumulators so that the compiler can vectorise it (a single
/// float accumulator is a serial dependency chain), finished in f64.
fn sum_by(values: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut lanes = [0f32; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    let mut total: f64 = lanes.iter().map(|&l| l as f64).sum();
    for &v in tail {
        total += f(v) as f64;
    }
    total
}

/// Like [`sum_by`] over pairs of equal-length slices.
fn sum_pairs(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    let mut lanes = [0f32; 8];
    let chunks_a = a.chunks_exact(8);
    let chunks_b = b.chunks_exact(8);
    let (tail_a, tail_b) = (chunks_a.remainder(), chunks_b.remainder());
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for i in 0..8 {
            lanes[i] += f(ca[i], cb[i]);
        }
    }
    let mut total: f64 = lanes.iter().map(|&l| l as f64).sum();
    for (&x, &y) in tail_a.iter().zip(tail_b) {
        total += f(x, y) as f64;
    }
    total
}

/// The slices of channel `c` (one per image) of a contiguous (N, C, HW) buffer.
fn planes(data: &[f32], c: usize, channels: usize, hw: usize) -> impl Iterator<Item = &[f32]> {
    data.chunks_exact(channels * hw)
        .map(move |image| &image[c * hw..(c + 1) * hw])
}

/// Batch mean and biased variance of every channel (two passes: the variance is taken around the mean, which
/// keeps it accurate when the mean is large next to the spread).
fn batch_stats(x: &[f32], channels: usize, hw: usize) -> Vec<ChannelStats> {
    let count = (x.len() / channels) as f64;
    (0..channels)
        .into_par_iter()
        .map(|c| {
            let mean = (planes(x, c, channels, hw)
                .map(|p| sum_by(p, |v| v))
                .sum::<f64>()
                / count) as f32;
            let var = planes(x, c, channels, hw)
                .map(|p| {
                    sum_by(p, |v| {
                        let d = v - mean;
                        d * d
                    })
                })
                .sum::<f64>()
                / count;
            ChannelStats {
                mean,
                inv_std: (1.0 / (var + EPS).sqrt()) as f32,
                var,
            }
        })
        .collect()
}

fn cpu_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> candle_core::Result<&'a [f32]> {
    contiguous_f32(storage, layout, &format!("batch norm ({what})"))
}

/// [`with_cpu_f32`] for a fallible `f`.
fn with_values<R>(
    t: &Tensor,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    with_cpu_f32(t, "batch norm backward", f)?
}

impl CustomOp3 for BatchNormOp {
    fn name(&self) -> &'static str {
        "batch-norm-2d"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        w_storage: &CpuStorage,
        w_layout: &Layout,
        b_storage: &CpuStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (_, channels, h, w) = x_layout.shape().dims4()?;
        let hw = h * w;
        let x = cpu_f32(x_storage, x_layout, "input")?;
        let gamma = cpu_f32(w_storage, w_layout, "weight")?;
        let beta = cpu_f32(b_storage, b_layout, "bias")?;
        let mut guard = self
            .stats
            .lock()
            .map_err(|_| candle_core::Error::Msg("batch-norm statistics poisoned".into()))?;
        let stats = guard.get_or_insert_with(|| batch_stats(x, channels, hw));
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .enumerate()
            .for_each(|(plane, (out, input))| {
                let c = plane % channels;
                let (mean, scale, shift) = (stats[c].mean, stats[c].inv_std * gamma[c], beta[c]);
                if self.relu {
                    for (o, &v) in out.iter_mut().zip(input) {
                        *o = ((v - mean) * scale + shift).max(0.0);
                    }
                } else {
                    for (o, &v) in out.iter_mut().zip(input) {
                        *o = (v - mean) * scale + shift;
                    }
                }
            });
        Ok((CpuStorage::F32(y), x_layout.shape().clone()))
    }

    /// The packed `[y | mean | var | 1/√(var + eps)]` (len + 3C values): batch statistics in training, the
    /// running ones in evaluation.
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
        w: &candle_core::CudaStorage,
        w_layout: &Layout,
        b: &candle_core::CudaStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{
            alloc, batch_norm_launches, input, launch, per_block, per_thread, storage, to_u32,
            with_tensor, BATCH_NORM, BATCH_NORM_CHUNK, MAX_GRID_Y,
        };
        use candle_core::backend::BackendStorage;
        const OP: &str = "batch norm";
        let dev = x.device();
        let (n, channels, h, w_) = x_layout.shape().dims4()?;
        let (xv, gamma, beta) = (
            input(x, x_layout, OP)?,
            input(w, w_layout, OP)?,
            input(b, b_layout, OP)?,
        );
        let (hw, len) = (h * w_, xv.len());
        let (launches, chunks) = batch_norm_launches(n, channels, hw, MAX_GRID_Y)?;
        let (c_u, hw_u, count, count_u64, len_u, relu) = (
            to_u32(channels, OP)?,
            to_u32(hw, OP)?,
            to_u32(n * hw, OP)?,
            (n * hw) as u64,
            len as u64,
            self.relu as i32,
        );
        let mut out = alloc::<f32>(dev, len + 3 * channels)?;
        if self.train {
            let mut partials = alloc::<f64>(dev, channels * chunks as usize)?;
            for (y0, grid) in &launches {
                // bn_sum_partials(const float* x, double* partials, unsigned channels, unsigned hw,
                //                 unsigned count, unsigned chunk, unsigned y0)
                launch!(
                    dev,
                    BATCH_NORM,
                    "bn_sum_partials",
                    *grid,
                    [
                        &xv,
                        &mut partials,
                        &c_u,
                        &hw_u,
                        &count,
                        &BATCH_NORM_CHUNK,
                        y0
                    ]
                );
            }
            // bn_mean(const double* partials, float* out, unsigned chunks, unsigned long long count,
            //         unsigned long long len)
            launch!(
                dev,
                BATCH_NORM,
                "bn_mean",
                per_block(channels)?,
                [&partials, &mut out, &chunks, &count_u64, &len_u]
            );
            for (y0, grid) in &launches {
                // bn_sqdev_partials(const float* x, const float* out, double* partials, unsigned channels,
                //                   unsigned hw, unsigned count, unsigned chunk, unsigned long long len,
                //                   unsigned y0)
                launch!(
                    dev,
                    BATCH_NORM,
                    "bn_sqdev_partials",
                    *grid,
                    [
                        &xv,
                        &out,
                        &mut partials,
                        &c_u,
                        &hw_u,
                        &count,
                        &BATCH_NORM_CHUNK,
                        &len_u,
                        y0
                    ]
                );
            }
            // bn_var(const double* partials, float* out, unsigned channels, unsigned chunks,
            //        unsigned long long count, unsigned long long len, double eps)
            launch!(
                dev,
                BATCH_NORM,
                "bn_var",
                per_block(channels)?,
                [&partials, &mut out, &c_u, &chunks, &count_u64, &len_u, &EPS]
            );
        } else {
            let Some((mean, var)) = &self.running else {
                candle_core::bail!("batch norm: evaluation on CUDA without the running statistics")
            };
            with_tensor(mean, OP, |mean| {
                with_tensor(var, OP, |var| {
                    // bn_eval_stats(const float* running_mean, const float* running_var, float* out,
                    //               unsigned channels, unsigned long long len, double eps)
                    launch!(
                        dev,
                        BATCH_NORM,
                        "bn_eval_stats",
                        per_thread(channels)?,
                        [&mean, &var, &mut out, &c_u, &len_u, &EPS]
                    );
                    Ok(())
                })
            })?;
        }
        for (y0, grid) in &launches {
            // bn_fwd(const float* x, const float* gamma, const float* beta, float* out, unsigned channels,
            //        unsigned hw, unsigned count, unsigned chunk, unsigned long long len, int relu, unsigned y0)
            launch!(
                dev,
                BATCH_NORM,
                "bn_fwd",
                *grid,
                [
                    &xv,
                    &gamma,
                    &beta,
                    &mut out,
                    &c_u,
                    &hw_u,
                    &count,
                    &BATCH_NORM_CHUNK,
                    &len_u,
                    &relu,
                    y0
                ]
            );
        }
        Ok((storage(out, dev), Shape::from(len + 3 * channels)))
    }

    /// With x̂ = (x − μ)/s, s = √(σ² + eps), g = ∂L/∂y: ∂L/∂β = Σg, ∂L/∂γ = Σ g·x̂ (sums over N, H, W), and
    /// ∂L/∂x = γ/s · (g − Σg/M − x̂·Σ(g·x̂)/M) in training (μ, σ² depend on x), γ/s · g in evaluation.
    /// With the fused ReLU, g is the output's gradient where the output is positive and 0 elsewhere (PyTorch's
    /// rule at exactly 0).
    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, channels, h, w) = x.dims4()?;
        if x.device().is_cuda() {
            let op = BatchNormGrad {
                train: self.train,
                relu: self.relu,
                gamma: gamma.contiguous()?,
            };
            let packed = x.apply_op3_no_bwd(res, &grad_res.contiguous()?, &op)?;
            let len = x.elem_count();
            return Ok((
                Some(packed.narrow(0, 0, len)?.reshape((n, channels, h, w))?),
                Some(packed.narrow(0, len, channels)?),
                Some(packed.narrow(0, len + channels, channels)?),
            ));
        }
        let hw = h * w;
        let count = (n * hw) as f64;
        let stats = self
            .stats
            .lock()
            .map_err(|_| candle_core::Error::Msg("batch-norm statistics poisoned".into()))?
            .clone()
            .ok_or_else(|| candle_core::Error::Msg("batch norm: backward before forward".into()))?;
        let batch_statistics = self.train;
        let gamma_values = gamma.to_vec1::<f32>()?;
        let grad_res = if self.relu {
            let masked = with_values(res, |ys| {
                with_values(grad_res, |gs| {
                    let mut out = vec![0f32; gs.len()];
                    out.par_chunks_mut(1 << 14)
                        .zip(ys.par_chunks(1 << 14).zip(gs.par_chunks(1 << 14)))
                        .for_each(|(o, (yc, gc))| {
                            for ((o, &y), &g) in o.iter_mut().zip(yc).zip(gc) {
                                *o = if y > 0.0 { g } else { 0.0 };
                            }
                        });
                    Ok(out)
                })
            })?;
            Tensor::from_vec(masked, grad_res.shape(), &candle_core::Device::Cpu)?
        } else {
            grad_res.clone()
        };
        let (grad_x, grad_gamma, grad_beta) = with_values(x, |xs| {
            with_values(&grad_res, |gs| {
                // Σg and Σ g·x̂ per channel
                let sums: Vec<(f64, f64)> = (0..channels)
                    .into_par_iter()
                    .map(|c| {
                        let s = stats[c];
                        let mut sum_g = 0f64;
                        let mut sum_g_xhat = 0f64;
                        for (xp, gp) in planes(xs, c, channels, hw).zip(planes(gs, c, channels, hw))
                        {
                            sum_g += sum_by(gp, |g| g);
                            sum_g_xhat += sum_pairs(xp, gp, |v, g| g * (v - s.mean));
                        }
                        (sum_g, sum_g_xhat * s.inv_std as f64)
                    })
                    .collect();
                let mut grad_x = vec![0f32; xs.len()];
                grad_x
                    .par_chunks_mut(hw)
                    .zip(xs.par_chunks(hw).zip(gs.par_chunks(hw)))
                    .enumerate()
                    .for_each(|(plane, (out, (xp, gp)))| {
                        let c = plane % channels;
                        let s = stats[c];
                        let scale = gamma_values[c] * s.inv_std;
                        if batch_statistics {
                            let mean_g = (sums[c].0 / count) as f32;
                            // x̂·Σ(g·x̂)/M = (x − μ)·k with k = inv_std·Σ(g·x̂)/M
                            let k = (sums[c].1 / count) as f32 * s.inv_std;
                            for ((o, &v), &g) in out.iter_mut().zip(xp).zip(gp) {
                                *o = scale * (g - mean_g - (v - s.mean) * k);
                            }
                        } else {
                            for (o, &g) in out.iter_mut().zip(gp) {
                                *o = scale * g;
                            }
                        }
                    });
                let grad_gamma: Vec<f32> = sums.iter().map(|s| s.1 as f32).collect();
                let grad_beta: Vec<f32> = sums.iter().map(|s| s.0 as f32).collect();
                Ok((grad_x, grad_gamma, grad_beta))
            })
        })?;
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(grad_x, (n, channels, h, w), device)?),
            Some(Tensor::from_vec(grad_gamma, channels, device)?),
            Some(Tensor::from_vec(grad_beta, channels, device)?),
        ))
    }
}

/// The backward on a GPU: (x, the forward's packed output, ∂L/∂(packed output)) with γ beside them →
/// `[∂x | ∂γ | ∂β]` (flat). The statistics come from the packed output: nothing is kept between the passes.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct BatchNormGrad {
    train: bool,
    relu: bool,
    /// Read by the kernels; contiguous, on the device of x.
    gamma: Tensor,
}

impl CustomOp3 for BatchNormGrad {
    fn name(&self) -> &'static str {
        "batch-norm-2d-grad"
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
        candle_core::bail!(
            "batch-norm-2d-grad runs on CUDA only (the CPU backward is the op's bwd)"
        )
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
        res: &candle_core::CudaStorage,
        res_layout: &Layout,
        grad: &candle_core::CudaStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{
            alloc, batch_norm_launches, input, launch, per_block, storage, to_u32, with_tensor,
            BATCH_NORM, BATCH_NORM_CHUNK, MAX_GRID_Y,
        };
        use candle_core::backend::BackendStorage;
        const OP: &str = "batch norm backward";
        let dev = x.device();
        let (n, channels, h, w) = x_layout.shape().dims4()?;
        let (xv, resv, gradv) = (
            input(x, x_layout, OP)?,
            input(res, res_layout, OP)?,
            input(grad, grad_layout, OP)?,
        );
        let (hw, len) = (h * w, xv.len());
        if resv.len() != len + 3 * channels || gradv.len() != resv.len() {
            candle_core::bail!(
                "{OP}: packed output of {} values for x {:?}",
                resv.len(),
                x_layout.shape()
            );
        }
        let (launches, chunks) = batch_norm_launches(n, channels, hw, MAX_GRID_Y)?;
        let (c_u, hw_u, count, count_u64, len_u, relu, train) = (
            to_u32(channels, OP)?,
            to_u32(hw, OP)?,
            to_u32(n * hw, OP)?,
            (n * hw) as u64,
            len as u64,
            self.relu as i32,
            self.train as i32,
        );
        let mut partials = alloc::<f64>(dev, 2 * channels * chunks as usize)?;
        for (y0, grid) in &launches {
            // bn_bwd_partials(const float* x, const float* res, const float* grad, double* partials,
            //                 unsigned channels, unsigned hw, unsigned count, unsigned chunk,
            //                 unsigned long long len, int relu, unsigned y0)
            launch!(
                dev,
                BATCH_NORM,
                "bn_bwd_partials",
                *grid,
                [
                    &xv,
                    &resv,
                    &gradv,
                    &mut partials,
                    &c_u,
                    &hw_u,
                    &count,
                    &BATCH_NORM_CHUNK,
                    &len_u,
                    &relu,
                    y0
                ]
            );
        }
        let mut out = alloc::<f32>(dev, len + 2 * channels)?;
        let mut coef = alloc::<f32>(dev, 2 * channels)?;
        // bn_bwd_finish(const double* partials, const float* res, float* out, float* coef, unsigned channels,
        //               unsigned chunks, unsigned long long count, unsigned long long len)
        launch!(
            dev,
            BATCH_NORM,
            "bn_bwd_finish",
            per_block(channels)?,
            [&partials, &resv, &mut out, &mut coef, &c_u, &chunks, &count_u64, &len_u]
        );
        with_tensor(&self.gamma, OP, |gamma| {
            for (y0, grid) in &launches {
                // bn_bwd_dx(const float* x, const float* res, const float* grad, const float* gamma,
                //           const float* coef, float* out, unsigned channels, unsigned hw, unsigned count,
                //           unsigned chunk, unsigned long long len, int relu, int train, unsigned y0)
                launch!(
                    dev,
                    BATCH_NORM,
                    "bn_bwd_dx",
                    *grid,
                    [
                        &xv,
                        &resv,
                        &gradv,
                        &gamma,
                        &coef,
                        &mut out,
                        &c_u,
                        &hw_u,
                        &count,
                        &BATCH_NORM_CHUNK,
                        &len_u,
                        &relu,
                        &train,
                        y0
                    ]
                );
            }
            Ok(())
        })?;
        Ok((storage(out, dev), Shape::from(len + 2 * channels)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{grads_through, max_diff};
    use candle_core::Device;

    /// The fused kernel against candle's own layer (built from primitives, checked against PyTorch): values,
    /// gradients of x, γ and β, and the running statistics, in both modes; a mean far from zero and an odd
    /// plane size exercise the two-pass variance and the vector loops' tails.
    #[test]
    fn fused_kernel_matches_candle_batch_norm() {
        let dev = Device::Cpu;
        let (n, c, h, w) = (3, 5, 7, 9);
        let x = (Tensor::randn(0f32, 2.0, (n, c, h, w), &dev).unwrap() + 30.0).unwrap();
        let x = Var::from_tensor(&x).unwrap();
        let upstream = Tensor::randn(0f32, 1.0, (n, c, h, w), &dev).unwrap();
        let make = || {
            let t = |v: Tensor| Var::from_tensor(&v).unwrap().as_tensor().clone();
            (
                t(Tensor::randn(1f32, 0.3, c, &dev).unwrap()),
                t(Tensor::randn(0f32, 0.3, c, &dev).unwrap()),
                t(Tensor::randn(0f32, 1.0, c, &dev).unwrap()),
                t(Tensor::rand(0.5f32, 2.0, c, &dev).unwrap()),
            )
        };
        let (weight, bias, mean, var) = make();
        let (mean_var, var_var) = (
            Var::from_tensor(&mean).unwrap(),
            Var::from_tensor(&var).unwrap(),
        );
        let ours = BatchNormTensors {
            weight: &weight,
            bias: &bias,
            running_mean: &mean_var,
            running_var: &var_var,
        };
        let copy = |t: &Tensor| {
            Var::from_tensor(&t.copy().unwrap())
                .unwrap()
                .as_tensor()
                .clone()
        };
        let (ref_mean, ref_var) = (copy(&mean), copy(&var));
        let reference = candle_nn::BatchNorm::new_with_momentum(
            c,
            ref_mean.clone(),
            ref_var.clone(),
            weight.clone(),
            bias.clone(),
            EPS,
            MOMENTUM,
        )
        .unwrap();
        let mean_before = mean.copy().unwrap();
        for (train, relu) in [(false, false), (false, true), (true, false), (true, true)] {
            let (y, y_ref) = if relu {
                (
                    fused(x.as_tensor(), &ours, train, true).unwrap(),
                    reference
                        .forward_t(x.as_tensor(), train)
                        .unwrap()
                        .relu()
                        .unwrap(),
                )
            } else {
                (
                    fused(x.as_tensor(), &ours, train, false).unwrap(),
                    reference.forward_t(x.as_tensor(), train).unwrap(),
                )
            };
            assert!(
                max_diff(&y, &y_ref) < 1e-4,
                "train {train} relu {relu}: {}",
                max_diff(&y, &y_ref)
            );
            let grads = grads_through(&y, &upstream);
            let grads_ref = grads_through(&y_ref, &upstream);
            for (what, t) in [("x", x.as_tensor()), ("weight", &weight), ("bias", &bias)] {
                let (g, g_ref) = (grads.get(t).unwrap(), grads_ref.get(t).unwrap());
                let scale = g_ref
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(
                    max_diff(g, g_ref) <= 1e-4 * scale.max(1.0),
                    "train {train} relu {relu}, grad {what}: {} (scale {scale})",
                    max_diff(g, g_ref)
                );
            }
            // running statistics moved (training) or stayed (evaluation) alike
            assert!(max_diff(&mean, &ref_mean) < 1e-5);
            assert!(max_diff(&var, &ref_var) < 1e-4);
        }
        // the training forwards did move them (batch means ≈ 30: by ≈ 0.1 · 30 each)
        assert!(max_diff(&mean, &mean_before) > 1.0);
    }
}
