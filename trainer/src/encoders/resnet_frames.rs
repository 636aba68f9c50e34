//! The visual CNN of MESM and its dense FE2E variant (Dai et al. 2021): ResNet-50 on each frame of the mosaic,
//! optionally with MESM's text-guided sparse attention ([`SparseCrossModalAttention`]) between two stages.
//!
//! ```text
//! mosaic (B, 3, L, W), frames stacked vertically  → frames (B·5, 3, L/5, W)    row i·L/5 onwards, L/5 rows each
//! h = stages 1..=s(stem(frames))                  (B·5, C_s, h, w)
//! h = M_o of the sparse attention with the sample's query (text, and audio, vectors)   [MESM only]
//! h = stages s+1..=4(h); per-frame global average pool  (B·5, 2048)
//! out = mean over the 5 frames                    (B, 2048), l2-normalised if configured
//! ```
//!
//! The ResNet's parameters are torchvision's names under `visual.` (pretrained weights load as for `resnet50`),
//! the attention's under `visual_sparse.`. The fraction of positions the attention kept during training is
//! counted here and read once per epoch ([`FramesResNet::take_kept_fraction`]).

use std::path::Path;
use std::sync::Mutex;

use candle_core::{Tensor, D};

use crate::encoders::resnet::ResNet50;
use crate::error::{Error, Result};
use crate::model::sparse_attention::SparseCrossModalAttention;
use crate::nn::params::ParamStore;
use crate::ops::l2_normalize_if;

/// Frames in a mosaic (the ETL's `DEFAULT_SNAPSHOT_COUNT`, docs/reference.md §1.3).
pub const MOSAIC_FRAMES: usize = 5;

/// Where and how the sparse attention runs.
#[derive(Debug, Clone, Copy)]
pub struct SparseSpec {
    /// The ResNet stage (1–4) after which the attention runs.
    pub stage: usize,
    /// Width of the query vector (the text's, and the audio's, features concatenated).
    pub query: usize,
    /// k, the attention's hidden width.
    pub features: usize,
    /// Nucleus mass p; `None` keeps every position (dense attention).
    pub p: Option<f64>,
}

/// The mosaics (B, C, L, W), `count` frames stacked top to bottom (`meld-etl extract`, then resized whole), as
/// their frames (B·count, C, ⌊L/count⌋, W), sample-major and each sample's frames in time order. Frame k starts at
/// row ⌊k·L/count⌋, where the resize put it, and keeps ⌊L/count⌋ rows (where L is not a multiple of count, under a
/// row of each frame's share is left out). The one cut of the mosaic: MESM's CNN and the LSTM fusion both use it.
pub fn mosaic_frames(mosaics: &Tensor, count: usize) -> Result<Tensor> {
    let (b, c, l, w) = mosaics.dims4()?;
    let rows = l / count.max(1);
    if count == 0 || rows == 0 {
        return Err(Error::Other(format!(
            "cannot cut a mosaic {l} pixels high into {count} frames"
        )));
    }
    let frames = (0..count)
        .map(|i| mosaics.narrow(2, i * l / count, rows))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::stack(&frames, 1)?.reshape((b * count, c, rows, w))?)
}

pub struct FramesResNet {
    resnet: ResNet50,
    attention: Option<(usize, SparseCrossModalAttention)>,
    l2norm: bool,
    /// Positions kept and seen by the attention in training forwards since the last read.
    kept: Mutex<(u64, u64)>,
}

impl FramesResNet {
    /// A random ResNet-50 (or torchvision's `weights`) under `visual.`, the attention (with `sparse`) under
    /// `visual_sparse.`.
    pub fn new(
        store: &mut ParamStore,
        weights: Option<&Path>,
        sparse: Option<SparseSpec>,
        l2norm: bool,
    ) -> Result<Self> {
        // the ResNet itself never normalises: its output is per frame, the mean over frames is
        let resnet = match weights {
            None => ResNet50::new(store, "visual", false)?,
            Some(path) => ResNet50::from_torchvision(store, "visual", path, false)?,
        };
        let attention = match sparse {
            None => None,
            Some(spec) => {
                if !(1..=4).contains(&spec.stage) {
                    return Err(Error::Other(format!(
                        "sparse attention after ResNet stage {}: stages are 1 to 4",
                        spec.stage
                    )));
                }
                let channels = resnet.stage_channels(spec.stage - 1)?;
                let block = SparseCrossModalAttention::new(
                    store,
                    "visual_sparse",
                    channels,
                    spec.query,
                    spec.features,
                    spec.p,
                )?;
                Some((spec.stage, block))
            }
        };
        Ok(FramesResNet {
            resnet,
            attention,
            l2norm,
            kept: Mutex::new((0, 0)),
        })
    }

    pub fn out_features(&self) -> usize {
        self.resnet.out_features()
    }

    /// Whether [`Self::forward`] needs a query.
    pub fn needs_query(&self) -> bool {
        self.attention.is_some()
    }

    /// (B, 3, L, W) mosaics and the (B, d) queries (with the attention) → (B, 2048).
    pub fn forward(&self, mosaics: &Tensor, query: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let b = mosaics.dim(0)?;
        let h = self
            .resnet
            .stem(&mosaic_frames(mosaics, MOSAIC_FRAMES)?, train)?;
        let last = match &self.attention {
            None => self.resnet.run_stages(&h, 0..4, train)?,
            Some((stage, block)) => {
                let query = query.ok_or_else(|| {
                    Error::Other("the sparse visual attention needs a query vector".into())
                })?;
                let h = self.resnet.run_stages(&h, 0..*stage, train)?;
                let attended = block.forward(&h, query)?;
                if train {
                    let mut kept = self
                        .kept
                        .lock()
                        .map_err(|_| Error::Other("kept-positions counter poisoned".into()))?;
                    kept.0 += attended.kept as u64;
                    kept.1 += attended.positions as u64;
                }
                self.resnet.run_stages(&attended.maps, *stage..4, train)?
            }
        };
        let per_frame = self.resnet.pool(&last)?; // (B·5, C)
        let c = per_frame.dim(D::Minus1)?;
        let pooled = per_frame.reshape((b, MOSAIC_FRAMES, c))?.mean(1)?;
        l2_normalize_if(pooled, self.l2norm)
    }

    /// The fraction of positions the attention kept in the training forwards since the last call (1.0 without
    /// sparse attention: the dense CNN sees every position; `None` before any training forward with it).
    pub fn take_kept_fraction(&self) -> Option<f64> {
        if self.attention.is_none() {
            return Some(1.0);
        }
        let mut kept = self.kept.lock().ok()?;
        let (k, n) = std::mem::take(&mut *kept);
        (n > 0).then(|| k as f64 / n as f64)
    }
}
