//! TMN's fusion, the Tensor Mixer: the tensor fusion of two modality vectors processed by an MLP-Mixer.
//!
//! ```text
//! a = proj_a(x_a) (B, p)   b = proj_b(x_b) (B, q)          (no projection: the vectors as they come)
//! z = [a, 1] ⊗ [b, 1]                       (B, p+1, q+1)   ops::tensor_fusion
//! x = stem(z)                               (B, S = p+1, C) a Linear on each row
//! x = block(x) for each of the n blocks     (B, S, C)
//! out = mean over the S rows of LayerNorm(x)   (B, C)
//! block: x += token_mixing(LN(x)ᵀ)ᵀ;  x += channel_mixing(LN(x))   each MLP fc1 → GELU → fc2
//! ```
//!
//! The Mixer block is Tolstikhin et al.'s (2021): the token-mixing MLP runs along the S rows for each channel, the
//! channel-mixing MLP along the C channels for each row, each after a LayerNorm over the channels and with a skip.
//! The rows are the first modality's features (and its 1), the columns the second's; the "patch embedding" of an
//! image Mixer is the stem. TMN's write-up gives neither the widths nor the stem; these are the Mixer's own.
//! Parameters (under the fusion's name): `proj_<modality>`, `stem`, `blocks.N.{layer_norm_tokens, token_mixing.fc1,
//! token_mixing.fc2, layer_norm_channels, channel_mixing.fc1, channel_mixing.fc2}`, `layer_norm`.

use candle_core::Tensor;

use crate::error::Result;
use crate::nn::params::ParamStore;
use crate::nn::{LayerNorm, Linear};
use crate::ops;

/// fc1 → GELU (erf) → fc2 along the last dimension.
#[derive(Debug, Clone)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    fn new(store: &mut ParamStore, name: &str, width: usize, hidden: usize) -> Result<Self> {
        Ok(Mlp {
            fc1: Linear::new(store, &format!("{name}.fc1"), width, hidden)?,
            fc2: Linear::new(store, &format!("{name}.fc2"), hidden, width)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&ops::gelu_erf(&self.fc1.forward(x)?)?)
    }
}

/// One MLP-Mixer block over (B, S tokens, C channels).
#[derive(Debug, Clone)]
pub struct MixerBlock {
    layer_norm_tokens: LayerNorm,
    token_mixing: Mlp,
    layer_norm_channels: LayerNorm,
    channel_mixing: Mlp,
}

impl MixerBlock {
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        tokens: usize,
        channels: usize,
        token_hidden: usize,
        channel_hidden: usize,
    ) -> Result<Self> {
        Ok(MixerBlock {
            layer_norm_tokens: LayerNorm::new(
                store,
                &format!("{name}.layer_norm_tokens"),
                channels,
            )?,
            token_mixing: Mlp::new(store, &format!("{name}.token_mixing"), tokens, token_hidden)?,
            layer_norm_channels: LayerNorm::new(
                store,
                &format!("{name}.layer_norm_channels"),
                channels,
            )?,
            channel_mixing: Mlp::new(
                store,
                &format!("{name}.channel_mixing"),
                channels,
                channel_hidden,
            )?,
        })
    }

    /// x (B, S, C) → (B, S, C).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let along_tokens = self
            .layer_norm_tokens
            .forward(x)?
            .transpose(1, 2)?
            .contiguous()?;
        let mixed = self
            .token_mixing
            .forward(&along_tokens)?
            .transpose(1, 2)?
            .contiguous()?;
        let x = (x + mixed)?;
        let channels = self
            .channel_mixing
            .forward(&self.layer_norm_channels.forward(&x)?)?;
        Ok((x + channels)?)
    }
}

/// The Tensor Mixer (see the module doc).
#[derive(Debug, Clone)]
pub struct TensorMixer {
    projections: Vec<Option<Linear>>,
    stem: Linear,
    blocks: Vec<MixerBlock>,
    layer_norm: LayerNorm,
    out_features: usize,
}

/// The Tensor Mixer's sizes.
#[derive(Debug, Clone, Copy)]
pub struct MixerSizes {
    /// The two modalities' projection widths, rows first (`None`: no projection).
    pub projections: [Option<usize>; 2],
    /// Channels C (the stem's output, the fusion's output width).
    pub channels: usize,
    pub layers: usize,
    pub token_hidden: usize,
    pub channel_hidden: usize,
}

impl TensorMixer {
    /// `names` and `dims`: the two modalities (rows first) and their vectors' widths.
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        names: [&str; 2],
        dims: [usize; 2],
        sizes: MixerSizes,
    ) -> Result<Self> {
        let mut projections = Vec::new();
        let mut widths = [0usize; 2];
        for (i, (modality, d)) in names.iter().zip(dims).enumerate() {
            widths[i] = sizes.projections[i].unwrap_or(d);
            projections.push(match sizes.projections[i] {
                Some(p) => Some(Linear::new(
                    store,
                    &format!("{name}.proj_{modality}"),
                    d,
                    p,
                )?),
                None => None,
            });
        }
        let stem = Linear::new(
            store,
            &format!("{name}.stem"),
            widths[1] + 1,
            sizes.channels,
        )?;
        let blocks = (0..sizes.layers)
            .map(|i| {
                MixerBlock::new(
                    store,
                    &format!("{name}.blocks.{i}"),
                    widths[0] + 1,
                    sizes.channels,
                    sizes.token_hidden,
                    sizes.channel_hidden,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(TensorMixer {
            projections,
            stem,
            blocks,
            layer_norm: LayerNorm::new(store, &format!("{name}.layer_norm"), sizes.channels)?,
            out_features: sizes.channels,
        })
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// The two modality vectors (B, d_a), (B, d_b) → (B, C).
    pub fn forward(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let project = |i: usize, x: &Tensor| -> Result<Tensor> {
            match &self.projections[i] {
                Some(p) => p.forward(x),
                None => Ok(x.clone()),
            }
        };
        let z = ops::tensor_fusion(&project(0, a)?, &project(1, b)?)?;
        let mut x = self.stem.forward(&z)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        Ok(self.layer_norm.forward(&x)?.mean(1)?)
    }
}
