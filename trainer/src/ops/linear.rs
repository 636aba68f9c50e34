//! `relu?(x·Wᵀ + b) ⊙ mask?` — a Linear layer with, optionally, the ReLU and the dropout that follow it (the
//! head's `Linear → ReLU → Dropout`) as one node.
//!
//! Shapes: x (…, in), W (out, in), b (out) → (…, out); `mask` holds one inverted-dropout factor (0 or 1/(1−p),
//! a [`Mask`]) per output value, data without a gradient. CPU kernel (2-D x): one GEMM and
//! one pass forward; backward one GEMM for ∂W, one for ∂x only when x carries a gradient (for inputs straight
//! from data — the raw-waveform MLP's 150 000 samples — it would be a wasted full-size product and a 38 MB
//! accumulation per step) and a column sum for ∂b. Generic: candle's Linear, `relu`, a product with the mask.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::dropout::Mask;
use super::{contiguous_f32, with_values, Kernel};
use crate::error::{Error, Result};

/// `relu?(x·Wᵀ + b) ⊙ mask?`, see the module doc.
pub fn linear(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    relu: bool,
    mask: Option<Mask>,
) -> Result<Tensor> {
    if let Some(mask) = &mask {
        let outputs = x.elem_count() / x.dims().last().copied().unwrap_or(1).max(1)
            * weight.dims().first().copied().unwrap_or(0);
        if mask.len() != outputs {
            return Err(Error::Other(format!(
                "linear: {} dropout factors for an input {:?} and a weight {:?}",
                mask.len(),
                x.dims(),
                weight.dims()
            )));
        }
    }
    match Kernel::select(x, false) {
        Kernel::Cpu if x.rank() == 2 && Kernel::select(weight, false) == Kernel::Cpu => fused(
            x,
            weight,
            bias,
            relu,
            mask.map(Mask::into_host).transpose()?,
        ),
        _ => generic(x, weight, bias, relu, mask),
    }
}

/// The CPU kernel.
pub(crate) fn fused(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    relu: bool,
    mask: Option<Vec<f32>>,
) -> Result<Tensor> {
    Ok(x.contiguous()?
        .apply_op3(weight, bias, LinearOp { relu, mask })?)
}

/// The composed version, any rank and device.
pub(crate) fn generic(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    relu: bool,
    mask: Option<Mask>,
) -> Result<Tensor> {
    let mut y = candle_core::Module::forward(
        &candle_nn::Linear::new(weight.clone(), Some(bias.clone())),
        x,
    )?;
    if relu {
        y = y.relu()?;
    }
    if let Some(mask) = mask {
        y = (&y * mask.into_tensor(y.shape(), y.device(), y.dtype())?)?;
    }
    Ok(y)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_diff, project, uniform};
    use candle_core::{DType, Var};

    fn check_linear(relu: bool, masked: bool, x_tracked: bool) {
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

        let ours = fused(&x, w.as_tensor(), b.as_tensor(), relu, mask.clone()).unwrap();
        let reference =
            generic(&x, w.as_tensor(), b.as_tensor(), relu, mask.map(Mask::Host)).unwrap();
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
