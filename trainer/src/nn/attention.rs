//! Multi-head self-attention as PyTorch's `nn.MultiheadAttention` computes it (packed `in_proj_weight` (3E, E),
//! `in_proj_bias`, `out_proj`), dropout 0, no mask, plus the reference's "degree → heads" rule (docs/reference.md §3.7).
//!
//! The reference hands the layer a 2-D (B, E) tensor, which PyTorch reads as ONE unbatched sequence of length B:
//! every sample attends to every other sample of its batch (docs/reference.md quirk Q7). That is the default here
//! ([`AttentionScope::Batch`]); [`AttentionScope::Sample`] treats each sample as its own sequence of length 1,
//! where attention reduces to `out_proj(v_proj(x))`.
//!
//! `softmax(q·kᵀ/√d)·v` per head, from primitives (`ops::softmax`, not the fused kernel that drops gradients).

use candle_core::{Tensor, D};

use crate::config::AttentionScope;
use crate::error::Result;
use crate::nn::params::ParamStore;
use crate::nn::Linear;

/// Heads for an embedding of `dim` and a `degree`: the `degree`-th smallest divisor of `dim` (1-based), or the
/// largest divisor if there are fewer (docs/reference.md §3.7: 512/1024/256 with degree 3 → 4; 768: 2→2, 3→3, 4→4, 5→6, 6→8).
pub fn heads_for_degree(dim: usize, degree: usize) -> usize {
    let divisors: Vec<usize> = (1..=dim).filter(|d| dim.is_multiple_of(*d)).collect();
    let position = degree.max(1) - 1;
    divisors
        .get(position)
        .or(divisors.last())
        .copied()
        .unwrap_or(1)
}

#[derive(Debug, Clone)]
pub struct MultiheadAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    out_proj: Linear,
    heads: usize,
    dim: usize,
    scope: AttentionScope,
}

impl MultiheadAttention {
    /// Parameters `<name>.in_proj_weight` (xavier-uniform), `<name>.in_proj_bias` (zeros),
    /// `<name>.out_proj.weight` (PyTorch Linear init) and `<name>.out_proj.bias` (zeros), as PyTorch names them.
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        dim: usize,
        heads: usize,
        scope: AttentionScope,
    ) -> Result<Self> {
        let bound = (6.0 / (dim + 3 * dim) as f64).sqrt();
        let in_w = store.uniform(&format!("{name}.in_proj_weight"), &[3 * dim, dim], bound)?;
        let in_b = store.constant(&format!("{name}.in_proj_bias"), &[3 * dim], 0.0)?;
        let out_w = store.uniform(
            &format!("{name}.out_proj.weight"),
            &[dim, dim],
            1.0 / (dim as f64).sqrt(),
        )?;
        let out_b = store.constant(&format!("{name}.out_proj.bias"), &[dim], 0.0)?;
        let part = |t: &Tensor, i: usize| t.narrow(0, i * dim, dim);
        Ok(MultiheadAttention {
            q: Linear::from_tensors(part(&in_w, 0)?, part(&in_b, 0)?)?,
            k: Linear::from_tensors(part(&in_w, 1)?, part(&in_b, 1)?)?,
            v: Linear::from_tensors(part(&in_w, 2)?, part(&in_b, 2)?)?,
            out_proj: Linear::from_tensors(out_w, out_b)?,
            heads,
            dim,
            scope,
        })
    }

    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Self-attention over x (B, E) → (B, E).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let v = self.v.forward(x)?;
        if self.scope == AttentionScope::Sample {
            // A sequence of length 1: the attention weight is exactly 1.
            return self.out_proj.forward(&v);
        }
        let b = x.dim(0)?;
        let head_dim = self.dim / self.heads;
        // (B, E) → (heads, B, head_dim)
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, self.heads, head_dim))?
                .transpose(0, 1)?
                .contiguous()?)
        };
        let q = split((self.q.forward(x)? / (head_dim as f64).sqrt())?)?;
        let k = split(self.k.forward(x)?)?;
        let v = split(v)?;
        let scores = q.matmul(&k.transpose(1, 2)?.contiguous()?)?; // (heads, B, B)
        let weights = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let mixed = weights.matmul(&v)?; // (heads, B, head_dim)
        let mixed = mixed
            .transpose(0, 1)?
            .contiguous()?
            .reshape((b, self.dim))?;
        self.out_proj.forward(&mixed)
    }
}

