//! GELU as one CPU op with its own backward: the exact erf form `x·Φ(x)` (wav2vec2) and the tanh approximation
//! (`gelu_new`, GPT-2).
//!
//! Why: candle's `gelu_erf` forward is one pass, but its backward is composed of ~8 full-size ops (square, negate,
//! divide, exp, two products, erf, additions) — on wav2vec2's feature maps (2 × 14 999 × 512 after the first
//! strided conv) that is hundreds of MB of temporaries per layer. Here the backward is one pass over (x, ∂L/∂y).
//! erf is a polynomial approximation ([`erf_given_exp`], < 5e-7 absolute), 2.3x faster than libm's `erff` that
//! candle uses: the forward agrees with `Tensor::gelu_erf` to < 1e-6. Generic: candle's `gelu_erf` / `gelu`
//! (one pass forward, a composed backward).
//!
//! CUDA (`kernels/gelu.cu`, the same formulas and constants in `kernels/gelu.cuh`): elementwise forward, and the
//! backward as a second op over (x, ∂L/∂y).

use std::f32::consts::FRAC_1_SQRT_2;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{with_cpu_f32, Kernel};
use crate::error::Result;

/// 1/√(2π)
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// erf(z) by Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7, plus f32 rounding: < 5e-7 in all), given
/// `exp(−z²)`: GELU′ needs that exponential anyway, and this costs one `exp` and a polynomial where libm's `erff`
/// (candle's) is a branchy scalar routine that took ~10% of a wav2vec2 step.
#[inline]
fn erf_given_exp(z: f32, exp_neg_z2: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_8,
        -1.453_152,
        1.061_405_4,
    ];
    let t = 1.0 / (1.0 + P * z.abs());
    let poly = ((((A[4] * t + A[3]) * t + A[2]) * t + A[1]) * t + A[0]) * t;
    (1.0 - poly * exp_neg_z2).copysign(z)
}

/// `x·Φ(x)`, `Φ(x) = (1 + erf(x/√2))/2`.
#[inline]
pub(crate) fn gelu(x: f32) -> f32 {
    let e = (-0.5 * x * x).exp();
    (erf_given_exp(x * FRAC_1_SQRT_2, e) + 1.0) * 0.5 * x
}

/// `d/dx x·Φ(x) = Φ(x) + x·φ(x)`, `φ(x) = exp(−x²/2)/√(2π)`.
#[inline]
pub(crate) fn gelu_grad(x: f32) -> f32 {
    let e = (-0.5 * x * x).exp();
    let cdf = (erf_given_exp(x * FRAC_1_SQRT_2, e) + 1.0) * 0.5;
    cdf + x * e * FRAC_1_SQRT_2PI
}

/// √(2/π) and the cubic coefficient of the tanh approximation (`gelu_new`).
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const TANH_CUBIC: f32 = 0.044_715;

/// `x/2·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`
#[inline]
fn gelu_tanh_value(x: f32) -> f32 {
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + TANH_CUBIC * x * x * x)).tanh())
}

/// Its derivative: `(1 + t)/2 + x/2·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²)`, t the tanh above.
#[inline]
fn gelu_tanh_grad(x: f32) -> f32 {
    let t = (SQRT_2_OVER_PI * (x + TANH_CUBIC * x * x * x)).tanh();
    0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * TANH_CUBIC * x * x)
}

/// Elements per parallel task: large enough that rayon's scheduling is noise.
const CHUNK: usize = 16 * 1024;

/// Which GELU.
#[derive(Debug, Clone, Copy)]
enum Form {
    Erf,
    Tanh,
}

impl Form {
    #[inline]
    fn value(self, x: f32) -> f32 {
        match self {
            Form::Erf => gelu(x),
            Form::Tanh => gelu_tanh_value(x),
        }
    }

    #[inline]
    fn grad(self, x: f32) -> f32 {
        match self {
            Form::Erf => gelu_grad(x),
            Form::Tanh => gelu_tanh_grad(x),
        }
    }
}

struct Gelu(Form);

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        match self.0 {
            Form::Erf => "gelu-erf",
            Form::Tanh => "gelu-tanh",
        }
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = super::contiguous_f32(storage, layout, self.name())?;
        let form = self.0;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(y, x)| {
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = form.value(x);
                }
            });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{alloc, elementwise, input, launch, storage as wrap, GELU};
        use candle_core::backend::BackendStorage;
        let dev = storage.device();
        let x = input(storage, layout, self.name())?;
        let n = x.len() as u64;
        let mut y = alloc::<f32>(dev, x.len())?;
        let kernel = match self.0 {
            Form::Erf => "gelu_erf_fwd",
            Form::Tanh => "gelu_tanh_fwd",
        };
        // gelu_*_fwd(const float* x, float* y, unsigned long long n)
        launch!(dev, GELU, kernel, elementwise(x.len()), [&x, &mut y, &n]);
        Ok((wrap(y, dev), layout.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        if arg.device().is_cuda() {
            return Ok(Some(
                arg.apply_op2_no_bwd(&grad_res.contiguous()?, &GeluGrad(self.0))?,
            ));
        }
        let form = self.0;
        let grad_x = with_cpu_f32(arg, "gelu backward", |x| {
            with_cpu_f32(grad_res, "gelu backward", |g| {
                let mut out = vec![0f32; x.len()];
                out.par_chunks_mut(CHUNK)
                    .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
                    .for_each(|(out, (x, g))| {
                        for ((o, &x), &g) in out.iter_mut().zip(x).zip(g) {
                            *o = g * form.grad(x);
                        }
                    });
                out
            })
        })??;
        Ok(Some(Tensor::from_vec(grad_x, arg.shape(), arg.device())?))
    }
}

