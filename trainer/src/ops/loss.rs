//! The classifier losses as single nodes with closed-form backwards (docs/reference.md §3.9): cross-entropy with
//! probability targets, soft Dice, focal. Inputs are (B, C) scores or probabilities with one-hot (B, C) targets;
//! each returns a scalar. The targets and class weights are data (no gradient). CPU kernels for 2-D f32 inputs;
//! generic: the same maths composed of candle ops.
//!
//! CUDA (`kernels/loss.cu`): the same ops' `cuda_fwd`, with the targets and class weights kept on the device
//! beside the op (no host copy): per-row (or per-class) f64 parts reduced in a fixed order into the scalar; each
//! backward is a second op reading the upstream gradient as a device scalar.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor, D};

use super::softmax::softmax_row;
use super::{contiguous_f32, with_values, Kernel};
use crate::error::{Error, Result};

/// Which body a loss runs for (B, C) inputs `x`: a kernel (CPU or CUDA) for 2-D f32, else the composed version.
fn kernel_for(x: &Tensor) -> Kernel {
    match Kernel::select(x, true) {
        kernel @ (Kernel::Cpu | Kernel::Cuda) if x.rank() == 2 => kernel,
        _ => Kernel::Generic,
    }
}

/// Cross-entropy with probability targets: mean_b −Σ_c y_bc·log_softmax(x)_bc.
pub fn cross_entropy(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    match kernel_for(x) {
        Kernel::Cpu => fused_cross_entropy(x, y),
        Kernel::Cuda => cuda_cross_entropy(x, y),
        Kernel::Generic => generic_cross_entropy(x, y),
    }
}

pub(crate) fn generic_cross_entropy(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let log_p = candle_nn::ops::log_softmax(x, D::Minus1)?;
    Ok((y * log_p)?.sum(D::Minus1)?.mean_all()?.neg()?)
}

/// Soft Dice loss over the batch, macro over all classes, ε in the denominator only:
/// 1 − mean_c 2TP_c/(2TP_c + FP_c + FN_c + ε) with soft counts of probabilities p (B, C).
pub fn dice(probs: &Tensor, y: &Tensor, eps: f64) -> Result<Tensor> {
    match kernel_for(probs) {
        Kernel::Cpu => fused_dice(probs, y, eps),
        Kernel::Cuda => cuda_dice(probs, y, eps),
        Kernel::Generic => generic_dice(probs, y, eps),
    }
}

pub(crate) fn generic_dice(probs: &Tensor, y: &Tensor, eps: f64) -> Result<Tensor> {
    let tp = (probs * y)?.sum(0)?;
    let fp = (probs * y.affine(-1.0, 1.0)?)?.sum(0)?;
    let fneg = (probs.affine(-1.0, 1.0)? * y)?.sum(0)?;
    let numerator = (&tp * 2.0)?;
    let denominator = ((&numerator + fp)? + fneg)?.affine(1.0, eps)?;
    let per_class = (numerator / denominator)?;
    Ok(per_class.mean_all()?.affine(-1.0, 1.0)?)
}

/// Focal loss for probabilities p (B, C): α[class]·(1 − p_t)^γ·(−ln p_t), p_t clamped to [ε, 1 − ε], mean or
/// sum over the batch; `alpha` (C) one weight per class.
pub fn focal(
    probs: &Tensor,
    y: &Tensor,
    alpha: &Tensor,
    gamma: f64,
    eps: f64,
    mean: bool,
) -> Result<Tensor> {
    match kernel_for(probs) {
        Kernel::Cpu => fused_focal(probs, y, alpha, gamma, eps, mean),
        Kernel::Cuda => cuda_focal(probs, y, alpha, gamma, eps, mean),
        Kernel::Generic => generic_focal(probs, y, alpha, gamma, eps, mean),
    }
}

