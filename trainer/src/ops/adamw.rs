//! One AdamW update of a parameter in place (PyTorch's element-wise formula, decoupled weight decay), and the
//! squared gradient norms the global clipping needs.
//!
//! `θ ← θ·decay − step_size · m̂ / (√v / √(1 − β₂ᵗ) + ε)` with `g ← g·clip`, `m ← β₁m + (1 − β₁)g`,
//! `v ← β₂v + (1 − β₂)g²` and `step_size = lr/(1 − β₁ᵗ)`.
//!
//! CPU kernel: the moments live on the host and the update is one pass over (θ, g, m, v) in place — no copy of
//! the parameter, the gradient or the moments per step (for the waveform encoder's 22.5 M-weight first layer each
//! copy is 90 MB), split over the cores. CUDA kernel (`kernels/adamw.cu`): multi-tensor launches — Σ g² of every
//! gradient in one launch, the clipping coefficient in a second (it stays on the device), and the update of a
//! whole parameter group (all its tensors, in place) in one more: [`GradNorm::add_all`] and [`update_group`].
//! Generic: the moments are tensors on the parameter's device and the update is composed of tensor ops; the
//! clipping coefficient stays a device scalar. Either way a step reads nothing back from the device (the norm is
//! read only when someone asks for it: [`GradNorm::value`]).

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

/// The global gradient norm, accumulated gradient by gradient: host sums for the host moments, device sums for
/// the others.
#[derive(Default)]
pub struct GradNorm {
    host_squares: f64,
    /// Σ g² of the device gradients: a sum of scalars (composed) and/or per-chunk f64 partials (the CUDA kernel);
    /// its total is the device part of the norm².
    device_squares: Vec<Tensor>,
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
                self.device_squares.push(s);
            }
        }
        Ok(())
    }

    /// Adds Σ g² of every gradient: the device ones on a GPU in one multi-tensor launch, the others one by one.
    pub fn add_all(&mut self, grads: &[(&Tensor, &Moments)]) -> Result<()> {
        let fused: Vec<&Tensor> = grads
            .iter()
            .filter(|(g, m)| multi_tensor(g) && matches!(m, Moments::Device { .. }))
            .map(|(g, _)| *g)
            .collect();
        for (g, m) in grads {
            if !fused.iter().any(|f| std::ptr::eq(*f, *g)) {
                self.add(g, m)?;
            }
        }
        if !fused.is_empty() {
            self.device_squares.push(multi::sum_squares(&fused)?);
        }
        Ok(())
    }

    /// The norm (reads the device sums back: for logs and tests, not for the step).
    pub fn value(&self) -> Result<f64> {
        let mut device = 0.0;
        for t in &self.device_squares {
            device += t.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        }
        Ok((self.host_squares + device).sqrt())
    }

    /// torch.nn.utils.clip_grad_norm_'s coefficient `min(1, max_norm / (norm + 1e-6))`: a number when every
    /// gradient is on the host, a device scalar otherwise (on a GPU one launch over the kernel's partials).
    pub fn clip(&self, max_norm: f64) -> Result<Clip> {
        let Some(first) = self.device_squares.first() else {
            return Ok(Clip::Host(
                (max_norm / (self.host_squares.sqrt() + 1e-6)).min(1.0) as f32,
            ));
        };
        if let [partials] = self.device_squares.as_slice() {
            if partials.dtype() == DType::F64
                && Kernel::select_device(partials.device(), true) == Kernel::Cuda
            {
                return Ok(Clip::Device(multi::clip(
                    partials,
                    self.host_squares,
                    max_norm,
                )?));
            }
        }
        let mut total = first.to_dtype(DType::F32)?.sum_all()?;
        for t in &self.device_squares[1..] {
            total = (total + t.to_dtype(DType::F32)?.sum_all()?)?;
        }
        let norm = (total.affine(1.0, self.host_squares)?.sqrt()? + 1e-6)?;
        let coefficient = norm.recip()?.affine(max_norm, 0.0)?;
        Ok(Clip::Device(coefficient.minimum(1.0)?))
    }
}

