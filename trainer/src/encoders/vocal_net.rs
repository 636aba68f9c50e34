//! The "vocal net" of the frames + voice + LSTM seed system (`modules_audio_encoder: vocal_net`): a 1-D CNN over
//! the raw waveform, run on each of T equal windows of it — one per frame of the mosaic — so that the audio gives
//! one vector per time step, as the frames do. A = `audio_out_features`:
//!
//! ```text
//! (B, N) → T windows of ⌊N/T⌋ samples (the tail dropped) → (B·T, ⌊N/T⌋, 1)
//!   → Conv1d(1 → A/4, k 80, stride 16) → ReLU        80 taps = 5 ms at 16 kHz, hop 1 ms (M5's first layer, Dai 2017)
//!   → Conv1d(A/4 → A/2, k 3, stride 2, pad 1) → ReLU
//!   → Conv1d(A/2 → A, k 3, stride 2, pad 1) → ReLU
//!   → mean over time → (B, T, A)
//! ```
//!
//! The report gives no layout for its vocal net; this one is the smallest that sees pitch (the first layer's
//! 80-tap filters) and a window's envelope. Widths are at least 1. The convolutions are [`crate::ops::conv1d`]
//! (channels-last, its CPU kernel) plus a bias; parameters are PyTorch's `nn.Conv1d`'s (`conv1.weight` (C_out,
//! C_in, k), `conv1.bias`) under the prefix, initialised as PyTorch does (U(±1/√(C_in·k)) for both).

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::nn::params::ParamStore;
use crate::ops;

/// (kernel, stride, padding) of the three convolutions.
const LAYERS: [(usize, usize, usize); 3] = [(80, 16, 0), (3, 2, 1), (3, 2, 1)];

/// A convolution with a bias, channels-last.
#[derive(Debug, Clone)]
struct Conv {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
}

impl Conv {
    fn new(
        store: &mut ParamStore,
        name: &str,
        c_in: usize,
        c_out: usize,
        (kernel, stride, padding): (usize, usize, usize),
    ) -> Result<Self> {
        let bound = 1.0 / ((c_in * kernel) as f64).sqrt();
        Ok(Conv {
            weight: store.uniform(&format!("{name}.weight"), &[c_out, c_in, kernel], bound)?,
            bias: store.uniform(&format!("{name}.bias"), &[c_out], bound)?,
            stride,
            padding,
        })
    }

    /// (N, L, C_in) → (N, L', C_out), ReLU'd.
    fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        let y = ops::conv1d(x, &self.weight, self.stride, self.padding, 1, false)?;
        Ok(y.broadcast_add(&self.bias)?.relu()?)
    }
}

#[derive(Debug, Clone)]
pub struct VocalNet {
    convs: [Conv; 3],
    windows: usize,
    out_features: usize,
}

impl VocalNet {
    /// The net for `samples`-long waveforms cut into `windows` windows, `out_features` wide, under `name.`.
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        samples: usize,
        windows: usize,
        out_features: usize,
    ) -> Result<Self> {
        let a = out_features.max(1);
        let widths = [1, (a / 4).max(1), (a / 2).max(1), a];
        let window = samples / windows.max(1);
        if windows == 0 || window < LAYERS[0].0 {
            return Err(Error::Other(format!(
                "the vocal net cuts {samples} samples into {windows} windows of {window}: a window needs at least {} \
                 (raise `audio_in_features`)",
                LAYERS[0].0
            )));
        }
        let mut convs = Vec::with_capacity(3);
        for (l, layer) in LAYERS.iter().enumerate() {
            convs.push(Conv::new(
                store,
                &format!("{name}.conv{}", l + 1),
                widths[l],
                widths[l + 1],
                *layer,
            )?);
        }
        let convs: [Conv; 3] = convs
            .try_into()
            .map_err(|_| Error::Other("vocal net: three convolutions".into()))?;
        Ok(VocalNet {
            convs,
            windows,
            out_features: a,
        })
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// (B, N) → (B, T, A): one vector per window.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n) = x.dims2()?;
        let window = n / self.windows;
        let mut h =
            x.narrow(1, 0, window * self.windows)?
                .reshape((b * self.windows, window, 1))?;
        for conv in &self.convs {
            h = conv.forward_relu(&h)?;
        }
        Ok(h.mean(1)?.reshape((b, self.windows, self.out_features))?)
    }
}
