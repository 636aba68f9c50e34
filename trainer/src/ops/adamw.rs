//! One AdamW update of a parameter in place (PyTorch's element-wise formula, decoupled weight decay), and the
//! squared gradient norms the global clipping needs.
//!
//! `θ ← θ·decay − step_size · m̂ / (√v / √(1 − β₂ᵗ) + ε)` with `g ← g·clip`, `m ← β₁m + (1 − β₁)g`,
//! `v ← β₂v + (1 − β₂)g²` and `step_size = lr/(1 − β₁ᵗ)`.
//!
//! CPU kernel: the moments live on the host and the update is one pass over (θ, g, m, v) in place — no copy of
//! the parameter, the gradient or the moments per step (for the waveform encoder's 22.5 M-weight first layer each
//! copy is 90 MB), split over the cores. Generic: the moments are tensors on the parameter's device and the
//! update is composed of tensor ops; the clipping coefficient stays a device scalar, so that a step reads nothing
//! back from the device (the norm is read only when someone asks for it: [`GradNorm::value`]).

use std::cell::RefCell;

use candle_core::{DType, Tensor, Var};
use rayon::prelude::*;

use super::{contiguous_f32_mut, sum_squares, with_cpu_f32, Kernel};
use crate::error::{Error, Result};

/// Elements per rayon task in the host update (large enough that scheduling costs nothing).
const CHUNK: usize = 1 << 14;

/// First and second moments of one parameter.
pub enum Moments {
    Host { m: Vec<f32>, v: Vec<f32> },
    Device { m: Tensor, v: Tensor },
}

impl Moments {
    /// Zero moments where the parameter's update will run.
    pub fn zeros(param: &Tensor) -> Result<Self> {
        Ok(match Kernel::select(param, false) {
            Kernel::Cpu => {
                let n = param.elem_count();
                Moments::Host {
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                }
            }
            _ => Moments::Device {
                m: param.zeros_like()?,
                v: param.zeros_like()?,
            },
        })
    }
}

impl Moments {
    /// (m, v) as tensors shaped like `param` (host moments on the CPU).
    pub fn to_tensors(&self, param: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok(match self {
            Moments::Host { m, v } => (
                Tensor::from_vec(m.clone(), param.shape(), param.device())?,
                Tensor::from_vec(v.clone(), param.shape(), param.device())?,
            ),
            Moments::Device { m, v } => (m.clone(), v.clone()),
        })
    }

    /// Replaces the moments by saved ones (of `param`'s shape).
    pub fn set_from(&mut self, m: &Tensor, v: &Tensor, param: &Tensor) -> Result<()> {
        if m.dims() != param.dims() || v.dims() != param.dims() {
            return Err(Error::Other(format!(
                "saved optimiser moments {:?} / {:?} for a parameter {:?}",
                m.dims(),
                v.dims(),
                param.dims()
            )));
        }
        match self {
            Moments::Host { m: hm, v: hv } => {
                *hm = m.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
                *hv = v.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            }
            Moments::Device { m: dm, v: dv } => {
                *dm = m.to_device(param.device())?.to_dtype(param.dtype())?;
                *dv = v.to_device(param.device())?.to_dtype(param.dtype())?;
            }
        }
        Ok(())
    }
}

/// The global gradient norm, accumulated gradient by gradient: host sums for the host moments, a device scalar
/// for the others.
#[derive(Default)]
pub struct GradNorm {
    host_squares: f64,
    device_squares: Option<Tensor>,
}

impl GradNorm {
    /// Adds Σ g² of the gradient of a parameter whose moments are `moments`.
    pub fn add(&mut self, g: &Tensor, moments: &Moments) -> Result<()> {
        match moments {
            Moments::Host { .. } => {
                self.host_squares += with_cpu_f32(g, "adamw gradient norm", |g| {
                    // Small tensors inline: handing a job to the rayon pool costs more than the sum.
                    if g.len() <= CHUNK {
                        sum_squares(g)
                    } else {
                        g.par_chunks(CHUNK).map(sum_squares).sum::<f64>()
                    }
                })?;
            }
            Moments::Device { .. } => {
                let s = g.detach().to_dtype(DType::F32)?.sqr()?.sum_all()?;
                self.device_squares = Some(match self.device_squares.take() {
                    Some(total) => (total + s)?,
                    None => s,
                });
            }
        }
        Ok(())
    }

