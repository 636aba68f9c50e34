//! MESM's audio CNN (Dai et al. 2021): a log-mel spectrogram of the waveform, a small CNN over it, and optionally
//! MESM's text-guided sparse attention ([`SparseCrossModalAttention`]) between two of its blocks.
//!
//! ```text
//! waveform (B, N), 16 kHz mono in [-1, 1]
//! → log-mel (B, 1, 64, T): 25 ms Hann frames every 10 ms (no centring), |DFT|², 64 HTK mel bands, log(· + 1e-6)
//! → 4 blocks: 3×3 convolution (stride 2, no bias) → BatchNorm → ReLU, widths 16, 32, 64, 128
//!   (the sparse attention with the text query after block `stage`)
//! → global average pool (B, 128)
//! ```
//!
//! The spectrogram is input preprocessing (no parameters, no gradient), composed of candle ops so that it runs on
//! the model's device: frames gathered by index, a DFT as two products with fixed cosine and sine bases, a product
//! with the mel filter bank. The paper cuts the spectrogram into chunks for a CNN each; here the whole utterance is
//! one map (S = 1). Parameters under `audio.`: `blocks.N.conv.weight`, `blocks.N.bn.*`; the attention's under
//! `audio_sparse.`.

use std::sync::Mutex;

use candle_core::{DType, Device, Tensor, D};

use crate::error::{Error, Result};
use crate::model::sparse_attention::SparseCrossModalAttention;
use crate::nn::params::ParamStore;
use crate::nn::BatchNorm;
use crate::ops::conv2d;

pub const SAMPLE_RATE: usize = 16_000;
pub const N_FFT: usize = 400;
pub const HOP: usize = 160;
pub const MELS: usize = 64;
/// The blocks' widths (the config's; the tests narrow them); the last is the encoder's output width.
pub const WIDTHS: [usize; 4] = [16, 32, 64, 128];

/// The log-mel spectrogram (see the module doc): fixed bases built once per device.
#[derive(Debug, Clone)]
pub struct LogMel {
    window: Tensor,
    cos: Tensor,
    sin: Tensor,
    mel: Tensor,
}

/// HTK's mel scale.
fn hz_to_mel(hz: f64) -> f64 {
    2595.0 * (1.0 + hz / 700.0).log10()
}

fn mel_to_hz(mel: f64) -> f64 {
    700.0 * (10f64.powf(mel / 2595.0) - 1.0)
}

impl LogMel {
    pub fn new(device: &Device) -> Result<Self> {
        let bins = N_FFT / 2 + 1;
        // periodic Hann, as torch.hann_window(N_FFT)
        let window: Vec<f32> = (0..N_FFT)
            .map(|n| {
                (0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos()) as f32
            })
            .collect();
        let mut cos = vec![0f32; N_FFT * bins];
        let mut sin = vec![0f32; N_FFT * bins];
        for n in 0..N_FFT {
            for k in 0..bins {
                let angle = 2.0 * std::f64::consts::PI * (n * k % N_FFT) as f64 / N_FFT as f64;
                cos[n * bins + k] = angle.cos() as f32;
                sin[n * bins + k] = angle.sin() as f32;
            }
        }
        // triangular filters between MELS + 2 points equally spaced in mel from 0 Hz to Nyquist (torchaudio's
        // melscale_fbanks with mel_scale "htk", norm None)
        let nyquist = SAMPLE_RATE as f64 / 2.0;
        let top = hz_to_mel(nyquist);
        let points: Vec<f64> = (0..MELS + 2)
            .map(|i| mel_to_hz(top * i as f64 / (MELS + 1) as f64))
            .collect();
        let mut mel = vec![0f32; bins * MELS];
        for k in 0..bins {
            let hz = nyquist * k as f64 / (bins - 1) as f64;
            for m in 0..MELS {
                let (lo, centre, hi) = (points[m], points[m + 1], points[m + 2]);
                let up = (hz - lo) / (centre - lo);
                let down = (hi - hz) / (hi - centre);
                mel[k * MELS + m] = up.min(down).max(0.0) as f32;
            }
        }
        Ok(LogMel {
            window: Tensor::from_vec(window, (1, 1, N_FFT), device)?,
            cos: Tensor::from_vec(cos, (N_FFT, bins), device)?,
            sin: Tensor::from_vec(sin, (N_FFT, bins), device)?,
            mel: Tensor::from_vec(mel, (bins, MELS), device)?,
        })
    }