/// Multi-head attention of a query sequence over a context sequence whose padded positions are left out
/// (`nn.MultiheadAttention(q, k=v=context, key_padding_mask)` with separate q/k/v projections named `q_proj`,
/// `k_proj`, `v_proj`, `out_proj`): `softmax(q·kᵀ/√d + mask)·v` per head, dropout 0. The cross-attention fusion's
/// layer (one per direction).
#[derive(Debug, Clone)]
pub struct CrossAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    dim: usize,
}

impl CrossAttention {
    /// PyTorch-initialised Linears `<name>.{q,k,v,out}_proj`; `dim` must be a multiple of `heads`.
    pub fn new(store: &mut ParamStore, name: &str, dim: usize, heads: usize) -> Result<Self> {
        if heads == 0 || !dim.is_multiple_of(heads) {
            return Err(crate::error::Error::Other(format!(
                "{name}: width {dim} is not a multiple of {heads} heads"
            )));
        }
        let mut linear = |part: &str| Linear::new(store, &format!("{name}.{part}"), dim, dim);
        Ok(CrossAttention {
            q_proj: linear("q_proj")?,
            k_proj: linear("k_proj")?,
            v_proj: linear("v_proj")?,
            out_proj: linear("out_proj")?,
            heads,
            dim,
        })
    }

    /// Queries x (B, Lq, d) over `context` (B, Lk, d) with `context_mask` (B, Lk) (0 = padding) → (B, Lq, d).
    pub fn forward(&self, x: &Tensor, context: &Tensor, context_mask: &Tensor) -> Result<Tensor> {
        // large and finite: exp() of it is exactly 0 in fp32, and no inf − inf can appear
        const MASKED: f64 = -1e9;
        let (b, lq, _) = x.dims3()?;
        let lk = context.dim(1)?;
        let head_dim = self.dim / self.heads;
        let split = |t: Tensor, l: usize| -> Result<Tensor> {
            Ok(t.reshape((b, l, self.heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split((self.q_proj.forward(x)? / (head_dim as f64).sqrt())?, lq)?;
        let k = split(self.k_proj.forward(context)?, lk)?;
        let v = split(self.v_proj.forward(context)?, lk)?;
        let bias = context_mask
            .to_dtype(candle_core::DType::F32)?
            .ne(0f32)?
            .to_dtype(x.dtype())?
            .affine(-MASKED, MASKED)?
            .reshape((b, 1, 1, lk))?;
        let scores = q
            .matmul(&k.transpose(2, 3)?.contiguous()?)?
            .broadcast_add(&bias)?;
        let mixed = crate::ops::softmax(&scores)?
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, lq, self.dim))?;
        self.out_proj.forward(&mixed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degree_to_heads_matches_the_spec() {
        assert_eq!(heads_for_degree(512, 3), 4);
        assert_eq!(heads_for_degree(1024, 3), 4);
        assert_eq!(heads_for_degree(256, 3), 4);
        let h: Vec<usize> = (2..=6).map(|d| heads_for_degree(768, d)).collect();
        assert_eq!(h, [2, 3, 4, 6, 8]);
        assert_eq!(
            heads_for_degree(7, 5),
            7,
            "past the list: the largest divisor"
        );
    }

    #[test]
    fn batch_scope_mixes_samples_and_sample_scope_does_not() {
        let dev = candle_core::Device::Cpu;
        let mut store = ParamStore::new(&dev, 3);
        let mha = MultiheadAttention::new(&mut store, "a", 8, 2, AttentionScope::Batch).unwrap();
        let per = MultiheadAttention {
            scope: AttentionScope::Sample,
            ..mha.clone()
        };
        let x = Tensor::randn(0f32, 1.0, (3, 8), &dev).unwrap();
        let y = Tensor::cat(
            &[
                x.narrow(0, 0, 2).unwrap(),
                (x.narrow(0, 2, 1).unwrap() * 5.0).unwrap(),
            ],
            0,
        )
        .unwrap();
        let first = |m: &MultiheadAttention, t: &Tensor| {
            m.forward(t)
                .unwrap()
                .narrow(0, 0, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        let diff = |a: Vec<f32>, b: Vec<f32>| {
            a.iter()
                .zip(&b)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
        };
        assert!(
            diff(first(&mha, &x), first(&mha, &y)) > 1e-4,
            "batch attention must see the other samples"
        );
        assert!(
            diff(first(&per, &x), first(&per, &y)) < 1e-6,
            "per-sample attention must not"
        );
    }
}
