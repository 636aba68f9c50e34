//! l2-normalisation `x / max(‖x‖₂, 1e-12)` along the last dimension (PyTorch `F.normalize`), of one tensor or of
//! the concatenation of up to three (B, d_i) tensors — the concat fusion — without materialising the
//! concatenation. CPU kernel: one pass per row and its closed-form backward; generic: composed candle ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor, D};

use super::{contiguous_f32, dot, rows_and_width, sum_squares, with_values, Kernel};
use crate::error::Result;

/// The composed version, on any device: `x / sqrt(max(Σx², 1e-24))`.
pub(crate) fn generic(x: &Tensor) -> Result<Tensor> {
    // sqrt(max(s, 1e-24)) == max(sqrt(s), 1e-12), but keeps sqrt's backward finite for an all-zero row
    // (candle's sqrt backward divides by the output: 0/0 would poison every gradient with NaN).
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.maximum(1e-24)?.sqrt()?;
    Ok(x.broadcast_div(&norm)?)
}

/// `x / max(‖x‖₂, 1e-12)` along the last dimension, any shape.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    match Kernel::select(x, false) {
        Kernel::Generic => generic(x),
        _ => {
            let (_, width) = rows_and_width(x.shape())?;
            let op = ConcatL2 {
                widths: vec![width],
                shape: x.shape().clone(),
            };
            Ok(x.contiguous()?.apply_op1(op)?)
        }
    }
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
/// first: the concat fusion (docs/reference.md §3.6) as one node. Generic (`cat` then l2) beyond three parts.
pub fn concat_l2_normalize(parts: &[Tensor]) -> Result<Tensor> {
    let kernel = (1..=3).contains(&parts.len())
        && parts
            .iter()
            .all(|p| Kernel::select(p, false) == Kernel::Cpu && p.rank() == 2);
    if kernel {
        fused_concat(parts)
    } else {
        generic(&Tensor::cat(parts, 1)?)
    }
}

/// The kernel over 1 to 3 contiguous-able (B, d_i) parts.
pub(crate) fn fused_concat(parts: &[Tensor]) -> Result<Tensor> {
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
        _ => {
            return Err(crate::error::Error::Other(format!(
                "concat-l2: {} parts (the kernel takes 1 to 3)",
                parts.len()
            )))
        }
    })
}

/// The norm as the composed version defines it: sqrt(max(Σx², 1e-24)) (see [`generic`] on why), and
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_abs, max_diff, project, uniform};
    use candle_core::{Device, Var};

    #[test]
    fn l2_normalize_matches_the_composed_version_with_a_zero_row() {
        let mut values = uniform(&[5, 37], 2.0, 1).to_vec2::<f32>().unwrap();
        values[2] = vec![0.0; 37];
        let x = Var::from_vec(values.concat(), (5, 37), &Device::Cpu).unwrap();
        let ours = fused_concat(&[x.as_tensor().clone()]).unwrap();
        let reference = generic(x.as_tensor()).unwrap();
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
            let ours = fused_concat(&parts).unwrap();
            let reference = generic(&Tensor::cat(&parts, 1).unwrap()).unwrap();
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
}
