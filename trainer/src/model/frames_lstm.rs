//! The frames + voice + LSTM seed system's time axis (`modules_fusion: lstm`; README "Frames, voice and an LSTM"):
//! the mosaic's T frames each through the ResNet, the waveform's T windows each through the vocal net
//! ([`crate::encoders::vocal_net`]), the two vectors of a time step concatenated, an LSTM over the T steps, its last
//! hidden state the fused vector the head reads.
//!
//! The mosaic is T frames stacked top to bottom (`meld-etl extract`), resized whole (`visual_crop: full`) to
//! (3, L, S): frame k is rows ⌊k·L/T⌋ … + ⌊L/T⌋ ([`mosaic_frames`], the cut MESM's CNN uses too).

use candle_core::Tensor;

use crate::encoders::resnet::ResNet50;
use crate::encoders::resnet_frames::mosaic_frames;
use crate::error::{Error, Result};
use crate::nn::lstm::Lstm;
use crate::nn::params::ParamStore;

/// The ResNet's pooled features of every frame: (B, C, H, W) → (B, T, F). BatchNorm's batch statistics (in
/// training) are over all B·T frames.
pub fn frame_features(resnet: &ResNet50, x: &Tensor, frames: usize, train: bool) -> Result<Tensor> {
    let b = x.dim(0)?;
    let features = resnet.forward(&mosaic_frames(x, frames)?, train)?;
    Ok(features.reshape((b, frames, resnet.out_features()))?)
}

/// Per-step concatenation of the modalities' sequences, then the LSTM; its last hidden state is the output.
#[derive(Debug, Clone)]
pub struct FramesLstm {
    lstm: Lstm,
    in_features: usize,
}

impl FramesLstm {
    /// `dims`: the width of each modality's per-step vector (in order visual, audio); `hidden`: the LSTM's width.
    pub fn new(store: &mut ParamStore, name: &str, dims: &[usize], hidden: usize) -> Result<Self> {
        let in_features = dims.iter().sum();
        Ok(FramesLstm {
            lstm: Lstm::new(store, &format!("{name}.lstm"), in_features, hidden)?,
            in_features,
        })
    }

    pub fn out_features(&self) -> usize {
        self.lstm.hidden()
    }

    /// Sequences (B, T, d_m), one per modality, → (B, hidden).
    pub fn forward(&self, sequences: &[Tensor]) -> Result<Tensor> {
        let x = Tensor::cat(sequences, 2)?;
        if x.dim(2)? != self.in_features {
            return Err(Error::Other(format!(
                "the LSTM fusion expects {} features per step, the encoders gave {:?}",
                self.in_features,
                sequences
                    .iter()
                    .map(|s| s.dims().to_vec())
                    .collect::<Vec<_>>()
            )));
        }
        Ok(self.lstm.forward(&x)?.last)
    }
}
