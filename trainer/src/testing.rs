//! Helpers of the unit tests that compare a custom op with the composed candle ops it replaces.

use candle_core::backprop::GradStore;
use candle_core::Tensor;

/// The largest absolute value of `t`.
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .and_then(|a| a.max_all())
        .and_then(|m| m.to_scalar::<f32>())
        .expect("max_abs of an f32 tensor")
}

/// The largest absolute difference of two tensors of the same shape.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    max_abs(&(a - b).expect("difference of two tensors"))
}

/// The gradients of `sum(y · upstream)`: back-propagates `upstream` as the gradient of `y`.
pub fn grads_through(y: &Tensor, upstream: &Tensor) -> GradStore {
    (y * upstream)
        .and_then(|p| p.sum_all())
        .and_then(|s| s.backward())
        .expect("backward of sum(y · upstream)")
}

/// Seeded values in [-scale, scale] (candle's CPU generator cannot be seeded).
pub fn uniform(shape: &[usize], scale: f32, seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.gen_range(-scale..scale)).collect();
    Tensor::from_vec(values, shape, &candle_core::Device::Cpu).expect("a tensor of seeded values")
}

/// Σ f(x)·r for a fixed random r: every output element gets a distinct upstream gradient.
pub fn project(y: &Tensor, seed: u64) -> Tensor {
    let r = uniform(y.dims(), 1.0, seed);
    (y * r)
        .and_then(|p| p.sum_all())
        .expect("Σ y·r of an f32 tensor")
}