pub(crate) fn generic_focal(
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

/// Values of a (B, C) target tensor.
fn targets(y: &Tensor, like: &Tensor) -> Result<Vec<f32>> {
    if y.dims() != like.dims() || y.rank() != 2 {
        return Err(Error::Other(format!(
            "loss: targets {:?} for inputs {:?}",
            y.dims(),
            like.dims()
        )));
    }
    Ok(y.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
}

/// A (B, C) target tensor on its device, f32 and contiguous (no host copy: the CUDA kernels read it there).
fn device_targets(y: &Tensor, like: &Tensor) -> Result<Tensor> {
    if y.dims() != like.dims() || y.rank() != 2 {
        return Err(Error::Other(format!(
            "loss: targets {:?} for inputs {:?}",
            y.dims(),
            like.dims()
        )));
    }
    Ok(y.to_device(like.device())?
        .to_dtype(DType::F32)?
        .contiguous()?)
}

/// The loss's gradient with respect to its input, given ∂loss (a scalar) and a closure writing ∂loss/∂input.
fn scaled_input_grad(
    x: &Tensor,
    grad: &Tensor,
    op: &str,
    fill: impl FnOnce(&[f32], &mut [f32]),
) -> candle_core::Result<Option<Tensor>> {
    let g = with_values(grad, op, |g| Ok(g.first().copied().unwrap_or(0.0)))?;
    let dx = with_values(x, op, |x| {
        let mut dx = vec![0f32; x.len()];
        fill(x, &mut dx);
        for d in dx.iter_mut() {
            *d *= g;
        }
        Ok(dx)
    })?;
    Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
}

fn scalar(value: f64) -> (CpuStorage, Shape) {
    (CpuStorage::F32(vec![value as f32]), Shape::from(()))
}

/// The CPU kernel of [`cross_entropy`].
pub(crate) fn fused_cross_entropy(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let classes = x.dim(D::Minus1)?;
    Ok(x.contiguous()?.apply_op1(CrossEntropyOp {
        y: targets(y, x)?,
        classes,
        device_y: None,
    })?)
}

/// The CUDA kernel of [`cross_entropy`].
fn cuda_cross_entropy(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let classes = x.dim(D::Minus1)?;
    Ok(x.contiguous()?.apply_op1(CrossEntropyOp {
        y: Vec::new(),
        classes,
        device_y: Some(device_targets(y, x)?),
    })?)
}

struct CrossEntropyOp {
    /// The targets (B·C) for the CPU kernel; empty on CUDA.
    y: Vec<f32>,
    classes: usize,
    /// CUDA: the targets (B, C) on the device.
    device_y: Option<Tensor>,
}

impl CustomOp1 for CrossEntropyOp {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, self.name())?;
        let c = self.classes;
        let batch = x.len() / c;
        let mut total = 0f64;
        for (row, y) in x.chunks_exact(c).zip(self.y.chunks_exact(c)) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|v| (*v as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            total -= row
                .iter()
                .zip(y)
                .map(|(v, t)| *t as f64 * (*v as f64 - lse))
                .sum::<f64>();
        }
        Ok(scalar(total / batch as f64))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{alloc, input, launch, to_u32, with_tensor, LOSS};
        use candle_core::backend::BackendStorage;
        let dev = storage.device();
        let x = input(storage, layout, self.name())?;
        let (c, batch) = (self.classes, x.len() / self.classes);
        let (c_u, b_u) = (to_u32(c, self.name())?, to_u32(batch, self.name())?);
        let mut parts = alloc::<f64>(dev, batch)?;
        with_tensor(
            device_data(&self.device_y, self.name())?,
            self.name(),
            |y| {
                // ce_rows(const float* x, const float* y, double* parts, unsigned c)
                launch!(dev, LOSS, "ce_rows", b_u, [&x, &y, &mut parts, &c_u]);
                Ok(())
            },
        )?;
        cuda_finish(dev, &parts, -1.0 / batch as f64, 0.0)
    }

    /// ∂x_bc = (softmax(x)_bc·Σ_c y_bc − y_bc)/B.
    fn bwd(
        &self,
        x: &Tensor,
        _loss: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        if let Some(y) = &self.device_y {
            let op = LossGrad {
                loss: DeviceLoss::CrossEntropy,
                y: y.clone(),
                alpha: None,
            };
            return Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, &op)?));
        }
        let c = self.classes;
        scaled_input_grad(x, grad, self.name(), |x, dx| {
            let batch = (x.len() / c) as f32;
            for ((row, y), out) in x
                .chunks_exact(c)
                .zip(self.y.chunks_exact(c))
                .zip(dx.chunks_exact_mut(c))
            {
                softmax_row(row, out);
                let y_sum: f32 = y.iter().sum();
                for (o, t) in out.iter_mut().zip(y) {
                    *o = (*o * y_sum - t) / batch;
                }
            }
        })
    }
}

