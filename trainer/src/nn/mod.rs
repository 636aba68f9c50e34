//! Small building blocks shared by the encoders, the fusion and the head, written from candle primitives so that
//! gradients flow (candle's fused LayerNorm/softmax kernels drop them, see the dependency notes):
//!
//! * [`Linear`] `y = x·Wᵀ + b` with PyTorch's default initialisation (U(±1/√in) for W and b);
//! * [`Dropout`] with masks from the run's seeded generator (candle's CPU generator cannot be seeded);
//! * [`LayerNorm`] over the last dimension, eps 1e-5, learnable affine;
//! * [`l2_normalize`] `x / max(‖x‖₂, 1e-12)` per row (PyTorch `F.normalize`).

use std::sync::Mutex;

use candle_core::{Module, Tensor, D};
use candle_nn::VarBuilder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::Result;
use crate::params::ParamStore;

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
}

#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
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
            inner: candle_nn::Linear::new(weight, Some(bias)),
            in_features,
            out_features,
        })
    }

    /// A layer from given tensors (MultiheadAttention's packed projections).
    pub fn from_tensors(weight: Tensor, bias: Tensor) -> Result<Self> {
        let (out_features, in_features) = weight.dims2()?;
        Ok(Linear {
            inner: candle_nn::Linear::new(weight, Some(bias)),
            in_features,
            out_features,
        })
    }

    /// `relu?(x·Wᵀ + b) ⊙ dropout_mask?` — the head's `Linear → ReLU → Dropout` (or the logits layer without
    /// either) as one graph node with its own backward on the CPU for 2-D f32 inputs (see [`crate::fused`]);
    /// elsewhere the same composed from [`Linear::forward`], `relu` and a product with the mask. `dropout_mask`
    /// holds one value per output (0 or 1/(1−p)), as [`Dropout::mask`] draws them.
    pub fn forward_fused(
        &self,
        x: &Tensor,
        relu: bool,
        dropout_mask: Option<Vec<f32>>,
    ) -> Result<Tensor> {
        let weight = self.inner.weight();
        if let (true, true, 2, Some(bias)) = (
            crate::fused::applies(x),
            crate::fused::applies(weight),
            x.rank(),
            self.inner.bias(),
        ) {
            return crate::fused::linear(x, weight, bias, relu, dropout_mask);
        }
        let mut y = self.forward(x)?;
        if relu {
            y = y.relu()?;
        }
        if let Some(mask) = dropout_mask {
            let mask = Tensor::from_vec(mask, y.shape(), y.device())?.to_dtype(y.dtype())?;
            y = (y * mask)?;
        }
        Ok(y)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // A layer fed straight from data (the raw-waveform MLP's first layer: 150 000 inputs) needs no input
        // gradient, but candle's matmul backward always computes it: for (64 x 150 000) inputs that is a second
        // full-size matmul and a 38 MB accumulation per step. Apply the product as an op on the weight instead.
        if !x.track_op() && x.rank() == 2 && x.device().is_cpu() {
            let y = self.inner.weight().apply_op1(DataMatmul { x: x.clone() })?;
            return Ok(match self.inner.bias() {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            });
        }
        Ok(self.inner.forward(x)?)
    }
}

/// The values of a contiguous f32 CPU storage, as a custom op receives it; an error naming `op` otherwise.
pub fn contiguous_f32<'a>(
    storage: &'a candle_core::CpuStorage,
    layout: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (candle_core::CpuStorage::F32(values), Some((start, end))) => Ok(&values[start..end]),
        _ => candle_core::bail!("{op} expects a contiguous f32 tensor"),
    }
}

/// Runs `f` on a CPU f32 tensor's values (made contiguous first; a no-op when it already is), borrowed from its
/// storage; an error naming `op` for a tensor elsewhere or of another dtype.
pub fn with_cpu_f32<R>(
    t: &Tensor,
    op: &str,
    f: impl FnOnce(&[f32]) -> R,
) -> candle_core::Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(cpu) => Ok(f(contiguous_f32(cpu, layout, op)?)),
        _ => candle_core::bail!("{op} expects a CPU tensor"),
    }
}

