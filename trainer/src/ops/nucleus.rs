//! Nucleus sampling of attention scores (MESM's sparse cross-modal attention, Dai et al. 2021): per row of
//! scores that sum to one, the mask of the smallest set of positions whose mass reaches `p`.
//!
//! Shapes: s (R, P) → mask (R, P) of 0.0 / 1.0, never tracked by autograd (the selection is piecewise
//! constant: the caller multiplies the scores by the mask, and the kept scores carry the gradient).
//!
//! Rule: rank the positions by score, highest first, ties by the lower index first (deterministic, so that the
//! PyTorch reference of the tests, a stable descending sort, selects the same set); keep a position iff the mass
//! ranked strictly before it is below `p`. The first-ranked position is always kept; `p ≥ 1` keeps every position.
//!
//! CPU kernel: a stable sort per row and a running sum (f64), O(P log P). Generic: the mass ranked before each
//! position as a (P, P) comparison matrix times the scores, O(P²) per row, in chunks of rows that bound the
//! matrix to [`GENERIC_CHUNK`] elements. No CUDA kernel: the mask has no backward and one evaluation per forward,
//! over maps of a few hundred positions at the configured ResNet stage (18 × 32 = 576 for a 256-pixel frame at
//! stage 2); its cost is a small fraction of the convolutions around it, so the generic composition serves a GPU.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, D};

use super::{contiguous_f32, Kernel};
use crate::error::{Error, Result};

/// The generic path's comparison matrices hold at most this many elements per chunk of rows (16 MiB of f32).
pub const GENERIC_CHUNK: usize = 1 << 22;

/// The nucleus mask of each row of `scores` (R, P) at mass `p` ∈ (0, 1], see the module doc.
pub fn nucleus_mask(scores: &Tensor, p: f64) -> Result<Tensor> {
    if !(p > 0.0 && p <= 1.0) {
        return Err(Error::Other(format!(
            "nucleus sampling: p must be in (0, 1], found {p}"
        )));
    }
    scores.dims2()?;
    let scores = scores.detach();
    match Kernel::select(&scores, false) {
        Kernel::Generic => generic(&scores, p),
        _ => kernel(&scores, p),
    }
}

/// The CPU kernel.
pub(crate) fn kernel(scores: &Tensor, p: f64) -> Result<Tensor> {
    Ok(scores.contiguous()?.apply_op1(Nucleus { p })?)
}

/// The composed version: `before[r, i] = Σ_j s[r, j]·[s_j > s_i or (s_j = s_i and j < i)]`, mask
/// `before < p`.
pub(crate) fn generic(scores: &Tensor, p: f64) -> Result<Tensor> {
    if p >= 1.0 {
        return Ok(scores.ones_like()?);
    }
    let (rows, positions) = scores.dims2()?;
    let device = scores.device();
    let s = scores.to_dtype(DType::F32)?;
    // earlier[i, j] = 1 where j < i: the tie-break
    let index = Tensor::arange(0u32, positions as u32, device)?;
    let earlier = index
        .unsqueeze(0)?
        .broadcast_lt(&index.unsqueeze(1)?)?
        .to_dtype(DType::F32)?;
    let chunk = (GENERIC_CHUNK / (positions * positions).max(1)).max(1);
    let mut masks = Vec::new();
    let mut start = 0;
    while start < rows {
        let n = chunk.min(rows - start);
        let s = s.narrow(0, start, n)?;
        let si = s.unsqueeze(2)?; // (n, P, 1): the position ranked
        let sj = s.unsqueeze(1)?; // (n, 1, P): the others
        let higher = sj.broadcast_gt(&si)?.to_dtype(DType::F32)?;
        let tied_earlier = sj
            .broadcast_eq(&si)?
            .to_dtype(DType::F32)?
            .broadcast_mul(&earlier.unsqueeze(0)?)?;
        let ahead = (higher + tied_earlier)?;
        let before = ahead.broadcast_mul(&sj)?.sum(D::Minus1)?;
        masks.push(before.lt(p)?.to_dtype(DType::F32)?);
        start += n;
    }
    Ok(Tensor::cat(&masks, 0)?.to_dtype(scores.dtype())?)
}

struct Nucleus {
    p: f64,
}

