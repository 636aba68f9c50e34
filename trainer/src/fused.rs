//! Fused CPU kernels for the classifier's training step: l2-normalisation, `relu(x·Wᵀ + b) ⊙ dropout-mask`,
//! softmax, and the Dice / cross-entropy / focal losses, each ONE candle graph node with its own backward.
//!
//! Why: the concat fusion + feed-forward head is a few dozen tiny tensor operations per step (forward, backward,
//! gradient accumulation), and on the CPU candle's fixed cost per operation — allocation, dispatch, its worker
//! pool's hand-offs — outweighs the arithmetic: composed from primitives the head trained at 0.7x PyTorch's speed.
//! Here each function reads contiguous f32 values and writes its result in one pass, and its backward is the
//! closed-form gradient of the composed version (tested against it below).
//!
//! Every entry point takes the fused path only for f32 tensors on the CPU ([`applies`]); on other devices it runs
//! the composed candle operations it replaces (identical maths), so CUDA keeps working unchanged.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};

use crate::error::Result;
use crate::nn::contiguous_f32;

/// Whether the fused kernels run for `t`: f32 on the CPU, not empty (the kernels walk rows of the last dimension).
pub fn applies(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && t.elem_count() > 0
}

/// [`crate::nn::with_cpu_f32`] for a fallible `f`.
fn with_values<R>(
    t: &Tensor,
    op: &str,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    crate::nn::with_cpu_f32(t, op, f)?
}

/// The width of the last dimension and the number of rows before it.
fn rows_and_width(shape: &Shape) -> candle_core::Result<(usize, usize)> {
    let width = *shape
        .dims()
        .last()
        .ok_or_else(|| candle_core::Error::Msg("a scalar has no rows".into()))?;
    Ok((shape.elem_count() / width.max(1), width))
}

/// Σ x² in f64, over 8 independent lanes so that the loop vectorises.
pub(crate) fn sum_squares(values: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let chunks = values.chunks_exact(8);
    let rest: f64 = chunks
        .remainder()
        .iter()
        .map(|x| (*x as f64) * (*x as f64))
        .sum();
    for chunk in chunks {
        for (lane, x) in lanes.iter_mut().zip(chunk) {
            *lane += (*x as f64) * (*x as f64);
        }
    }
    lanes.iter().sum::<f64>() + rest
}

/// Σ a·b in f64, over 8 lanes.
fn dot(a: &[f32], b: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let rest: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| (*x as f64) * (*y as f64))
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += (x[i] as f64) * (y[i] as f64);
        }
    }
    lanes.iter().sum::<f64>() + rest
}

// ---------------------------------------------------------------------------------------------------------------
// l2-normalisation (of a concatenation)

/// `x / max(‖x‖₂, 1e-12)` along the last dimension: [`crate::nn::l2_normalize`] as one node.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    if !applies(x) {
        return crate::nn::l2_normalize(x);
    }
    let (_, width) = rows_and_width(x.shape())?;
    let op = ConcatL2 {
        widths: vec![width],
        shape: x.shape().clone(),
    };
    Ok(x.contiguous()?.apply_op1(op)?)
}

/// [`l2_normalize`] of `x` when `on` (an encoder's `*_l2norm` switch), else `x` as it is.
pub fn l2_normalize_if(x: Tensor, on: bool) -> Result<Tensor> {
    if on {
        l2_normalize(&x)
    } else {
        Ok(x)
    }
}

/// l2-normalise the concatenation of (B, d_i) tensors along dimension 1, without materialising the concatenation
/// first: the concat fusion (§3.6) as one node. Composed (`cat` then l2) off the CPU or beyond three parts.
pub fn concat_l2_normalize(parts: &[Tensor]) -> Result<Tensor> {
    let fused = (1..=3).contains(&parts.len()) && parts.iter().all(|p| applies(p) && p.rank() == 2);
    if !fused {
        return crate::nn::l2_normalize(&Tensor::cat(parts, 1)?);
    }
    let batch = parts[0].dim(0)?;
    let widths = parts
        .iter()
        .map(|p| p.dim(1))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let op = ConcatL2 {
        shape: Shape::from((batch, widths.iter().sum::<usize>())),
        widths,
    };
    let parts = parts
        .iter()
        .map(|p| p.contiguous())
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(match &parts[..] {
        [a] => a.apply_op1(op)?,
        [a, b] => a.apply_op2(b, op)?,
        [a, b, c] => a.apply_op3(b, c, op)?,
        _ => unreachable!("1 to 3 parts, checked above"),
    })
}