/// The CPU kernel of [`dice`].
pub(crate) fn fused_dice(probs: &Tensor, y: &Tensor, eps: f64) -> Result<Tensor> {
    let classes = probs.dim(D::Minus1)?;
    Ok(probs.contiguous()?.apply_op1(DiceOp {
        y: targets(y, probs)?,
        classes,
        eps,
        device_y: None,
    })?)
}

/// The CUDA kernel of [`dice`].
fn cuda_dice(probs: &Tensor, y: &Tensor, eps: f64) -> Result<Tensor> {
    let classes = probs.dim(D::Minus1)?;
    Ok(probs.contiguous()?.apply_op1(DiceOp {
        y: Vec::new(),
        classes,
        eps,
        device_y: Some(device_targets(y, probs)?),
    })?)
}

struct DiceOp {
    /// The targets (B·C) for the CPU kernel; empty on CUDA.
    y: Vec<f32>,
    classes: usize,
    eps: f64,
    /// CUDA: the targets (B, C) on the device.
    device_y: Option<Tensor>,
}

impl DiceOp {
    /// Per class: (2TP, 2TP + FP + FN + ε).
    fn counts(&self, p: &[f32]) -> Vec<(f64, f64)> {
        let c = self.classes;
        let mut tp = vec![0f64; c];
        let mut fp = vec![0f64; c];
        let mut fneg = vec![0f64; c];
        for (row, y) in p.chunks_exact(c).zip(self.y.chunks_exact(c)) {
            for k in 0..c {
                let (p, y) = (row[k] as f64, y[k] as f64);
                tp[k] += p * y;
                fp[k] += p * (1.0 - y);
                fneg[k] += (1.0 - p) * y;
            }
        }
        (0..c)
            .map(|k| (2.0 * tp[k], 2.0 * tp[k] + fp[k] + fneg[k] + self.eps))
            .collect()
    }
}

impl CustomOp1 for DiceOp {
    fn name(&self) -> &'static str {
        "fused-dice"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = contiguous_f32(storage, layout, self.name())?;
        let counts = self.counts(p);
        let mean = counts.iter().map(|(num, den)| num / den).sum::<f64>() / self.classes as f64;
        Ok(scalar(1.0 - mean))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let dev = storage.device();
        let p = super::cuda::input(storage, layout, self.name())?;
        let y = device_data(&self.device_y, self.name())?;
        let (_, ratios) = cuda_dice_counts(dev, &p, y, self.classes, self.eps)?;
        cuda_finish(dev, &ratios, -1.0 / self.classes as f64, 1.0)
    }

    /// With N_c = 2TP_c and D_c = 2TP_c + FP_c + FN_c + ε (∂D_c/∂p_bc = 2y + (1 − y) − y = 1):
    /// ∂loss/∂p_bc = −(2y_bc/D_c − N_c/D_c²)/C.
    fn bwd(
        &self,
        p: &Tensor,
        _loss: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        if let Some(y) = &self.device_y {
            let op = LossGrad {
                loss: DeviceLoss::Dice { eps: self.eps },
                y: y.clone(),
                alpha: None,
            };
            return Ok(Some(p.apply_op2_no_bwd(&grad.contiguous()?, &op)?));
        }
        let c = self.classes;
        scaled_input_grad(p, grad, self.name(), |p, dp| {
            let counts = self.counts(p);
            for (y, out) in self.y.chunks_exact(c).zip(dp.chunks_exact_mut(c)) {
                for k in 0..c {
                    let (num, den) = counts[k];
                    out[k] = (-(2.0 * y[k] as f64 / den - num / (den * den)) / c as f64) as f32;
                }
            }
        })
    }
}

/// The CPU kernel of [`focal`].
pub(crate) fn fused_focal(
    probs: &Tensor,
    y: &Tensor,
    alpha: &Tensor,
    gamma: f64,
    eps: f64,
    mean: bool,
) -> Result<Tensor> {
    let classes = probs.dim(D::Minus1)?;
    let alpha: Vec<f32> = alpha.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    if alpha.len() != classes {
        return Err(Error::Other(format!(
            "focal loss: {} class weights for {classes} classes",
            alpha.len()
        )));
    }
    let op = FocalOp {
        y: targets(y, probs)?,
        alpha,
        classes,
        gamma,
        eps,
        mean,
        device: None,
    };
    Ok(probs.contiguous()?.apply_op1(op)?)
}