    /// The norm (reads the device scalar back: for logs and tests, not for the step).
    pub fn value(&self) -> Result<f64> {
        let device = match &self.device_squares {
            Some(t) => t.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            None => 0.0,
        };
        Ok((self.host_squares + device).sqrt())
    }

    /// torch.nn.utils.clip_grad_norm_'s coefficient `min(1, max_norm / (norm + 1e-6))`: a number when every
    /// gradient is on the host, a device scalar otherwise.
    pub fn clip(&self, max_norm: f64) -> Result<Clip> {
        Ok(match &self.device_squares {
            None => Clip::Host((max_norm / (self.host_squares.sqrt() + 1e-6)).min(1.0) as f32),
            Some(t) => {
                let norm = (t.affine(1.0, self.host_squares)?.sqrt()? + 1e-6)?;
                let coefficient = norm.recip()?.affine(max_norm, 0.0)?;
                Clip::Device(coefficient.minimum(1.0)?)
            }
        })
    }
}

/// The clipping coefficient of a step.
pub enum Clip {
    Host(f32),
    Device(Tensor),
}

/// The step's scalars, the same for every parameter but the decay.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// `1 − lr·weight_decay` for decayed parameters, 1 otherwise.
    pub decay: f64,
    /// `lr / (1 − β₁ᵗ)`.
    pub step_size: f64,
    /// `√(1 − β₂ᵗ)`.
    pub bias2_sqrt: f64,
}

/// Updates `var` in place from its gradient `g`.
pub fn adamw_update(
    var: &Var,
    g: &Tensor,
    moments: &mut Moments,
    clip: &Clip,
    s: &Step,
) -> Result<()> {
    match moments {
        Moments::Host { m, v } => {
            let clip = match clip {
                Clip::Host(c) => *c,
                // a host parameter in a run with device gradients: one read of the coefficient
                Clip::Device(t) => t.to_dtype(DType::F32)?.to_scalar::<f32>()?,
            };
            let update = HostUpdate {
                m: RefCell::new(m),
                v: RefCell::new(v),
                beta1: s.beta1 as f32,
                beta2: s.beta2 as f32,
                clip,
                decay: s.decay as f32,
                step_size: s.step_size as f32,
                bias2_sqrt: s.bias2_sqrt as f32,
                eps: s.eps as f32,
            };
            with_cpu_f32(g, "adamw gradient", |g| {
                var.as_tensor()
                    .inplace_op1(&HostUpdateWith { update: &update, g })
            })??;
        }
        Moments::Device { m, v } => {
            // detached: the optimiser's state must not keep autograd graphs alive from step to step
            let g = g.detach();
            let g = match clip {
                Clip::Host(c) if *c < 1.0 => (g * *c as f64)?,
                Clip::Host(_) => g,
                Clip::Device(c) => g.broadcast_mul(&c.to_dtype(g.dtype())?)?,
            };
            let theta = (var.as_detached_tensor() * s.decay)?;
            let new_m = ((&*m * s.beta1)? + (&g * (1.0 - s.beta1))?)?;
            let new_v = ((&*v * s.beta2)? + (g.sqr()? * (1.0 - s.beta2))?)?;
            let denom = ((new_v.sqrt()? / s.bias2_sqrt)? + s.eps)?;
            let update = ((&new_m / denom)? * s.step_size)?;
            var.set(&(theta - update)?)
                .map_err(|e| Error::Other(format!("adamw: {e}")))?;
            *m = new_m;
            *v = new_v;
        }
    }
    Ok(())
}

/// The AdamW update of one CPU parameter, applied in place to its storage. The arithmetic is the element-wise
/// formula of torch's AdamW, unchanged.
struct HostUpdate<'a> {
    m: RefCell<&'a mut Vec<f32>>,
    v: RefCell<&'a mut Vec<f32>>,
    beta1: f32,
    beta2: f32,
    clip: f32,
    decay: f32,
    step_size: f32,
    bias2_sqrt: f32,
    eps: f32,
}

struct HostUpdateWith<'a, 'b> {
    update: &'a HostUpdate<'b>,
    g: &'a [f32],
}

