//! MESM's cross-modal sparse attention (Dai et al., NAACL 2021, §3): a query vector from another modality picks
//! the positions of a CNN's feature maps that the rest of the CNN sees.
//!
//! ```text
//! M (F, C, H, W): the maps of F = B·S frames (S per sample)       q (B, d): the query of each sample
//! M_q = tanh((W_m M + b_m) ⊕ W_q q)         (F, H·W, k)   ⊕ adds the sample's projected query at every position
//! M_i = softmax_{H·W}(W_i M_q + b_i)        (F, H·W)      attention scores per frame
//! M_ns = M_i ⊙ nucleus(M_i, p)              (F, H·W)      the smallest set of positions of mass ≥ p kept
//! M_o = M_ns ⊗ M                            (F, C, H, W)  every channel scaled by its position's kept score
//! ```
//!
//! `W_m ∈ R^{k×C}` is a 1×1 convolution (a Linear over the channels), `W_q ∈ R^{k×d}` has no bias (as the paper
//! writes it), `W_i ∈ R^{1×k}` and `b_i` score each position. The nucleus mask ([`ops::nucleus_mask`]) has no
//! gradient; the kept scores carry it to `W_i`, `W_m`, `W_q` and the query. Parameters (under the block's name):
//! `feature_proj.{weight,bias}`, `query_proj.weight`, `score.{weight,bias}`.

use candle_core::{Tensor, D};

use crate::error::{Error, Result};
use crate::nn::params::ParamStore;
use crate::nn::Linear;
use crate::ops;

/// The block's output and how many positions it kept.
pub struct Attended {
    /// M_o (F, C, H, W).
    pub maps: Tensor,
    /// Positions kept over all frames, and positions in all (F·H·W).
    pub kept: usize,
    pub positions: usize,
}

/// The sparse cross-modal attention block (see the module doc).
#[derive(Debug, Clone)]
pub struct SparseCrossModalAttention {
    feature_proj: Linear,
    query_weight: Tensor,
    score: Linear,
    /// Nucleus mass p; `None`: every position kept (dense attention).
    p: Option<f64>,
}

impl SparseCrossModalAttention {
    /// A block over `channels`-channel maps guided by `query`-wide vectors, projected to `features` (k).
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        channels: usize,
        query: usize,
        features: usize,
        p: Option<f64>,
    ) -> Result<Self> {
        let feature_proj = Linear::new(store, &format!("{name}.feature_proj"), channels, features)?;
        // PyTorch's Linear initialisation, without the bias
        let bound = 1.0 / (query as f64).sqrt();
        let query_weight = store.uniform(
            &format!("{name}.query_proj.weight"),
            &[features, query],
            bound,
        )?;
        let score = Linear::new(store, &format!("{name}.score"), features, 1)?;
        Ok(SparseCrossModalAttention {
            feature_proj,
            query_weight,
            score,
            p,
        })
    }

    /// The attention scores M_i (F, H·W) of maps (F, C, H, W) for queries (B, d), F = B·S.
    pub fn scores(&self, maps: &Tensor, query: &Tensor) -> Result<Tensor> {
        let (frames, channels, h, w) = maps.dims4()?;
        let (samples, _) = query.dims2()?;
        if samples == 0 || frames % samples != 0 {
            return Err(Error::Other(format!(
                "sparse attention: {frames} frames for {samples} queries (frames per sample must be whole)"
            )));
        }
        let per_sample = frames / samples;
        let positions = maps
            .reshape((frames, channels, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        let projected = self.feature_proj.forward(&positions)?; // (F, HW, k)
        let k = projected.dim(D::Minus1)?;
        // each sample's projected query, once per frame of the sample
        let q = query.matmul(&self.query_weight.t()?)?; // (B, k)
        let q = q
            .unsqueeze(1)?
            .broadcast_as((samples, per_sample, k))?
            .contiguous()?
            .reshape((frames, 1, k))?;
        let mq = projected.broadcast_add(&q)?.tanh()?;
        let logits = self.score.forward(&mq)?.squeeze(D::Minus1)?; // (F, HW)
        ops::softmax(&logits)
    }

    /// M_o of maps (F, C, H, W) for queries (B, d), and the positions kept.
    pub fn forward(&self, maps: &Tensor, query: &Tensor) -> Result<Attended> {
        let (frames, channels, h, w) = maps.dims4()?;
        let scores = self.scores(maps, query)?;
        let positions = frames * h * w;
        let (scores, kept) = match self.p {
            Some(p) => {
                let mask = ops::nucleus_mask(&scores, p)?;
                let kept = mask.sum_all()?.to_scalar::<f32>()?.round() as usize;
                ((scores * mask)?, kept)
            }
            None => (scores, positions),
        };
        let maps = maps.broadcast_mul(&scores.reshape((frames, 1, h, w))?)?;
        debug_assert_eq!(maps.dim(1)?, channels);
        Ok(Attended {
            maps,
            kept,
            positions,
        })
    }
}