/// The backward on a GPU: (x, ∂L/∂y) → ∂L/∂x.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct GeluGrad(Form);

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "gelu-grad"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("gelu-grad runs on CUDA only (the CPU backward is the op's bwd)")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
        grad: &candle_core::CudaStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{alloc, elementwise, input, launch, storage, GELU};
        use candle_core::backend::BackendStorage;
        if x_layout.shape() != grad_layout.shape() {
            candle_core::bail!(
                "gelu backward: gradient {:?} for x {:?}",
                grad_layout.shape(),
                x_layout.shape()
            );
        }
        let dev = x.device();
        let (xv, gv) = (
            input(x, x_layout, self.name())?,
            input(grad, grad_layout, self.name())?,
        );
        let n = xv.len() as u64;
        let mut dx = alloc::<f32>(dev, xv.len())?;
        let kernel = match self.0 {
            Form::Erf => "gelu_erf_bwd",
            Form::Tanh => "gelu_tanh_bwd",
        };
        // gelu_*_bwd(const float* x, const float* grad, float* dx, unsigned long long n)
        launch!(
            dev,
            GELU,
            kernel,
            elementwise(xv.len()),
            [&xv, &gv, &mut dx, &n]
        );
        Ok((storage(dx, dev), x_layout.shape().clone()))
    }
}

/// `x·Φ(x)` of any shape.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    match Kernel::select(x, true) {
        Kernel::Generic => Ok(x.gelu_erf()?),
        _ => fused(x, Form::Erf),
    }
}

/// The tanh approximation (`gelu_new`) of any shape.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    match Kernel::select(x, true) {
        Kernel::Generic => Ok(x.gelu()?),
        _ => fused(x, Form::Tanh),
    }
}

/// The kernel op (CPU or CUDA body by x's device); `tanh` picks the form.
pub(crate) fn kernel(x: &Tensor, tanh: bool) -> Result<Tensor> {
    fused(x, if tanh { Form::Tanh } else { Form::Erf })
}

fn fused(x: &Tensor, form: Form) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(Gelu(form))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{grads_through, max_abs, max_diff};
    use candle_core::{Device, Var};

    #[test]
    fn matches_candle_values_and_gradient() {
        let dev = Device::Cpu;
        // batch > 1, a size that is not a multiple of the chunk, values across the curve (−6 … 6)
        let x = Var::from_tensor(&(Tensor::randn(0f32, 2.0, (3, 7, 5003), &dev).unwrap())).unwrap();
        let ours = fused(x.as_tensor(), Form::Erf).unwrap();
        let reference = x.as_tensor().gelu_erf().unwrap();
        let diff = max_diff(&ours, &reference);
        // candle's forward uses libm's erff: the same values to f32 resolution
        assert!(diff < 1e-6, "{diff}");
        let upstream = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
        let g_ours = grads_through(&ours, &upstream);
        let g_ref = grads_through(&reference, &upstream);
        let (a, r) = (
            g_ours.get(x.as_tensor()).unwrap(),
            g_ref.get(x.as_tensor()).unwrap(),
        );
        // candle's backward rounds 1/√(2π) to 0.398942: agreement to that precision
        let diff = max_diff(a, r);
        assert!(diff < 1e-5, "{diff}");
    }

    #[test]
    fn tanh_form_matches_candle_values_and_gradient() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0f32, 2.0, (2, 3, 5003), &dev).unwrap())).unwrap();
        let ours = fused(x.as_tensor(), Form::Tanh).unwrap();
        let reference = x.as_tensor().gelu().unwrap();
        assert!(max_abs(&(&ours - &reference).unwrap()) < 1e-6);
        let upstream = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
        let (g_ours, g_ref) = (
            grads_through(&ours, &upstream),
            grads_through(&reference, &upstream),
        );
        let diff =
            (g_ours.get(x.as_tensor()).unwrap() - g_ref.get(x.as_tensor()).unwrap()).unwrap();
        assert!(max_abs(&diff) < 1e-5);
        for x in [-4.0f32, -1.3, -0.2, 0.0, 0.7, 2.5] {
            let h = 1e-3;
            let numeric = (gelu_tanh_value(x + h) - gelu_tanh_value(x - h)) / (2.0 * h);
            assert!((gelu_tanh_grad(x) - numeric).abs() < 1e-3, "x = {x}");
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        for x in [-4.0f64, -1.3, -0.2, 0.0, 0.7, 2.5] {
            let f = |x: f64| 0.5 * x * (1.0 + erf64(x / 2f64.sqrt()));
            let h = 1e-4;
            let numeric = (f(x + h) - f(x - h)) / (2.0 * h);
            assert!(
                (gelu_grad(x as f32) as f64 - numeric).abs() < 1e-5,
                "x = {x}"
            );
            assert!((gelu(x as f32) as f64 - f(x)).abs() < 1e-6, "x = {x}");
        }
    }

    #[test]
    fn erf_approximation_is_within_its_bound() {
        for i in -4000..=4000 {
            let z = i as f32 / 500.0; // −8 … 8
            let ours = erf_given_exp(z, (-z * z).exp()) as f64;
            let exact = erf64(z as f64);
            assert!(
                (ours - exact).abs() < 5e-7,
                "erf({z}) = {ours}, not {exact}"
            );
        }
    }

    fn erf64(x: f64) -> f64 {
        candle_core::cpu::erf::erf_f64(x)
    }
}