/// The CUDA kernel of [`focal`].
fn cuda_focal(
    probs: &Tensor,
    y: &Tensor,
    alpha: &Tensor,
    gamma: f64,
    eps: f64,
    mean: bool,
) -> Result<Tensor> {
    let classes = probs.dim(D::Minus1)?;
    if alpha.elem_count() != classes {
        return Err(Error::Other(format!(
            "focal loss: {} class weights for {classes} classes",
            alpha.elem_count()
        )));
    }
    let alpha = alpha
        .to_device(probs.device())?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .contiguous()?;
    let op = FocalOp {
        y: Vec::new(),
        alpha: Vec::new(),
        classes,
        gamma,
        eps,
        mean,
        device: Some((device_targets(y, probs)?, alpha)),
    };
    Ok(probs.contiguous()?.apply_op1(op)?)
}

struct FocalOp {
    /// The targets (B·C) and class weights (C) for the CPU kernel; empty on CUDA.
    y: Vec<f32>,
    alpha: Vec<f32>,
    classes: usize,
    gamma: f64,
    eps: f64,
    mean: bool,
    /// CUDA: the targets (B, C) and class weights (C) on the device.
    device: Option<(Tensor, Tensor)>,
}

impl FocalOp {
    /// Per sample: (α_b, p_t before clamping, p_t clamped to [ε, 1 − ε]), in f32 as the composed version.
    fn per_sample(&self, p: &[f32]) -> Vec<(f64, f32, f64)> {
        let c = self.classes;
        let (lo, hi) = (self.eps as f32, (1.0 - self.eps) as f32);
        p.chunks_exact(c)
            .zip(self.y.chunks_exact(c))
            .map(|(row, y)| {
                let pt: f32 = row.iter().zip(y).map(|(p, y)| p * y).sum();
                let alpha: f32 = y.iter().zip(&self.alpha).map(|(y, a)| y * a).sum();
                (alpha as f64, pt, pt.clamp(lo, hi) as f64)
            })
            .collect()
    }

    fn reduction(&self, batch: usize) -> f64 {
        if self.mean {
            1.0 / batch as f64
        } else {
            1.0
        }
    }
}

impl CustomOp1 for FocalOp {
    fn name(&self) -> &'static str {
        "fused-focal"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let p = contiguous_f32(storage, layout, self.name())?;
        let samples = self.per_sample(p);
        let total: f64 = samples
            .iter()
            .map(|(a, _, pt)| a * (1.0 - pt).powf(self.gamma) * -pt.ln())
            .sum();
        Ok(scalar(total * self.reduction(samples.len())))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{alloc, input, launch, to_u32, with_tensor, LOSS};
        use candle_core::backend::BackendStorage;
        let dev = storage.device();
        let p = input(storage, layout, self.name())?;
        let Some((y, alpha)) = &self.device else {
            candle_core::bail!("{}: no device targets", self.name())
        };
        let (c, batch) = (self.classes, p.len() / self.classes);
        let (c_u, b_u) = (to_u32(c, self.name())?, to_u32(batch, self.name())?);
        let (lo, hi) = (self.eps as f32, (1.0 - self.eps) as f32);
        let mut parts = alloc::<f64>(dev, batch)?;
        with_tensor(y, self.name(), |y| {
            with_tensor(alpha, self.name(), |alpha| {
                // focal_rows(const float* p, const float* y, const float* alpha, double* parts, unsigned c,
                //            float lo, float hi, double gamma)
                launch!(
                    dev,
                    LOSS,
                    "focal_rows",
                    b_u,
                    [&p, &y, &alpha, &mut parts, &c_u, &lo, &hi, &self.gamma]
                );
                Ok(())
            })
        })?;
        cuda_finish(dev, &parts, self.reduction(batch), 0.0)
    }

    /// ∂loss_b/∂p_t = α_b·(γ(1 − p_t)^(γ−1)·ln p_t − (1 − p_t)^γ/p_t), passed to p_bc through y_bc where the clamp
    /// let p_t through (bounds included, as torch.clamp's gradient).
    fn bwd(
        &self,
        p: &Tensor,
        _loss: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        if let Some((y, alpha)) = &self.device {
            let op = LossGrad {
                loss: DeviceLoss::Focal {
                    gamma: self.gamma,
                    eps: self.eps,
                    mean: self.mean,
                },
                y: y.clone(),
                alpha: Some(alpha.clone()),
            };
            return Ok(Some(p.apply_op2_no_bwd(&grad.contiguous()?, &op)?));
        }
        let c = self.classes;
        let (lo, hi) = (self.eps as f32, (1.0 - self.eps) as f32);
        scaled_input_grad(p, grad, self.name(), |p, dp| {
            let samples = self.per_sample(p);
            let scale = self.reduction(samples.len());
            for ((alpha, raw, pt), (y, out)) in samples
                .into_iter()
                .zip(self.y.chunks_exact(c).zip(dp.chunks_exact_mut(c)))
            {
                if raw < lo || raw > hi {
                    continue;
                }
                let q = 1.0 - pt;
                let modulating_grad = if self.gamma == 0.0 {
                    0.0
                } else {
                    self.gamma * q.powf(self.gamma - 1.0)
                };
                let d_pt = alpha * (modulating_grad * pt.ln() - q.powf(self.gamma) / pt) * scale;
                for (o, t) in out.iter_mut().zip(y) {
                    *o = (d_pt * *t as f64) as f32;
                }
            }
        })
    }
}

