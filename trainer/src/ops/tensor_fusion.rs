//! Tensor fusion (Zadeh et al. 2017), TMN's fusion of two modality vectors: per sample the outer product of the
//! vectors each extended by a constant 1, so that the matrix holds the unimodal features (the row and column of
//! the 1) beside every pairwise product.
//!
//! Shapes: a (B, m), b (B, n) → z (B, m + 1, n + 1), `z[s, i, j] = a'[s, i]·b'[s, j]` with `a' = [a, 1]`,
//! `b' = [b, 1]`. CPU kernel: one pass forward; backward `∂a[s, i] = Σ_j ∂z[s, i, j]·b'[s, j]` (i < m) and
//! `∂b[s, j] = Σ_i ∂z[s, i, j]·a'[s, i]` (j < n), the 1s having no gradient. Generic: the concatenation with ones
//! and a broadcast product. No CUDA kernel: the op is one broadcast product, memory-bound, which candle's CUDA
//! elementwise kernels already do in one pass.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use super::{contiguous_f32, with_values, Kernel};
use crate::error::{Error, Result};

/// `[a, 1] ⊗ [b, 1]` per sample, see the module doc.
pub fn tensor_fusion(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (rows, _) = a.dims2()?;
    let (rows_b, _) = b.dims2()?;
    if rows != rows_b {
        return Err(Error::Other(format!(
            "tensor fusion: {:?} and {:?} have different batch sizes",
            a.dims(),
            b.dims()
        )));
    }
    match Kernel::select(a, false) {
        Kernel::Cpu if Kernel::select(b, false) == Kernel::Cpu => kernel(a, b),
        _ => generic(a, b),
    }
}

/// The CPU kernel.
pub(crate) fn kernel(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(a.contiguous()?.apply_op2(&b.contiguous()?, TensorFusion)?)
}

/// The composed version: `[a, 1]` (B, m+1, 1) times `[b, 1]` (B, 1, n+1), broadcast.
pub(crate) fn generic(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let with_one = |x: &Tensor| -> Result<Tensor> {
        let ones = Tensor::ones((x.dim(0)?, 1), x.dtype(), x.device())?;
        Ok(Tensor::cat(&[x, &ones], 1)?)
    };
    let a1 = with_one(a)?.unsqueeze(2)?;
    let b1 = with_one(b)?.unsqueeze(1)?;
    Ok(a1.broadcast_mul(&b1)?)
}

struct TensorFusion;

impl CustomOp2 for TensorFusion {
    fn name(&self) -> &'static str {
        "tensor-fusion"
    }

    fn cpu_fwd(
        &self,
        a_storage: &CpuStorage,
        a_layout: &Layout,
        b_storage: &CpuStorage,
        b_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, m) = a_layout.shape().dims2()?;
        let (_, n) = b_layout.shape().dims2()?;
        let a = contiguous_f32(a_storage, a_layout, self.name())?;
        let b = contiguous_f32(b_storage, b_layout, self.name())?;
        let (m1, n1) = (m + 1, n + 1);
        let mut z = vec![0f32; rows * m1 * n1];
        for (s, out) in z.chunks_exact_mut(m1 * n1).enumerate() {
            let (a, b) = (&a[s * m..(s + 1) * m], &b[s * n..(s + 1) * n]);
            for (i, row) in out.chunks_exact_mut(n1).enumerate() {
                let ai = if i < m { a[i] } else { 1.0 };
                for (v, bj) in row.iter_mut().zip(b.iter().chain([&1.0])) {
                    *v = ai * bj;
                }
            }
        }
        Ok((CpuStorage::F32(z), Shape::from((rows, m1, n1))))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _z: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows, m) = a.dims2()?;
        let (_, n) = b.dims2()?;
        let (m1, n1) = (m + 1, n + 1);
        let (da, db) = with_values(grad, self.name(), |g| {
            with_values(a, self.name(), |a| {
                with_values(b, self.name(), |b| {
                    let mut da = vec![0f32; rows * m];
                    let mut db = vec![0f32; rows * n];
                    for s in 0..rows {
                        let g = &g[s * m1 * n1..(s + 1) * m1 * n1];
                        let (a, b) = (&a[s * m..(s + 1) * m], &b[s * n..(s + 1) * n]);
                        // in f64: a row of ∂z sums n + 1 products
                        for i in 0..m {
                            let row = &g[i * n1..(i + 1) * n1];
                            let dot = super::dot(&row[..n], b) + row[n] as f64;
                            da[s * m + i] = dot as f32;
                        }
                        for j in 0..n {
                            let mut sum = g[m * n1 + j] as f64;
                            for (i, ai) in a.iter().enumerate() {
                                sum += g[i * n1 + j] as f64 * *ai as f64;
                            }
                            db[s * n + j] = sum as f32;
                        }
                    }
                    Ok((da, db))
                })
            })
        })?;
        Ok((
            Some(Tensor::from_vec(da, (rows, m), a.device())?),
            Some(Tensor::from_vec(db, (rows, n), b.device())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_diff, project, uniform};
    use candle_core::Var;

    /// The CPU kernel against the composition, values and both inputs' gradients.
    #[test]
    fn kernel_matches_the_composition() {
        let a = Var::from_tensor(&uniform(&[3, 4], 1.0, 1)).unwrap();
        let b = Var::from_tensor(&uniform(&[3, 6], 1.0, 2)).unwrap();
        let z = kernel(a.as_tensor(), b.as_tensor()).unwrap();
        let z_ref = generic(a.as_tensor(), b.as_tensor()).unwrap();
        assert_eq!(z.dims(), [3, 5, 7]);
        assert!(max_diff(&z, &z_ref) < 1e-6);
        // the corner is the product of the two 1s; the last row and column are the vectors themselves
        let corner = z.get(1).unwrap().get(4).unwrap().get(6).unwrap();
        assert_eq!(corner.to_scalar::<f32>().unwrap(), 1.0);
        let last_row = z.get(2).unwrap().get(4).unwrap().narrow(0, 0, 6).unwrap();
        assert!(max_diff(&last_row, &b.as_tensor().get(2).unwrap()) == 0.0);
        let g = project(&z, 3).backward().unwrap();
        let g_ref = project(&z_ref, 3).backward().unwrap();
        for v in [&a, &b] {
            let (ours, theirs) = (
                g.get(v.as_tensor()).unwrap(),
                g_ref.get(v.as_tensor()).unwrap(),
            );
            assert!(max_diff(ours, theirs) < 1e-5, "{}", max_diff(ours, theirs));
        }
        let err = tensor_fusion(&uniform(&[2, 3], 1.0, 4), &uniform(&[3, 3], 1.0, 5))
            .unwrap_err()
            .to_string();
        assert!(err.contains("batch sizes"), "{err}");
    }
}