/// Whether a gradient takes the multi-tensor CUDA kernels.
fn multi_tensor(g: &Tensor) -> bool {
    Kernel::select(g, true) == Kernel::Cuda
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

/// One parameter of a group update: its variable, its gradient, its moments.
pub struct Update<'a> {
    pub var: &'a Var,
    pub grad: &'a Tensor,
    pub moments: &'a mut Moments,
}

/// Updates every parameter of a group (same step scalars) in place: on a GPU the device ones in one multi-tensor
/// launch, the others one by one ([`adamw_update`]).
pub fn update_group(group: &mut [Update<'_>], clip: &Clip, s: &Step) -> Result<()> {
    let fuses = |u: &Update<'_>| {
        matches!(u.moments, Moments::Device { .. })
            && multi_tensor(u.var.as_tensor())
            && multi_tensor(u.grad)
    };
    for u in group.iter_mut() {
        if !fuses(u) {
            adamw_update(u.var, u.grad, u.moments, clip, s)?;
        }
    }
    let fused: Vec<(&Var, &Tensor, &Tensor, &Tensor)> = group
        .iter()
        .filter(|u| fuses(u))
        .filter_map(|u| match &*u.moments {
            Moments::Device { m, v } => Some((u.var, u.grad, m, v)),
            Moments::Host { .. } => None,
        })
        .collect();
    if !fused.is_empty() {
        let Clip::Device(coefficient) = clip else {
            return Err(Error::Other(
                "adamw: device gradients with a host clipping coefficient".into(),
            ));
        };
        multi::update(&fused, coefficient, s)?;
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

/// The multi-tensor launches of `kernels/adamw.cu` (CUDA builds; elsewhere nothing selects them).
mod multi {
    #[cfg(not(feature = "cuda"))]
    use super::Step;
    #[cfg(not(feature = "cuda"))]
    use crate::error::Result;
    #[cfg(not(feature = "cuda"))]
    use candle_core::{Tensor, Var};

    #[cfg(feature = "cuda")]
    pub use cuda::{clip, sum_squares, update};

    #[cfg(not(feature = "cuda"))]
    pub fn sum_squares(_: &[&Tensor]) -> Result<Tensor> {
        Err(unavailable())
    }

    #[cfg(not(feature = "cuda"))]
    pub fn clip(_: &Tensor, _: f64, _: f64) -> Result<Tensor> {
        Err(unavailable())
    }

    #[cfg(not(feature = "cuda"))]
    pub fn update(_: &[(&Var, &Tensor, &Tensor, &Tensor)], _: &Tensor, _: &Step) -> Result<()> {
        Err(unavailable())
    }

    #[cfg(not(feature = "cuda"))]
    fn unavailable() -> crate::error::Error {
        crate::error::Error::Other("adamw: the multi-tensor kernels need a CUDA build".into())
    }

    #[cfg(feature = "cuda")]
    mod cuda {
        use candle_core::backend::BackendStorage;
        use candle_core::cuda_backend::cudarc::driver::DevicePtr;
        use candle_core::cuda_backend::CudaDevice;
        use candle_core::{DType, Storage, Tensor, Var};

        use crate::error::{Error, Result};
        use crate::ops::adamw::Step;
        use crate::ops::cuda::{adamw_chunks, alloc, launch, storage, to_u32, ADAMW};

        /// The device address of a contiguous f32 CUDA tensor's first value, and its device.
        fn address(t: &Tensor) -> Result<(u64, CudaDevice)> {
            let (guard, layout) = t.storage_and_layout();
            let Storage::Cuda(s) = &*guard else {
                return Err(Error::Other(
                    "adamw: a multi-tensor input is not on a GPU".into(),
                ));
            };
            if !layout.is_contiguous() || t.dtype() != DType::F32 {
                return Err(Error::Other(format!(
                    "adamw: a multi-tensor input must be contiguous f32 ({:?})",
                    t.dtype()
                )));
            }
            let dev = s.device().clone();
            let slice = s.as_cuda_slice::<f32>()?;
            let stream = dev.cuda_stream();
            let (ptr, _guard) = slice.device_ptr(&stream);
            // The address outlives the read guard: the caller keeps `t` alive until its launches are scheduled,
            // and candle's storage never moves.
            Ok((ptr + 4 * layout.start_offset() as u64, dev))
        }

        /// Tables of addresses (one per list, in order), the lengths and the chunk table, as one device buffer of
        /// u64 values, with the offset of each part: (buffer, [table offsets…, lens offset, chunks offset], chunks).
        fn tables(
            dev: &CudaDevice,
            lists: &[Vec<u64>],
            lens: &[usize],
        ) -> Result<(
            candle_core::cuda_backend::cudarc::driver::CudaSlice<u64>,
            Vec<usize>,
            usize,
        )> {
            let chunks = adamw_chunks(lens);
            let mut host: Vec<u64> = Vec::new();
            let mut offsets = Vec::new();
            for list in lists {
                offsets.push(host.len());
                host.extend_from_slice(list);
            }
            offsets.push(host.len());
            host.extend(lens.iter().map(|&n| n as u64));
            offsets.push(host.len());
            host.extend_from_slice(&chunks);
            let buffer = dev.clone_htod(&host)?;
            Ok((buffer, offsets, chunks.len() / 2))
        }

        /// Σ g² per chunk of every gradient (f64 partials, one launch).
        pub fn sum_squares(grads: &[&Tensor]) -> Result<Tensor> {
            let grads: Vec<Tensor> = grads
                .iter()
                .map(|g| g.contiguous())
                .collect::<candle_core::Result<_>>()?;
            let mut addresses = Vec::with_capacity(grads.len());
            let mut dev = None;
            for g in &grads {
                let (a, d) = address(g)?;
                addresses.push(a);
                dev = Some(d);
            }
            let dev = dev.ok_or_else(|| Error::Other("adamw: no gradients".into()))?;
            let lens: Vec<usize> = grads.iter().map(|g| g.elem_count()).collect();
            let (table, at, count) = tables(&dev, &[addresses], &lens)?;
            if count == 0 {
                return Ok(Tensor::zeros(
                    1,
                    DType::F64,
                    &candle_core::Device::Cuda(dev),
                )?);
            }
            let mut partials = alloc::<f64>(&dev, count)?;
            let (g_table, lens_v, chunks_v) = (
                table.slice(at[0]..at[1]),
                table.slice(at[1]..at[2]),
                table.slice(at[2]..),
            );
            // adamw_sumsq(const unsigned long long* grads, const unsigned long long* chunks,
            //             const unsigned long long* lens, double* partials)
            launch!(
                dev,
                ADAMW,
                "adamw_sumsq",
                to_u32(count, "adamw")?,
                [&g_table, &chunks_v, &lens_v, &mut partials]
            );
            drop(grads); // after the launch is scheduled (the addresses were read from them)
            let storage = candle_core::CudaStorage::wrap_cuda_slice(partials, dev.clone());
            Ok(Tensor::from_storage(
                Storage::Cuda(storage),
                count,
                candle_core::op::BackpropOp::none(),
                false,
            ))
        }

        /// The clipping coefficient from the partials and the host gradients' Σ g² (one single-block launch).
        pub fn clip(partials: &Tensor, host_squares: f64, max_norm: f64) -> Result<Tensor> {
            let (guard, layout) = partials.storage_and_layout();
            let Storage::Cuda(s) = &*guard else {
                return Err(Error::Other("adamw: partials off the GPU".into()));
            };
            let dev = s.device().clone();
            let p = s.as_cuda_slice::<f64>()?.slice(layout.start_offset()..);
            let count = to_u32(partials.elem_count(), "adamw")?;
            let mut squares = alloc::<f64>(&dev, 1)?;
            let mut coefficient = alloc::<f32>(&dev, 1)?;
            // adamw_clip(const double* partials, unsigned count, double host_squares, double max_norm,
            //            double* squares, float* clip)
            launch!(
                dev,
                ADAMW,
                "adamw_clip",
                1u32,
                [
                    &p,
                    &count,
                    &host_squares,
                    &max_norm,
                    &mut squares,
                    &mut coefficient
                ]
            );
            drop(guard);
            Ok(Tensor::from_storage(
                Storage::Cuda(storage(coefficient, &dev)),
                (),
                candle_core::op::BackpropOp::none(),
                false,
            ))
        }

        /// One launch updating every (θ, g, m, v) of a group in place.
        pub fn update(
            group: &[(&Var, &Tensor, &Tensor, &Tensor)],
            clip: &Tensor,
            s: &Step,
        ) -> Result<()> {
            let grads: Vec<Tensor> = group
                .iter()
                .map(|(_, g, _, _)| g.detach().contiguous())
                .collect::<candle_core::Result<_>>()?;
            let mut lists = vec![Vec::new(), Vec::new(), Vec::new(), Vec::new()];
            let mut lens = Vec::with_capacity(group.len());
            let mut dev = None;
            for ((var, _, m, v), g) in group.iter().zip(&grads) {
                let theta = var.as_tensor();
                if g.elem_count() != theta.elem_count()
                    || m.elem_count() != theta.elem_count()
                    || v.elem_count() != theta.elem_count()
                {
                    return Err(Error::Other(format!(
                        "adamw: a parameter {:?} with a gradient {:?}",
                        theta.dims(),
                        g.dims()
                    )));
                }
                for (list, t) in lists.iter_mut().zip([theta, g, m, v]) {
                    let (a, d) = address(t)?;
                    list.push(a);
                    dev = Some(d);
                }
                lens.push(theta.elem_count());
            }
            let dev = dev.ok_or_else(|| Error::Other("adamw: an empty group".into()))?;
            let (table, at, count) = tables(&dev, &lists, &lens)?;
            if count == 0 {
                return Ok(());
            }
            let views: Vec<_> = (0..6)
                .map(|i| table.slice(at[i]..at.get(i + 1).copied().unwrap_or(table.len())))
                .collect();
            let clip = clip.to_dtype(DType::F32)?.contiguous()?;
            let (clip_guard, clip_layout) = clip.storage_and_layout();
            let Storage::Cuda(cs) = &*clip_guard else {
                return Err(Error::Other(
                    "adamw: the clipping coefficient is off the GPU".into(),
                ));
            };
            let c = cs
                .as_cuda_slice::<f32>()?
                .slice(clip_layout.start_offset()..);
            let (b1, b2, decay, step_size, bias2_sqrt, eps) = (
                s.beta1 as f32,
                s.beta2 as f32,
                s.decay as f32,
                s.step_size as f32,
                s.bias2_sqrt as f32,
                s.eps as f32,
            );
            // adamw_update(const unsigned long long* params, const unsigned long long* grads,
            //              const unsigned long long* ms, const unsigned long long* vs,
            //              const unsigned long long* chunks, const unsigned long long* lens, const float* clip,
            //              float beta1, float beta2, float decay, float step_size, float bias2_sqrt, float eps)
            launch!(
                dev,
                ADAMW,
                "adamw_update",
                to_u32(count, "adamw")?,
                [
                    &views[0],
                    &views[1],
                    &views[2],
                    &views[3],
                    &views[5],
                    &views[4],
                    &c,
                    &b1,
                    &b2,
                    &decay,
                    &step_size,
                    &bias2_sqrt,
                    &eps
                ]
            );
            Ok(())
        }
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