/// The device data an op carries for its CUDA body, or an error naming the op.
#[cfg(feature = "cuda")]
fn device_data<'a>(t: &'a Option<Tensor>, op: &str) -> candle_core::Result<&'a Tensor> {
    t.as_ref()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: no device targets")))
}

/// The scalar `offset + scale·Σ parts` (`loss_finish`), as an op's output.
#[cfg(feature = "cuda")]
fn cuda_finish(
    dev: &candle_core::cuda_backend::CudaDevice,
    parts: &candle_core::cuda_backend::cudarc::driver::CudaSlice<f64>,
    scale: f64,
    offset: f64,
) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
    use super::cuda::{alloc, launch, storage, to_u32, LOSS};
    let n = to_u32(parts.len(), "loss")?;
    let mut out = alloc::<f32>(dev, 1)?;
    // loss_finish(const double* parts, float* out, unsigned n, double scale, double offset)
    launch!(
        dev,
        LOSS,
        "loss_finish",
        1,
        [parts, &mut out, &n, &scale, &offset]
    );
    Ok((storage(out, dev), Shape::from(())))
}

/// Dice's per-class (2TP, 2TP + FP + FN + ε) pairs and their ratios (`dice_counts`).
#[cfg(feature = "cuda")]
fn cuda_dice_counts(
    dev: &candle_core::cuda_backend::CudaDevice,
    p: &candle_core::cuda_backend::cudarc::driver::CudaView<'_, f32>,
    y: &Tensor,
    classes: usize,
    eps: f64,
) -> candle_core::Result<(
    candle_core::cuda_backend::cudarc::driver::CudaSlice<f64>,
    candle_core::cuda_backend::cudarc::driver::CudaSlice<f64>,
)> {
    use super::cuda::{alloc, launch, to_u32, with_tensor, LOSS};
    const OP: &str = "dice";
    let (c_u, b_u) = (to_u32(classes, OP)?, to_u32(p.len() / classes, OP)?);
    let mut counts = alloc::<f64>(dev, 2 * classes)?;
    let mut ratios = alloc::<f64>(dev, classes)?;
    with_tensor(y, OP, |y| {
        // dice_counts(const float* p, const float* y, double* counts, double* ratios, unsigned b, unsigned c,
        //             double eps)
        launch!(
            dev,
            LOSS,
            "dice_counts",
            c_u,
            [p, &y, &mut counts, &mut ratios, &b_u, &c_u, &eps]
        );
        Ok(())
    })?;
    Ok((counts, ratios))
}

/// Which loss a [`LossGrad`] differentiates.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
enum DeviceLoss {
    CrossEntropy,
    Dice { eps: f64 },
    Focal { gamma: f64, eps: f64, mean: bool },
}

/// A loss's backward on a GPU: (input, ∂loss as a device scalar) with the targets (and class weights) beside them
/// → ∂loss/∂input.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct LossGrad {
    loss: DeviceLoss,
    y: Tensor,
    alpha: Option<Tensor>,
}