/// The norm as the composed version defines it: sqrt(max(Σx², 1e-24)) (see `nn::l2_normalize` on why), and
/// whether Σx² is above that floor (below it the norm is a constant).
fn norm_of(sum_sq: f64) -> (f64, bool) {
    (sum_sq.max(1e-24).sqrt(), sum_sq > 1e-24)
}

/// y = concat(parts) / ‖concat(parts)‖ per row, for parts of `widths[i]` values per row and `shape` the output.
struct ConcatL2 {
    widths: Vec<usize>,
    shape: Shape,
}

impl ConcatL2 {
    const NAME: &'static str = "fused-concat-l2-normalize";

    fn fwd(&self, parts: &[&[f32]]) -> candle_core::Result<(CpuStorage, Shape)> {
        let width: usize = self.widths.iter().sum();
        let rows = self.shape.elem_count() / width.max(1);
        for (part, w) in parts.iter().zip(&self.widths) {
            if part.len() != rows * w {
                candle_core::bail!(
                    "{}: a part of {} values for {rows} rows of {w}",
                    Self::NAME,
                    part.len()
                )
            }
        }
        let mut y = vec![0f32; rows * width];
        for (r, out) in y.chunks_exact_mut(width.max(1)).enumerate() {
            let row = |i: usize| &parts[i][r * self.widths[i]..(r + 1) * self.widths[i]];
            let sum_sq: f64 = (0..parts.len()).map(|i| sum_squares(row(i))).sum();
            let norm = norm_of(sum_sq).0 as f32;
            let mut at = 0;
            for i in 0..parts.len() {
                for (o, v) in out[at..at + self.widths[i]].iter_mut().zip(row(i)) {
                    *o = v / norm;
                }
                at += self.widths[i];
            }
        }
        Ok((CpuStorage::F32(y), self.shape.clone()))
    }

    /// With y = x/n for the concatenated row x: ∂x = (g − y·(y·g))/n where Σx² > 1e-24; below that n is the
    /// constant 1e-12 and ∂x = g/n. Gradients only for the parts that carry one.
    fn bwd(
        &self,
        parts: &[&Tensor],
        y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Vec<Option<Tensor>>> {
        let guards: Vec<_> = parts.iter().map(|p| p.storage_and_layout()).collect();
        let mut values = Vec::with_capacity(parts.len());
        for (storage, layout) in &guards {
            let candle_core::Storage::Cpu(cpu) = &**storage else {
                candle_core::bail!("{} runs on the CPU only", Self::NAME)
            };
            values.push(contiguous_f32(cpu, layout, Self::NAME)?);
        }
        let width: usize = self.widths.iter().sum();
        let mut grads: Vec<Vec<f32>> = values.iter().map(|v| vec![0f32; v.len()]).collect();
        with_values(y, Self::NAME, |y| {
            with_values(grad, Self::NAME, |g| {
                for (r, (yr, gr)) in y.chunks_exact(width).zip(g.chunks_exact(width)).enumerate() {
                    let sum_sq: f64 = (0..values.len())
                        .map(|i| {
                            sum_squares(&values[i][r * self.widths[i]..(r + 1) * self.widths[i]])
                        })
                        .sum();
                    let (norm, above_floor) = norm_of(sum_sq);
                    let inv = (1.0 / norm) as f32;
                    let yg = if above_floor { dot(yr, gr) as f32 } else { 0.0 };
                    let mut at = 0;
                    for (i, w) in self.widths.iter().enumerate() {
                        let out = &mut grads[i][r * w..(r + 1) * w];
                        for ((o, yv), gv) in
                            out.iter_mut().zip(&yr[at..at + w]).zip(&gr[at..at + w])
                        {
                            *o = (gv - yv * yg) * inv;
                        }
                        at += w;
                    }
                }
                Ok(())
            })
        })?;
        drop(guards);
        parts
            .iter()
            .zip(grads)
            .map(|(p, g)| {
                Ok(match p.track_op() {
                    true => Some(Tensor::from_vec(g, p.shape(), p.device())?),
                    false => None,
                })
            })
            .collect()
    }
}

impl CustomOp1 for ConcatL2 {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(&self, a: &CpuStorage, la: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.fwd(&[contiguous_f32(a, la, Self::NAME)?])
    }

    fn bwd(&self, a: &Tensor, y: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(ConcatL2::bwd(self, &[a], y, grad)?.pop().flatten())
    }
}

impl CustomOp2 for ConcatL2 {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        la: &Layout,
        b: &CpuStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.fwd(&[
            contiguous_f32(a, la, Self::NAME)?,
            contiguous_f32(b, lb, Self::NAME)?,
        ])
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let mut g = ConcatL2::bwd(self, &[a, b], y, grad)?.into_iter();
        Ok((g.next().flatten(), g.next().flatten()))
    }
}

