//! Layers shared by the encoders, the fusion and the head: each holds its parameters and runs an op of
//! [`crate::ops`] (whose gradients flow; candle's fused LayerNorm/softmax kernels drop them).
//!
//! * [`Linear`] `y = x·Wᵀ + b` with PyTorch's default initialisation (U(±1/√in) for W and b);
//! * [`Dropout`] with masks from the run's seeded generator (candle's CPU generator cannot be seeded);
//! * [`LayerNorm`] over the last dimension, eps 1e-5, learnable affine;
//! * [`BatchNorm`] (2-d, with running statistics), [`attention::MultiheadAttention`], [`attention::CrossAttention`];
//! * [`lstm::Lstm`], PyTorch's one-layer `nn.LSTM` (the frames + voice seed system);
//! * [`params::ParamStore`], where every layer's parameters are created, named, loaded and saved.

use candle_core::Tensor;
use candle_nn::VarBuilder;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::Result;
use crate::ops;

pub mod attention;
pub mod batch_norm;
pub mod lstm;
pub mod params;

pub use batch_norm::BatchNorm;
pub use ops::dropout::dropout_shared;
pub use params::ParamStore;

/// Whether the model runs in training mode, and the generator its dropout masks come from.
pub struct Ctx {
    pub train: bool,
    rng: ChaCha8Rng,
}

impl Ctx {
    pub fn train(seed: u64) -> Self {
        Ctx {
            train: true,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    pub fn eval() -> Self {
        Ctx {
            train: false,
            rng: ChaCha8Rng::seed_from_u64(0),
        }
    }

    pub fn set_train(&mut self, train: bool) {
        self.train = train;
    }

    /// The dropout generator (saved and restored by resume checkpoints).
    pub fn rng_mut(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }
}

#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
    pub in_features: usize,
    pub out_features: usize,
}

impl Linear {
    /// A new layer named `<name>.weight` / `<name>.bias`, PyTorch-initialised.
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        in_features: usize,
        out_features: usize,
    ) -> Result<Self> {
        let bound = 1.0 / (in_features as f64).sqrt();
        let weight = store.uniform(
            &format!("{name}.weight"),
            &[out_features, in_features],
            bound,
        )?;
        let bias = store.uniform(&format!("{name}.bias"), &[out_features], bound)?;
        Ok(Linear {
            weight,
            bias,
            in_features,
            out_features,
        })
    }

    /// A layer from given tensors (MultiheadAttention's packed projections).
    pub fn from_tensors(weight: Tensor, bias: Tensor) -> Result<Self> {
        let (out_features, in_features) = weight.dims2()?;
        Ok(Linear {
            weight,
            bias,
            in_features,
            out_features,
        })
    }

    /// `relu?(x·Wᵀ + b) ⊙ dropout_mask?` — the head's `Linear → ReLU → Dropout` (or the logits layer without
    /// either) as one op ([`ops::linear`]). `dropout_mask` holds one value per output (0 or 1/(1−p)), as
    /// [`Dropout::mask`] draws them.
    pub fn forward_act(
        &self,
        x: &Tensor,
        relu: bool,
        dropout_mask: Option<ops::Mask>,
    ) -> Result<Tensor> {
        ops::linear(x, self.weight(), self.bias(), relu, dropout_mask)
    }

    /// `x·Wᵀ + b`, x of any rank (…, in) → (…, out).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.rank() <= 2 {
            return ops::linear(x, self.weight(), self.bias(), false, None);
        }
        // as one 2-D product: the op's CPU kernel takes rank 2 (a broadcasted batched matmul is slower too)
        let mut dims = x.dims().to_vec();
        let rows = x.elem_count() / self.in_features.max(1);
        let y = ops::linear(
            &x.reshape((rows, self.in_features))?,
            self.weight(),
            self.bias(),
            false,
            None,
        )?;
        dims.pop();
        dims.push(self.out_features);
        Ok(y.reshape(dims)?)
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> &Tensor {
        &self.bias
    }
}

