//! A one-layer unidirectional LSTM, PyTorch's `nn.LSTM(input, hidden, batch_first=True)`:
//!
//! ```text
//! [i f g o] = x_t·W_ihᵀ + b_ih + h_{t−1}·W_hhᵀ + b_hh      (PyTorch's gate order: input, forget, cell, output)
//! c_t = σ(f) ⊙ c_{t−1} + σ(i) ⊙ tanh(g)
//! h_t = σ(o) ⊙ tanh(c_t)                                   h_0 = c_0 = 0
//! ```
//!
//! Shapes: x (B, T, I) → every h_t (B, T, H) and the last one (B, H). Parameters under PyTorch's names
//! (`weight_ih_l0` (4H, I), `weight_hh_l0` (4H, H), `bias_ih_l0`, `bias_hh_l0` (4H)), initialised as PyTorch does,
//! U(±1/√H), so a `state_dict` of `nn.LSTM` loads by name.
//!
//! Built from [`crate::ops::linear`] (its CPU kernel) and candle's elementwise ops, whose backward is right: the
//! input projection of all T steps is one product, each step one (B, H)·(H, 4H) product and a few (B, 4H)
//! elementwise nodes. No fused cell kernel: at the sizes the seed system runs (B ≤ 64, T = 5, H = 256) a step is
//! microseconds next to the per-frame ResNet that feeds it.

use candle_core::{Tensor, D};

use crate::error::{Error, Result};
use crate::nn::params::ParamStore;
use crate::ops;

#[derive(Debug, Clone)]
pub struct Lstm {
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor,
    bias_hh: Tensor,
    hidden: usize,
}

/// What [`Lstm::forward`] returns.
#[derive(Debug, Clone)]
pub struct LstmOutput {
    /// Every step's hidden state (B, T, H).
    pub states: Tensor,
    /// The last step's hidden state (B, H).
    pub last: Tensor,
}

impl Lstm {
    /// A new layer named `<name>.weight_ih_l0` … `<name>.bias_hh_l0`, PyTorch-initialised.
    pub fn new(store: &mut ParamStore, name: &str, input: usize, hidden: usize) -> Result<Self> {
        let bound = 1.0 / (hidden.max(1) as f64).sqrt();
        Ok(Lstm {
            weight_ih: store.uniform(
                &format!("{name}.weight_ih_l0"),
                &[4 * hidden, input],
                bound,
            )?,
            weight_hh: store.uniform(
                &format!("{name}.weight_hh_l0"),
                &[4 * hidden, hidden],
                bound,
            )?,
            bias_ih: store.uniform(&format!("{name}.bias_ih_l0"), &[4 * hidden], bound)?,
            bias_hh: store.uniform(&format!("{name}.bias_hh_l0"), &[4 * hidden], bound)?,
            hidden,
        })
    }

    pub fn hidden(&self) -> usize {
        self.hidden
    }

    /// x (B, T, I) → every hidden state (B, T, H) and the last (B, H).
    pub fn forward(&self, x: &Tensor) -> Result<LstmOutput> {
        let (b, t, i) = x.dims3()?;
        if t == 0 {
            return Err(Error::Other("LSTM over an empty sequence".into()));
        }
        let h4 = 4 * self.hidden;
        // the input's share of every step's gates in one product
        let projected = ops::linear(
            &x.reshape((b * t, i))?,
            &self.weight_ih,
            &self.bias_ih,
            false,
            None,
        )?
        .reshape((b, t, h4))?;
        let mut h = Tensor::zeros((b, self.hidden), x.dtype(), x.device())?;
        let mut c = h.clone();
        let mut states = Vec::with_capacity(t);
        for step in 0..t {
            let recurrent = ops::linear(&h, &self.weight_hh, &self.bias_hh, false, None)?;
            let gates = (projected.narrow(1, step, 1)?.squeeze(1)? + recurrent)?;
            let gate = |k: usize| gates.narrow(D::Minus1, k * self.hidden, self.hidden);
            let input = candle_nn::ops::sigmoid(&gate(0)?)?;
            let forget = candle_nn::ops::sigmoid(&gate(1)?)?;
            let cell = gate(2)?.tanh()?;
            let output = candle_nn::ops::sigmoid(&gate(3)?)?;
            c = ((forget * &c)? + (input * cell)?)?;
            h = (output * c.tanh()?)?;
            states.push(h.clone());
        }
        Ok(LstmOutput {
            states: Tensor::stack(&states, 1)?,
            last: h,
        })
    }
}