impl CustomOp2 for LossGrad {
    fn name(&self) -> &'static str {
        "loss-grad"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("loss-grad runs on CUDA only (the CPU backward is the op's bwd)")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
        grad: &candle_core::CudaStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{alloc, elementwise, input, launch, storage, to_u32, with_tensor, LOSS};
        use candle_core::backend::BackendStorage;
        const OP: &str = "loss backward";
        let dev = x.device();
        let (batch, classes) = x_layout.shape().dims2()?;
        let (xv, gv) = (input(x, x_layout, OP)?, input(grad, grad_layout, OP)?);
        if gv.len() != 1 {
            candle_core::bail!("{OP}: a gradient of {} values for a scalar loss", gv.len());
        }
        let (c_u, b_u) = (to_u32(classes, OP)?, to_u32(batch, OP)?);
        let mut dx = alloc::<f32>(dev, xv.len())?;
        match self.loss {
            DeviceLoss::CrossEntropy => with_tensor(&self.y, OP, |y| {
                let b_f = batch as f32;
                // ce_bwd(const float* x, const float* y, const float* grad, float* dx, unsigned c, float batch)
                launch!(
                    dev,
                    LOSS,
                    "ce_bwd",
                    b_u,
                    [&xv, &y, &gv, &mut dx, &c_u, &b_f]
                );
                Ok(())
            })?,
            DeviceLoss::Dice { eps } => {
                let (counts, _) = cuda_dice_counts(dev, &xv, &self.y, classes, eps)?;
                with_tensor(&self.y, OP, |y| {
                    let n = xv.len() as u64;
                    // dice_bwd(const float* y, const double* counts, const float* grad, float* dp,
                    //          unsigned long long n, unsigned c)
                    launch!(
                        dev,
                        LOSS,
                        "dice_bwd",
                        elementwise(xv.len()),
                        [&y, &counts, &gv, &mut dx, &n, &c_u]
                    );
                    Ok(())
                })?
            }
            DeviceLoss::Focal { gamma, eps, mean } => {
                let Some(alpha) = &self.alpha else {
                    candle_core::bail!("{OP}: focal without class weights")
                };
                let (lo, hi) = (eps as f32, (1.0 - eps) as f32);
                let scale = if mean { 1.0 / batch as f64 } else { 1.0 };
                with_tensor(&self.y, OP, |y| {
                    with_tensor(alpha, OP, |alpha| {
                        // focal_bwd(const float* p, const float* y, const float* alpha, const float* grad,
                        //           float* dp, unsigned c, float lo, float hi, double gamma, double scale)
                        launch!(
                            dev,
                            LOSS,
                            "focal_bwd",
                            b_u,
                            [&xv, &y, &alpha, &gv, &mut dx, &c_u, &lo, &hi, &gamma, &scale]
                        );
                        Ok(())
                    })
                })?
            }
        }
        Ok((storage(dx, dev), x_layout.shape().clone()))
    }
}

/// The CPU kernels against the composed versions, in value and gradient.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_abs, max_diff, uniform};
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
    fn kernels_match_the_composed_losses() {
        // Every class present but one (6 never occurs), as in small batches.
        let y = one_hot(&[0, 1, 2, 3, 4, 5, 0, 4, 4, 3, 1, 2], 7);
        check(
            "cce",
            |p| fused_cross_entropy(p, &y).unwrap(),
            |p| generic_cross_entropy(p, &y).unwrap(),
        );
        check(
            "dice",
            |p| fused_dice(p, &y, 1e-8).unwrap(),
            |p| generic_dice(p, &y, 1e-8).unwrap(),
        );
        let alpha = Tensor::new(
            &[9.01f32, 36.86, 37.27, 5.73, 2.12, 14.63, 8.29],
            &Device::Cpu,
        )
        .unwrap();
        for (gamma, mean) in [(2.0, true), (0.5, false), (0.0, true)] {
            check(
                "focal",
                |p| fused_focal(p, &y, &alpha, gamma, 1e-8, mean).unwrap(),
                |p| generic_focal(p, &y, &alpha, gamma, 1e-8, mean).unwrap(),
            );
        }
        // `ce` takes the logits themselves.
        let logits = Var::from_tensor(&uniform(&[12, 7], 3.0, 12)).unwrap();
        let ours = fused_cross_entropy(logits.as_tensor(), &y).unwrap();
        let reference = generic_cross_entropy(logits.as_tensor(), &y).unwrap();
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