    /// (B, N) waveforms → (B, 1, 64, T) log-mel maps, T = 1 + (N − 400) / 160.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n) = x.dims2()?;
        if n < N_FFT {
            return Err(Error::Other(format!(
                "a log-mel spectrogram needs at least {N_FFT} samples, the audio has {n}"
            )));
        }
        let frames = 1 + (n - N_FFT) / HOP;
        let index: Vec<u32> = (0..frames)
            .flat_map(|t| (0..N_FFT).map(move |i| (t * HOP + i) as u32))
            .collect();
        let index = Tensor::from_vec(index, frames * N_FFT, x.device())?;
        let x = x.detach().to_dtype(DType::F32)?;
        let framed = x
            .index_select(&index, 1)?
            .reshape((b, frames, N_FFT))?
            .broadcast_mul(&self.window)?
            .reshape((b * frames, N_FFT))?;
        let re = framed.matmul(&self.cos)?;
        let im = framed.matmul(&self.sin)?;
        let power = (re.sqr()? + im.sqr()?)?;
        let mel = (power.matmul(&self.mel)? + 1e-6)?.log()?;
        Ok(mel
            .reshape((b, frames, MELS))?
            .transpose(1, 2)?
            .contiguous()?
            .unsqueeze(1)?)
    }
}

#[derive(Debug, Clone)]
struct Block {
    weight: Tensor,
    bn: BatchNorm,
}

impl Block {
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.bn.forward_relu(&conv2d(x, &self.weight, 2, 1)?, train)
    }
}

/// Where and how the audio's sparse attention runs.
#[derive(Debug, Clone, Copy)]
pub struct AudioSparseSpec {
    /// The block (1–4) after which the attention runs.
    pub stage: usize,
    /// Width of the query (the text vector).
    pub query: usize,
    pub features: usize,
    pub p: f64,
}

pub struct MelCnn {
    log_mel: LogMel,
    blocks: Vec<Block>,
    attention: Option<(usize, SparseCrossModalAttention)>,
    out_features: usize,
    kept: Mutex<(u64, u64)>,
}

impl MelCnn {
    pub fn new(
        store: &mut ParamStore,
        widths: [usize; 4],
        sparse: Option<AudioSparseSpec>,
    ) -> Result<Self> {
        let mut blocks = Vec::new();
        let mut cin = 1;
        for (i, &cout) in widths.iter().enumerate() {
            // kaiming-normal (fan_out, ReLU), as torchvision initialises convolutions
            let std = (2.0 / (cout * 9) as f64).sqrt();
            let weight = store.normal(
                &format!("audio.blocks.{i}.conv.weight"),
                &[cout, cin, 3, 3],
                std,
            )?;
            let bn = BatchNorm::new(store, &format!("audio.blocks.{i}.bn"), cout)?;
            blocks.push(Block { weight, bn });
            cin = cout;
        }
        let attention = match sparse {
            None => None,
            Some(spec) => {
                if !(1..=widths.len()).contains(&spec.stage) {
                    return Err(Error::Other(format!(
                        "audio sparse attention after block {}: blocks are 1 to 4",
                        spec.stage
                    )));
                }
                let block = SparseCrossModalAttention::new(
                    store,
                    "audio_sparse",
                    widths[spec.stage - 1],
                    spec.query,
                    spec.features,
                    Some(spec.p),
                )?;
                Some((spec.stage, block))
            }
        };
        Ok(MelCnn {
            log_mel: LogMel::new(store.device())?,
            blocks,
            attention,
            out_features: widths[3],
            kept: Mutex::new((0, 0)),
        })
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// (B, N) waveforms (and (B, d) text queries with the attention) → (B, 128).
    pub fn forward(&self, x: &Tensor, query: Option<&Tensor>, train: bool) -> Result<Tensor> {
        let mut h = self.log_mel.forward(x)?;
        for (i, block) in self.blocks.iter().enumerate() {
            h = block.forward(&h, train)?;
            if let Some((stage, attention)) = &self.attention {
                if *stage == i + 1 {
                    let query = query.ok_or_else(|| {
                        Error::Other("the sparse audio attention needs a query vector".into())
                    })?;
                    let attended = attention.forward(&h, query)?;
                    if train {
                        let mut kept = self
                            .kept
                            .lock()
                            .map_err(|_| Error::Other("kept-positions counter poisoned".into()))?;
                        kept.0 += attended.kept as u64;
                        kept.1 += attended.positions as u64;
                    }
                    h = attended.maps;
                }
            }
        }
        Ok(h.flatten_from(2)?.mean(D::Minus1)?)
    }

    /// The fraction of positions kept in training forwards since the last call (1.0 without the attention).
    pub fn take_kept_fraction(&self) -> Option<f64> {
        if self.attention.is_none() {
            return Some(1.0);
        }
        let mut kept = self.kept.lock().ok()?;
        let (k, n) = std::mem::take(&mut *kept);
        (n > 0).then(|| k as f64 / n as f64)
    }
}
