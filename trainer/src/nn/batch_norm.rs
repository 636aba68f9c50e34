//! The BatchNorm2d layer: its parameters and running statistics, named as torchvision names them; the maths is
//! the [`crate::ops::batch_norm`] op.
//!
//! ```ignore
//! let bn = BatchNorm::new(&mut store, "visual.bn1", 64)?;
//! let y = bn.forward(&x, /* train */ true)?; // (B, 64, H, W) → (B, 64, H, W)
//! ```

use candle_core::{Tensor, Var};

use super::params::ParamStore;
use crate::error::Result;
use crate::ops::batch_norm::{batch_norm, BatchNormTensors};

#[derive(Debug, Clone)]
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
}

impl BatchNorm {
    /// Parameters `<name>.weight` (ones), `<name>.bias` (zeros) and buffers `<name>.running_mean` (zeros),
    /// `<name>.running_var` (ones): torchvision's names and initial values.
    pub fn new(store: &mut ParamStore, name: &str, channels: usize) -> Result<Self> {
        let running_mean = store.buffer(&format!("{name}.running_mean"), &[channels], 0.0)?;
        let running_var = store.buffer(&format!("{name}.running_var"), &[channels], 1.0)?;
        let weight = store.constant(&format!("{name}.weight"), &[channels], 1.0)?;
        let bias = store.constant(&format!("{name}.bias"), &[channels], 0.0)?;
        Self::from_tensors(weight, bias, running_mean, running_var)
    }

    /// A layer over existing tensors; the running statistics must be variables (they are updated in place, so
    /// that the store that owns them saves the new values).
    pub fn from_tensors(
        weight: Tensor,
        bias: Tensor,
        running_mean: Tensor,
        running_var: Tensor,
    ) -> Result<Self> {
        // `Var::from_tensor` of a variable shares it (no copy): updates reach the store's buffer.
        Ok(BatchNorm {
            running_mean: Var::from_tensor(&running_mean)?,
            running_var: Var::from_tensor(&running_var)?,
            weight,
            bias,
        })
    }

    fn tensors(&self) -> BatchNormTensors<'_> {
        BatchNormTensors {
            weight: &self.weight,
            bias: &self.bias,
            running_mean: &self.running_mean,
            running_var: &self.running_var,
        }
    }

    /// (N, C, H, W) → (N, C, H, W); `train` uses batch statistics and moves the running ones.
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        batch_norm(x, &self.tensors(), train, false)
    }

    /// `relu(forward(x))` in the same pass.
    pub fn forward_relu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        batch_norm(x, &self.tensors(), train, true)
    }
}