impl CustomOp3 for ConcatL2 {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn cpu_fwd(
        &self,
        a: &CpuStorage,
        la: &Layout,
        b: &CpuStorage,
        lb: &Layout,
        c: &CpuStorage,
        lc: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.fwd(&[
            contiguous_f32(a, la, Self::NAME)?,
            contiguous_f32(b, lb, Self::NAME)?,
            contiguous_f32(c, lc, Self::NAME)?,
        ])
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut g = ConcatL2::bwd(self, &[a, b, c], y, grad)?.into_iter();
        Ok((g.next().flatten(), g.next().flatten(), g.next().flatten()))
    }
}

// ---------------------------------------------------------------------------------------------------------------
// softmax

/// Softmax over the last dimension as one node (candle's fused `softmax_last_dim` has no backward).
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    if !applies(x) {
        return Ok(candle_nn::ops::softmax(x, D::Minus1)?);
    }
    Ok(x.contiguous()?.apply_op1(Softmax)?)
}

fn softmax_row(row: &[f32], out: &mut [f32]) {
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

// ---------------------------------------------------------------------------------------------------------------
// Linear (+ ReLU) (+ dropout)

/// `relu?(x·Wᵀ + b) ⊙ mask?` for x (B, in), W (out, in), b (out) as one node; `mask` (B·out values: 0 or
/// 1/(1−p)) is the dropout mask, data without a gradient. The backward is one GEMM for ∂W, one for ∂x (only when
/// x carries a gradient: for inputs straight from data it would be a wasted full-size product) and a column sum
/// for ∂b. The caller checks [`applies`] and the ranks.
pub(crate) fn linear(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    relu: bool,
    mask: Option<Vec<f32>>,
) -> Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op3(weight, bias, LinearOp { relu, mask })?)
}