impl CustomOp1 for Nucleus {
    fn name(&self) -> &'static str {
        "nucleus-mask"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, positions) = layout.shape().dims2()?;
        let s = contiguous_f32(storage, layout, self.name())?;
        let mut mask = vec![0f32; rows * positions];
        let mut order: Vec<usize> = Vec::with_capacity(positions);
        for (row, out) in s
            .chunks_exact(positions.max(1))
            .zip(mask.chunks_exact_mut(positions.max(1)))
        {
            order.clear();
            order.extend(0..positions);
            // stable: equal scores keep their index order
            order.sort_by(|&a, &b| {
                row[b]
                    .partial_cmp(&row[a])
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            let mut before = 0f64;
            for &i in &order {
                // p = 1 keeps all, whatever the rounding of the scores' sum
                if self.p < 1.0 && before >= self.p {
                    break;
                }
                out[i] = 1.0;
                before += row[i] as f64;
            }
        }
        Ok((CpuStorage::F32(mask), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_diff, uniform};
    use candle_core::Device;

    fn softmax_rows(x: &Tensor) -> Tensor {
        candle_nn::ops::softmax(x, D::Minus1).unwrap()
    }

    /// The CPU kernel and the composition select the same positions, and each is the smallest set reaching p.
    #[test]
    fn kernel_matches_the_composition_and_keeps_the_smallest_set() {
        let s = softmax_rows(&(uniform(&[7, 13], 1.0, 3) * 3.0).unwrap());
        for p in [0.05, 0.3, 0.5, 0.7, 0.999, 1.0] {
            let ours = kernel(&s, p).unwrap();
            let theirs = generic(&s, p).unwrap();
            assert_eq!(max_diff(&ours, &theirs), 0.0, "p = {p}");
            let rows = s.to_vec2::<f32>().unwrap();
            let masks = ours.to_vec2::<f32>().unwrap();
            for (row, mask) in rows.iter().zip(&masks) {
                let kept: f64 = row.iter().zip(mask).map(|(v, m)| (v * m) as f64).sum();
                let min_kept = row
                    .iter()
                    .zip(mask)
                    .filter(|(_, m)| **m == 1.0)
                    .map(|(v, _)| *v)
                    .fold(f32::INFINITY, f32::min);
                // reaches p (to rounding), and dropping its smallest kept score would not
                assert!(kept >= p - 1e-6, "p {p}: kept mass {kept}");
                assert!(kept - (min_kept as f64) < p, "p {p}: not the smallest set");
                // every dropped score is at most the smallest kept one
                assert!(row
                    .iter()
                    .zip(mask)
                    .all(|(v, m)| *m == 1.0 || *v <= min_kept));
            }
        }
        assert_eq!(
            kernel(&s, 1.0)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            7.0 * 13.0
        );
    }

    /// Ties go to the lower index; the mask carries no gradient; bad p and shapes are refused.
    #[test]
    fn ties_break_by_index_and_errors_are_named() {
        let s = Tensor::new(
            &[[0.25f32, 0.25, 0.25, 0.25], [0.1, 0.4, 0.1, 0.4]],
            &Device::Cpu,
        )
        .unwrap();
        for mask in [kernel(&s, 0.5).unwrap(), generic(&s, 0.5).unwrap()] {
            assert_eq!(
                mask.to_vec2::<f32>().unwrap(),
                [[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0]]
            );
        }
        for mask in [kernel(&s, 0.6).unwrap(), generic(&s, 0.6).unwrap()] {
            assert_eq!(
                mask.to_vec2::<f32>().unwrap(),
                [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]]
            );
        }
        for mask in [kernel(&s, 0.85).unwrap(), generic(&s, 0.85).unwrap()] {
            assert_eq!(
                mask.to_vec2::<f32>().unwrap(),
                [[1.0; 4], [1.0, 1.0, 0.0, 1.0]]
            );
        }
        let v = candle_core::Var::from_tensor(&s).unwrap();
        let mask = nucleus_mask(v.as_tensor(), 0.5).unwrap();
        assert!(!mask.track_op());
        let e = nucleus_mask(&s, 0.0).unwrap_err().to_string();
        assert!(e.contains("(0, 1]"), "{e}");
        assert!(nucleus_mask(&s.unsqueeze(0).unwrap(), 0.5).is_err());
    }

    /// The generic path's chunking gives the same mask as one chunk.
    #[test]
    fn generic_chunks_agree() {
        let s = softmax_rows(&uniform(&[5, 1024], 4.0, 9));
        // GENERIC_CHUNK / 1024² = 4 rows per chunk: two chunks
        let whole = kernel(&s, 0.5).unwrap();
        assert_eq!(max_diff(&whole, &generic(&s, 0.5).unwrap()), 0.0);
    }
}