/// The mean over the positions where `mask` (B, L) is non-zero of `x` (B, L, D) → (B, D): a sequence's
/// vector without its padding.
pub fn masked_mean(x: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask
        .to_dtype(candle_core::DType::F32)?
        .ne(0f32)?
        .to_dtype(x.dtype())?
        .unsqueeze(2)?;
    let sum = x.broadcast_mul(&m)?.sum(1)?;
    Ok(sum.broadcast_div(&m.sum(1)?)?)
}

#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    pub p: f32,
}

impl Dropout {
    pub fn new(p: f32) -> Self {
        Dropout { p }
    }

    /// Zeroes each element with probability p and scales the rest by 1/(1-p), in training only.
    pub fn forward(&self, x: &Tensor, ctx: &mut Ctx) -> Result<Tensor> {
        if !ctx.train {
            return Ok(x.clone());
        }
        ops::dropout(x, self.p as f64, &mut ctx.rng)
    }

    /// The mask [`Dropout::forward`] would multiply a tensor of `shape` on `device` by (same draws from the same
    /// generator), or None where it would be the identity (evaluation, p ≤ 0): for layers that apply it
    /// themselves.
    pub fn mask(
        &self,
        shape: &candle_core::Shape,
        device: &candle_core::Device,
        ctx: &mut Ctx,
    ) -> Result<Option<ops::Mask>> {
        if !ctx.train || self.p <= 0.0 {
            return Ok(None);
        }
        Ok(Some(ops::Mask::draw(
            shape,
            self.p as f64,
            device,
            &mut ctx.rng,
        )?))
    }
}

#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Parameters `<name>.weight` (ones) and `<name>.bias` (zeros), eps 1e-5 (PyTorch's default); `name` must
    /// contain `layer_norm` so that the optimiser leaves the weight undecayed.
    pub fn new(store: &mut ParamStore, name: &str, dim: usize) -> Result<Self> {
        debug_assert!(name.contains("layer_norm"));
        Ok(LayerNorm {
            weight: store.constant(&format!("{name}.weight"), &[dim], 1.0)?,
            bias: store.constant(&format!("{name}.bias"), &[dim], 0.0)?,
            eps: 1e-5,
        })
    }

    /// `weight` and `bias` of a checkpoint (HF models), with the checkpoint's own eps.
    pub fn load(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(LayerNorm {
            weight: vb.get_with_hints(dim, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", candle_nn::Init::Const(0.0))?,
            eps,
        })
    }

    /// The [`ops::layer_norm`] op.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{grads_through, max_diff};
    use candle_core::{Device, Module, Var};

    #[test]
    fn masked_mean_ignores_padding() {
        let x = Tensor::new(
            &[
                [[1f32, 2.], [3., 4.], [100., 100.]],
                [[5., 6.], [7., 8.], [9., 10.]],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let mask = Tensor::new(&[[1u32, 1, 0], [1, 1, 1]], &Device::Cpu).unwrap();
        let m = masked_mean(&x, &mask).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(m, [[2.0, 3.0], [7.0, 8.0]]);
    }

    /// A layer fed from data (no input gradient: the raw-waveform MLP's first layer) equals candle's own Linear
    /// in value and weight gradient, and builds no input gradient.
    #[test]
    fn data_fed_linear_matches_candle_linear() {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1., (5, 37), &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::randn(0f32, 1., 5, &dev).unwrap()).unwrap();
        let x = Tensor::randn(0f32, 1., (4, 37), &dev).unwrap();
        let r = Tensor::randn(0f32, 1., (4, 5), &dev).unwrap();
        let ours = Linear::from_tensors(w.as_tensor().clone(), b.as_tensor().clone()).unwrap();
        let reference = candle_nn::Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));

        let y = ours.forward(&x).unwrap();
        let y_ref = reference.forward(&x).unwrap();
        let diff = max_diff(&y, &y_ref);
        assert!(diff < 1e-5, "forward differs by {diff}");

        let grads = grads_through(&y, &r);
        let grads_ref = grads_through(&y_ref, &r);
        for var in [&w, &b] {
            let g = grads.get(var.as_tensor()).expect("gradient");
            let g_ref = grads_ref.get(var.as_tensor()).expect("reference gradient");
            let diff = max_diff(g, g_ref);
            assert!(diff < 1e-5, "gradient differs by {diff}");
        }
        // The input carried no gradient, and the data path built none for it.
        assert!(grads.get(&x).is_none());
    }
}
