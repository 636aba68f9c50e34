//! Inverted dropout: each element zeroed with probability p, the rest scaled by 1/(1−p).
//!
//! Where the masks come from decides reproducibility and traffic: for a CPU tensor they are drawn from the run's
//! seeded generator (candle's CPU generator cannot be seeded, and runs must be reproducible), one `f64` per
//! element in order; on a GPU they are drawn on the device by its own generator (seeded once per run), so that a
//! step copies no mask from the host. The ops that apply dropout themselves (the head's Linear, softmax +
//! dropout) take a [`Mask`] drawn here, so that they and the composed path draw the same masks in the same order.

use std::sync::Mutex;

use candle_core::{DType, Device, Shape, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// Inverted-dropout factors (0 or 1/(1−p)), one per element of the tensor they apply to.
pub enum Mask {
    /// Drawn on the host (CPU tensors): what the CPU kernels read.
    Host(Vec<f32>),
    /// Drawn on the tensor's device, f32.
    Device(Tensor),
}

impl Mask {
    /// A mask for a tensor of `shape` on `device`, drawn from `rng` on the CPU and on the device elsewhere.
    pub fn draw(shape: &Shape, p: f64, device: &Device, rng: &mut ChaCha8Rng) -> Result<Mask> {
        if device.is_cpu() {
            return Ok(Mask::Host(host_mask(shape.elem_count(), p, rng)));
        }
        let keep = Tensor::rand(0f32, 1f32, shape, device)?
            .ge(p as f32)?
            .to_dtype(DType::F32)?;
        Ok(Mask::Device((keep * (1.0 / (1.0 - p)))?))
    }

    /// The factors as a tensor of `shape` and `dtype` on `device`.
    pub fn into_tensor(self, shape: &Shape, device: &Device, dtype: DType) -> Result<Tensor> {
        let t = match self {
            Mask::Host(values) => Tensor::from_vec(values, shape, device)?,
            Mask::Device(t) => t.reshape(shape)?,
        };
        Ok(t.to_dtype(dtype)?)
    }

    /// The factors on the host (for the CPU kernels; a device mask is copied back).
    pub fn into_host(self) -> Result<Vec<f32>> {
        match self {
            Mask::Host(values) => Ok(values),
            Mask::Device(t) => Ok(t.flatten_all()?.to_vec1::<f32>()?),
        }
    }

    /// How many factors.
    pub fn len(&self) -> usize {
        match self {
            Mask::Host(values) => values.len(),
            Mask::Device(t) => t.elem_count(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `len` inverted-dropout factors: 0 with probability `p`, 1/(1−p) otherwise (one `f64` draw each, in order).
fn host_mask(len: usize, p: f64, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let keep = 1.0 - p;
    let scale = (1.0 / keep) as f32;
    (0..len)
        .map(|_| if rng.gen::<f64>() < keep { scale } else { 0.0 })
        .collect()
}

/// `x ⊙ mask` with a mask from [`Mask::draw`]; the identity for p ≤ 0. Any shape and device.
pub fn dropout(x: &Tensor, p: f64, rng: &mut ChaCha8Rng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let mask =
        Mask::draw(x.shape(), p, x.device(), rng)?.into_tensor(x.shape(), x.device(), x.dtype())?;
    Ok((x * mask)?)
}

/// [`dropout`] in training mode only, with a generator shared behind a lock (the backbones' forward takes `&self`).
pub fn dropout_shared(x: &Tensor, p: f64, train: bool, rng: &Mutex<ChaCha8Rng>) -> Result<Tensor> {
    if !train || p <= 0.0 {
        return Ok(x.clone());
    }
    dropout(x, p, &mut *lock(rng)?)
}

/// The shared generator, or an error if a thread panicked holding it.
pub(crate) fn lock(rng: &Mutex<ChaCha8Rng>) -> Result<std::sync::MutexGuard<'_, ChaCha8Rng>> {
    rng.lock()
        .map_err(|_| Error::Other("dropout generator poisoned".into()))
}
