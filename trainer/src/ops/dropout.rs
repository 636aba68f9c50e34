//! Inverted dropout: each element zeroed with probability p, the rest scaled by 1/(1−p), masks drawn from the
//! run's seeded generator (candle's CPU generator cannot be seeded, and runs must be reproducible). The ops that
//! apply dropout themselves (the head's Linear, softmax + dropout) draw their masks here, so that they and the
//! composed path draw the same masks in the same order.

use std::sync::Mutex;

use candle_core::Tensor;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// `len` inverted-dropout factors: 0 with probability `p`, 1/(1−p) otherwise (one `f64` draw each, in order).
pub fn dropout_mask(len: usize, p: f64, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let keep = 1.0 - p;
    let scale = (1.0 / keep) as f32;
    (0..len)
        .map(|_| if rng.gen::<f64>() < keep { scale } else { 0.0 })
        .collect()
}

/// `x ⊙ mask` with a mask from [`dropout_mask`]; the identity for p ≤ 0. Any shape and device.
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
    dropout(x, p, &mut *lock(rng)?)
}

/// The shared generator, or an error if a thread panicked holding it.
pub(crate) fn lock(rng: &Mutex<ChaCha8Rng>) -> Result<std::sync::MutexGuard<'_, ChaCha8Rng>> {
    rng.lock()
        .map_err(|_| Error::Other("dropout generator poisoned".into()))
}