impl candle_core::InplaceOp1 for HostUpdateWith<'_, '_> {
    fn name(&self) -> &'static str {
        "adamw-host-update"
    }

    fn cpu_fwd(
        &self,
        storage: &mut candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        let u = self.update;
        let theta = contiguous_f32_mut(storage, layout, "adamw")?;
        let (mut m, mut v) = (u.m.borrow_mut(), u.v.borrow_mut());
        if theta.len() != self.g.len() || m.len() != theta.len() {
            candle_core::bail!(
                "adamw: {} values, {} gradients, {} moments",
                theta.len(),
                self.g.len(),
                m.len()
            )
        }
        // The scalars, copied out: the closure below runs on several threads and must not see the RefCells.
        let (b1, b2, clip, decay, step_size, bias2_sqrt, eps) = (
            u.beta1,
            u.beta2,
            u.clip,
            u.decay,
            u.step_size,
            u.bias2_sqrt,
            u.eps,
        );
        // Zipped iterators (no indexing, hence no bounds checks) so that the loop vectorises; `clip` is 1 when
        // no clipping applies, and g·1 == g exactly.
        let clip = clip.min(1.0);
        let update = |theta: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]| {
            for (((theta, g), m), v) in theta.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut())
            {
                let g = g * clip;
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                let denom = v.sqrt() / bias2_sqrt + eps;
                *theta = *theta * decay - step_size * (*m / denom);
            }
        };
        if theta.len() <= CHUNK {
            // Inline: a hand-off to the rayon pool costs more than the update of a small tensor.
            update(theta, self.g, &mut m[..], &mut v[..]);
        } else {
            theta
                .par_chunks_mut(CHUNK)
                .zip(self.g.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
                .for_each(|((theta, g), (m, v))| update(theta, g, m, v));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_diff, uniform};

    /// Three steps with both bodies from the same start: the host kernel and the composed update give the same
    /// parameters, with clipping below 1 (a large gradient) and at 1, decayed and not.
    #[test]
    fn host_kernel_matches_the_composed_update() {
        let start = uniform(&[3, 40_000], 1.0, 31);
        let host_var = Var::from_tensor(&start.copy().unwrap()).unwrap();
        let device_var = Var::from_tensor(&start.copy().unwrap()).unwrap();
        let mut host = Moments::zeros(host_var.as_tensor()).unwrap();
        assert!(matches!(host, Moments::Host { .. }));
        let mut device = Moments::Device {
            m: start.zeros_like().unwrap(),
            v: start.zeros_like().unwrap(),
        };
        for (t, scale, decay) in [(1, 5.0, 0.99), (2, 1e-3, 1.0), (3, 2.0, 0.9)] {
            let g = (uniform(&[3, 40_000], 1.0, 40 + t as u64) * scale).unwrap();
            let (mut host_norm, mut device_norm) = (GradNorm::default(), GradNorm::default());
            host_norm.add(&g, &host).unwrap();
            device_norm.add(&g, &device).unwrap();
            let (a, b) = (host_norm.value().unwrap(), device_norm.value().unwrap());
            assert!((a - b).abs() <= 1e-5 * a, "step {t}: norms {a} vs {b}");
            let step = Step {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                decay,
                step_size: 1e-3 / (1.0 - 0.9f64.powi(t)),
                bias2_sqrt: (1.0 - 0.999f64.powi(t)).sqrt(),
            };
            let (host_clip, device_clip) =
                (host_norm.clip(1.0).unwrap(), device_norm.clip(1.0).unwrap());
            let Clip::Host(c) = host_clip else {
                panic!("host gradients give a host coefficient")
            };
            let Clip::Device(d) = &device_clip else {
                panic!("device gradients give a device coefficient")
            };
            let d = d.to_scalar::<f32>().unwrap();
            assert!((c - d).abs() < 1e-6, "step {t}: clip {c} vs {d}");
            assert_eq!(
                c < 1.0,
                scale > 1.0,
                "step {t}: clipping applies to the large gradients only"
            );
            adamw_update(&host_var, &g, &mut host, &host_clip, &step).unwrap();
            adamw_update(&device_var, &g, &mut device, &device_clip, &step).unwrap();
            let diff = max_diff(host_var.as_tensor(), device_var.as_tensor());
            assert!(diff < 1e-6, "step {t}: parameters differ by {diff}");
        }
        assert!(
            max_diff(host_var.as_tensor(), &start) > 1e-3,
            "the parameters moved"
        );
    }
}