struct LinearOp {
    relu: bool,
    mask: Option<Vec<f32>>,
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        x_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (batch, in_features) = x_layout.shape().dims2()?;
        let (out_features, w_in) = weight_layout.shape().dims2()?;
        let bias = contiguous_f32(bias, bias_layout, self.name())?;
        if w_in != in_features || bias.len() != out_features {
            candle_core::bail!(
                "fused-linear: input width {in_features}, weight {out_features}x{w_in}, bias {}",
                bias.len()
            )
        }
        if let Some(mask) = &self.mask {
            if mask.len() != batch * out_features {
                candle_core::bail!(
                    "fused-linear: {} mask values for {batch}x{out_features} outputs",
                    mask.len()
                )
            }
        }
        let product = x.matmul(
            weight,
            (1, batch, out_features, in_features),
            x_layout,
            &weight_layout.transpose(0, 1)?,
        )?;
        let CpuStorage::F32(mut y) = product else {
            candle_core::bail!("fused-linear: the product is not f32")
        };
        for (i, row) in y.chunks_exact_mut(out_features).enumerate() {
            for (v, b) in row.iter_mut().zip(bias) {
                *v += b;
            }
            if self.relu {
                for v in row.iter_mut() {
                    *v = v.max(0.0);
                }
            }
            if let Some(mask) = &self.mask {
                for (v, m) in row
                    .iter_mut()
                    .zip(&mask[i * out_features..(i + 1) * out_features])
                {
                    *v *= m;
                }
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((batch, out_features))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        y: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (_, out_features) = y.dims2()?;
        // ∂z = g ⊙ mask where the ReLU let z through. With a positive mask scale, y > 0 exactly when z > 0 and the
        // unit was kept, and a dropped unit's gradient is 0 anyway: ReLU's derivative is 0 at z ≤ 0 as PyTorch's.
        let (dz, db) = with_values(grad, self.name(), |g| {
            with_values(y, self.name(), |y| {
                let mut dz = g.to_vec();
                if let Some(mask) = &self.mask {
                    for (d, m) in dz.iter_mut().zip(mask) {
                        *d *= m;
                    }
                }
                if self.relu {
                    for (d, v) in dz.iter_mut().zip(y) {
                        if *v <= 0.0 {
                            *d = 0.0;
                        }
                    }
                }
                let mut db = vec![0f32; out_features];
                for row in dz.chunks_exact(out_features) {
                    for (s, d) in db.iter_mut().zip(row) {
                        *s += d;
                    }
                }
                Ok((dz, db))
            })
        })?;
        let dz = Tensor::from_vec(dz, y.shape(), y.device())?;
        let dx = if x.track_op() {
            Some(dz.matmul(weight)?)
        } else {
            None
        };
        let dw = if weight.track_op() {
            Some(dz.t()?.matmul(x)?)
        } else {
            None
        };
        let db = if bias.track_op() {
            Some(Tensor::from_vec(db, out_features, bias.device())?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

// ---------------------------------------------------------------------------------------------------------------
// losses (scalar results; the one-hot targets and class weights are data)

/// Values of a (B, C) target tensor.
fn targets(y: &Tensor, like: &Tensor) -> Result<Vec<f32>> {
    if y.dims() != like.dims() || y.rank() != 2 {
        return Err(crate::error::Error::Other(format!(
            "loss: targets {:?} for inputs {:?}",
            y.dims(),
            like.dims()
        )));
    }
    Ok(y.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
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

/// mean_b −Σ_c y_bc·log_softmax(x)_bc for x (B, C) on the CPU (see `losses::cross_entropy`).
pub(crate) fn cross_entropy(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    let classes = x.dim(D::Minus1)?;
    Ok(x.contiguous()?.apply_op1(CrossEntropyOp {
        y: targets(y, x)?,
        classes,
    })?)
}

struct CrossEntropyOp {
    y: Vec<f32>,
    classes: usize,
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

    /// ∂x_bc = (softmax(x)_bc·Σ_c y_bc − y_bc)/B.
    fn bwd(
        &self,
        x: &Tensor,
        _loss: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
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

/// Soft Dice over the batch, macro over the classes, for probabilities p (B, C) on the CPU (see `losses::dice`).
pub(crate) fn dice(probs: &Tensor, y: &Tensor, eps: f64) -> Result<Tensor> {
    let classes = probs.dim(D::Minus1)?;
    Ok(probs.contiguous()?.apply_op1(DiceOp {
        y: targets(y, probs)?,
        classes,
        eps,
    })?)
}

struct DiceOp {
    y: Vec<f32>,
    classes: usize,
    eps: f64,
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

    /// With N_c = 2TP_c and D_c = 2TP_c + FP_c + FN_c + ε (∂D_c/∂p_bc = 2y + (1 − y) − y = 1):
    /// ∂loss/∂p_bc = −(2y_bc/D_c − N_c/D_c²)/C.
    fn bwd(
        &self,
        p: &Tensor,
        _loss: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
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

/// Focal loss for probabilities p (B, C) on the CPU (see `losses::focal`); `alpha` one weight per class.
pub(crate) fn focal(
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
        return Err(crate::error::Error::Other(format!(
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
    };
    Ok(probs.contiguous()?.apply_op1(op)?)
}

struct FocalOp {
    y: Vec<f32>,
    alpha: Vec<f32>,
    classes: usize,
    gamma: f64,
    eps: f64,
    mean: bool,
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

    /// ∂loss_b/∂p_t = α_b·(γ(1 − p_t)^(γ−1)·ln p_t − (1 − p_t)^γ/p_t), passed to p_bc through y_bc where the clamp
    /// let p_t through (bounds included, as torch.clamp's gradient).
    fn bwd(
        &self,
        p: &Tensor,
        _loss: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testing::{max_abs, max_diff};
    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};

    /// Seeded values in [-scale, scale] (candle's CPU generator cannot be seeded).
    pub(crate) fn uniform(shape: &[usize], scale: f32, seed: u64) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|_| rng.gen_range(-scale..scale)).collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    /// Σ f(x)·r for a fixed random r: every output element gets a distinct upstream gradient.
    fn project(y: &Tensor, seed: u64) -> Tensor {
        let r = uniform(y.dims(), 1.0, seed);
        (y * r).unwrap().sum_all().unwrap()
    }

    #[test]
    fn l2_normalize_matches_the_composed_version_with_a_zero_row() {
        let mut values = uniform(&[5, 37], 2.0, 1).to_vec2::<f32>().unwrap();
        values[2] = vec![0.0; 37];
        let x = Var::from_vec(values.concat(), (5, 37), &Device::Cpu).unwrap();
        let ours = l2_normalize(x.as_tensor()).unwrap();
        let reference = crate::nn::l2_normalize(x.as_tensor()).unwrap();
        assert!(max_diff(&ours, &reference) < 1e-6);
        let row0 = ours
            .get(0)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((row0 - 1.0).abs() < 1e-5, "unit norm: {row0}");
        let g = project(&ours, 2).backward().unwrap();
        let g_ref = project(&reference, 2).backward().unwrap();
        let (g, g_ref) = (
            g.get(x.as_tensor()).unwrap(),
            g_ref.get(x.as_tensor()).unwrap(),
        );
        // The zero row's gradient is g/1e-12: compare relative to the largest value.
        let scale = max_abs(g_ref);
        assert!(scale > 1e11, "the zero row passes g/1e-12");
        assert!(max_diff(g, g_ref) <= 1e-6 * scale);
        let rest = |t: &Tensor| t.narrow(0, 0, 2).unwrap();
        assert!(max_diff(&rest(g), &rest(g_ref)) < 1e-5);
    }

    #[test]
    fn concat_l2_normalize_matches_cat_then_l2() {
        let a = Var::from_tensor(&uniform(&[4, 5], 1.0, 21)).unwrap();
        let b = uniform(&[4, 11], 1.0, 22); // data: no gradient
        let c = Var::from_tensor(&uniform(&[4, 3], 1.0, 23)).unwrap();
        for parts in [
            vec![a.as_tensor().clone()],
            vec![a.as_tensor().clone(), b.clone()],
            vec![a.as_tensor().clone(), b.clone(), c.as_tensor().clone()],
        ] {
            let ours = concat_l2_normalize(&parts).unwrap();
            let reference = crate::nn::l2_normalize(&Tensor::cat(&parts, 1).unwrap()).unwrap();
            assert!(max_diff(&ours, &reference) < 1e-6);
            let g = project(&ours, 24).backward().unwrap();
            let g_ref = project(&reference, 24).backward().unwrap();
            for var in [&a, &c] {
                match (g.get(var.as_tensor()), g_ref.get(var.as_tensor())) {
                    (Some(x), Some(y)) => assert!(max_diff(x, y) < 1e-6),
                    (None, None) => {}
                    _ => panic!("a gradient on one side only ({} parts)", parts.len()),
                }
            }
            assert!(g.get(&b).is_none());
        }
    }

    #[test]
    fn softmax_matches_the_composed_version() {
        let x = Var::from_tensor(&uniform(&[6, 7], 4.0, 3)).unwrap();
        let ours = softmax(x.as_tensor()).unwrap();
        let reference = candle_nn::ops::softmax(x.as_tensor(), D::Minus1).unwrap();
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

    fn check_linear(relu: bool, masked: bool, x_tracked: bool) {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&uniform(&[9, 23], 0.3, 5)).unwrap();
        let b = Var::from_tensor(&uniform(&[9], 0.3, 6)).unwrap();
        let x_var = Var::from_tensor(&uniform(&[8, 23], 1.0, 7)).unwrap();
        let x = if x_tracked {
            x_var.as_tensor().clone()
        } else {
            x_var.as_detached_tensor()
        };
        let mask: Option<Vec<f32>> = masked.then(|| {
            (0..8 * 9)
                .map(|i| if i % 3 == 0 { 0.0 } else { 1.25 })
                .collect()
        });

        let ours = linear(&x, w.as_tensor(), b.as_tensor(), relu, mask.clone()).unwrap();
        let mut reference = x
            .matmul(&w.as_tensor().t().unwrap())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap();
        if relu {
            reference = reference.relu().unwrap();
        }
        if let Some(mask) = mask {
            reference = (reference * Tensor::from_vec(mask, (8, 9), &dev).unwrap()).unwrap();
        }
        assert!(max_diff(&ours, &reference) < 1e-5);
        if relu {
            let zeros = ours
                .eq(0f32)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .sum_all()
                .unwrap();
            assert!(
                zeros.to_scalar::<f32>().unwrap() > 5.0,
                "the ReLU cuts some units"
            );
        }
        let g = project(&ours, 8).backward().unwrap();
        let g_ref = project(&reference, 8).backward().unwrap();
        for var in [&w, &b] {
            assert!(
                max_diff(
                    g.get(var.as_tensor()).unwrap(),
                    g_ref.get(var.as_tensor()).unwrap()
                ) < 1e-5
            );
        }
        match g.get(x_var.as_tensor()) {
            Some(gx) => {
                assert!(x_tracked);
                assert!(max_diff(gx, g_ref.get(x_var.as_tensor()).unwrap()) < 1e-5);
            }
            None => assert!(!x_tracked, "a tracked input gets its gradient"),
        }
    }

    #[test]
    fn linear_matches_the_composed_version() {
        for relu in [false, true] {
            for masked in [false, true] {
                for x_tracked in [false, true] {
                    check_linear(relu, masked, x_tracked);
                }
            }
        }
    }
}