/// [`contiguous_f32`] for ops that write in place.
pub fn contiguous_f32_mut<'a>(
    storage: &'a mut candle_core::CpuStorage,
    layout: &candle_core::Layout,
    op: &str,
) -> candle_core::Result<&'a mut [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (candle_core::CpuStorage::F32(values), Some((start, end))) => Ok(&mut values[start..end]),
        _ => candle_core::bail!("{op} expects a contiguous f32 tensor"),
    }
}

/// `y = x·Wᵀ` as an op on the weight `W` (out, in), with `x` (batch, in) held as data: its backward gives only
/// `∂L/∂W = gᵀ·x`. Only for inputs that carry no gradient (CPU).
struct DataMatmul {
    x: Tensor,
}

impl candle_core::CustomOp1 for DataMatmul {
    fn name(&self) -> &'static str {
        "data-matmul"
    }

    fn cpu_fwd(
        &self,
        weight: &candle_core::CpuStorage,
        weight_layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use candle_core::backend::BackendStorage;
        let (out_features, in_features) = weight_layout.shape().dims2()?;
        let (batch, x_in) = self.x.dims2()?;
        if x_in != in_features {
            candle_core::bail!("data-matmul: input has {x_in} features, the weight {in_features}")
        }
        let (storage, x_layout) = self.x.storage_and_layout();
        let candle_core::Storage::Cpu(x) = &*storage else {
            candle_core::bail!("data-matmul: the input is not on the CPU")
        };
        let weight_t = weight_layout.transpose(0, 1)?;
        let y = x.matmul(
            weight,
            (1, batch, out_features, in_features),
            x_layout,
            &weight_t,
        )?;
        Ok((y, candle_core::Shape::from((batch, out_features))))
    }

    fn bwd(
        &self,
        _weight: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.t()?.matmul(&self.x)?))
    }
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
        dropout(x, self.p as f64, &mut ctx.rng)
    }

    /// The mask [`Dropout::forward`] would multiply `len` values by (same draws from the same generator), or None
    /// where it would be the identity (evaluation, p ≤ 0): for layers that apply it themselves.
    pub fn mask(&self, len: usize, ctx: &mut Ctx) -> Option<Vec<f32>> {
        (ctx.train && self.p > 0.0).then(|| dropout_mask(len, self.p as f64, &mut ctx.rng))
    }
}

/// `len` inverted-dropout factors: 0 with probability `p`, 1/(1−p) otherwise. Fused ops that apply dropout
/// themselves draw their masks here, so that they and the composed ops draw the same masks.
pub(crate) fn dropout_mask(len: usize, p: f64, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let keep = 1.0 - p;
    let scale = (1.0 / keep) as f32;
    (0..len)
        .map(|_| if rng.gen::<f64>() < keep { scale } else { 0.0 })
        .collect()
}

/// Inverted dropout: zeroes each element with probability `p` and scales the rest by 1/(1-p), with the mask drawn
/// from `rng` (candle's CPU generator cannot be seeded, and runs must be reproducible). Identity for p ≤ 0.
pub fn dropout(x: &Tensor, p: f64, rng: &mut ChaCha8Rng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let mask = dropout_mask(x.elem_count(), p, rng);
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    Ok((x * mask)?)
}

/// [`dropout`] in training mode only, with a generator shared behind a lock (the backbones' forward takes `&self`).
pub fn dropout_shared(x: &Tensor, p: f64, train: bool, rng: &Mutex<ChaCha8Rng>) -> Result<Tensor> {
    if !train || p <= 0.0 {
        return Ok(x.clone());
    }
    let mut rng = rng
        .lock()
        .map_err(|_| crate::error::Error::Other("dropout generator poisoned".into()))?;
    dropout(x, p, &mut rng)
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

    /// The fused op of [`crate::layer_norm`] on the CPU (one graph node with its own backward),
    /// `ops::layer_norm_slow` elsewhere.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::layer_norm::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}

/// `x / max(‖x‖₂, 1e-12)` along the last dimension.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    // sqrt(max(s, 1e-24)) == max(sqrt(s), 1e-12), but keeps sqrt's backward finite for an all-zero row
    // (candle's sqrt backward divides by the output: 0/0 would poison every gradient with NaN).
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.maximum(1e-24)?.sqrt()?;
    Ok(x.broadcast_div(&norm)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{grads_through, max_diff};
    use candle_core::{Device, Var};

    /// The data-fed path (weight op, no input gradient) equals candle's own Linear in value and weight gradient.
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
