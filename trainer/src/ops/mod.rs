//! The trainer's custom numeric ops: every computation for which candle's own ops are too slow, drop gradients,
//! or are wrong (see `docs/dependencies.md` in the team notes: fused LayerNorm/softmax without backward, conv
//! backward bugs, pooling backward only for kernel == stride).
//!
//! # Contract
//! Each op is one file with ONE public function (`layer_norm(x, γ, β, eps)`, `softmax(x)`, …); callers never
//! choose an implementation. Inside, the op owns its dispatch through [`Kernel::select`]:
//!
//! * [`Kernel::Cpu`] — a hand-written kernel for contiguous f32 CPU tensors, one candle graph node (`CustomOpN`)
//!   with its own closed-form backward;
//! * [`Kernel::Cuda`] — the same node's `cuda_fwd` over PTX compiled from `trainer/kernels/<op>.cu` (builds with
//!   the `cuda` feature), for the ops that have one: `softmax_dropout`, `layer_norm`, `gelu` (both forms),
//!   `group_norm` (+ GELU), `batch_norm` (+ ReLU), the losses of `loss`, `conv1d`, `conv2d`, `max_pool_3x3_s2`,
//!   `dropout` (counter-based masks drawn in the kernel) and `adamw` (multi-tensor launches). Their backward on a
//!   GPU is a second custom op (`…Grad`, `cuda_fwd` only), applied from the node's `bwd` when the tensors are on
//!   a CUDA device: stateless (statistics, probabilities, window maxima or dropout masks are recomputed from x or
//!   their key, or read from the forward's own output), parameter gradients as deterministic sums (no atomics).
//!   The convolutions chain layout kernels and cuBLAS products (conv2d: im2col into a bounded workspace, one
//!   strided-batched product written straight into NCHW; conv1d: channels-last columns, products batched over the
//!   groups written in place), written once against [`cuda::Exec`] so that the emulation test runs the GPU's very
//!   launches and products; conv1d's GELU is `gelu`'s kernel after the product. [`cuda`] holds the PTX, the
//!   launch shapes and helpers;
//! * [`Kernel::Generic`] — the same maths composed of candle ops whose backward is right, on any device and
//!   dtype. It is the reference every kernel is tested against, and what runs for an op without a kernel on the
//!   tensor's device.
//!
//! Every path takes the same shapes and returns the same values (to float rounding) and gradients; an op's
//! doc states its shapes. Empty tensors and dtypes other than f32 always take the generic path.
//! `ERC_OPS=generic` in the environment forces the generic path everywhere (read once per process,
//! [`forced_generic`]): CI runs the parity, gradient and end-to-end tests under it so that the code a GPU without
//! a kernel would run is exercised on every CPU run.
//!
//! # Adding an op
//! 1. A file here with the public function, a `generic` function composed of candle ops, and the kernel struct
//!    implementing `CustomOpN` (`cpu_fwd`, `bwd`).
//! 2. The public function: `match Kernel::select(&x, has_cuda) { Kernel::Generic => generic(..), _ =>
//!    x.apply_opN(..) }` — candle picks `cpu_fwd` or `cuda_fwd` by the tensor's device; `has_cuda` is `true` once
//!    the op has a CUDA body (step 3), `false` until then.
//! 3. A CUDA kernel: `trainer/kernels/<op>.cu` (f32, blocks of [`cuda::BLOCK`] threads, shared-memory reductions
//!    from `common.cuh`; `build.rs` compiles it to PTX), a `cuda::Module` constant naming its PTX, and
//!    `#[cfg(feature = "cuda")] fn cuda_fwd` beside `cpu_fwd`, launching it with `cuda::launch!` (grids from
//!    [`cuda`]'s shape functions). Data without a gradient that the CPU body keeps in the op (targets, running
//!    statistics) comes along as device tensors, read with `cuda::with_tensor`. The backward: a second op,
//!    `cuda_fwd` only, whose outputs may be packed into one buffer and narrowed (`[∂x | ∂γ | ∂β]`).
//! 4. Tests: in the op's file, the CPU kernel against `generic`, values and gradients; in
//!    `trainer/tests/kernels_on_cpu.rs`, the CUDA kernels run on the CPU by the emulator (`kernels/emulate/`)
//!    against the CPU kernel; and a case in [`check`], whose [`check::compare_with_cpu`] runs every op on a
//!    device against its CPU kernel (the GPU check; rehearsed on the CPU by its unit test).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use candle_core::{CpuStorage, DType, Layout, Shape, Tensor};

pub mod adamw;
pub mod batch_norm;
pub mod check;
pub mod concat_l2;
pub mod conv1d;
pub mod conv2d;
pub mod cuda;
pub mod dropout;
pub mod gelu;
pub mod group_norm;
pub mod layer_norm;
pub mod linear;
pub mod loss;
pub mod max_pool_2x2;
pub mod peak_labels;
pub mod pool;
pub mod softmax;
pub mod softmax_dropout;
pub mod tensor_fusion;
// MESM's sparse cross-modal attention
pub mod nucleus;

pub use batch_norm::batch_norm;
pub use concat_l2::{concat_l2_normalize, l2_normalize, l2_normalize_if};
pub use conv1d::conv1d;
pub use conv2d::conv2d;
pub use dropout::{dropout, Mask};
pub use gelu::{gelu_erf, gelu_tanh};
pub use group_norm::group_norm_per_channel;
pub use layer_norm::layer_norm;
pub use linear::linear;
pub use max_pool_2x2::max_pool_2x2;
pub use nucleus::nucleus_mask;
pub use peak_labels::peak_labels;
pub use pool::max_pool_3x3_s2;
pub use softmax::softmax;
pub use softmax_dropout::softmax_dropout;
pub use tensor_fusion::tensor_fusion;

/// Which body of an op runs for a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Cpu,
    Cuda,
    Generic,
}

impl Kernel {
    /// The body for `t`: the CPU kernel for a non-empty f32 CPU tensor, the CUDA kernel for one on a CUDA device
    /// when the op has one (`has_cuda`) and the build has CUDA, else (or under `ERC_OPS=generic`) the generic
    /// composition.
    pub fn select(t: &Tensor, has_cuda: bool) -> Kernel {
        if forced_generic() || t.dtype() != DType::F32 || t.elem_count() == 0 {
            Kernel::Generic.count();
            return Kernel::Generic;
        }
        Kernel::select_device(t.device(), has_cuda)
    }

    /// The body for f32 work on `device` (what [`Kernel::select`] picks for a non-empty f32 tensor there).
    pub fn select_device(device: &candle_core::Device, has_cuda: bool) -> Kernel {
        let kernel = if forced_generic() {
            Kernel::Generic
        } else {
            match device {
                candle_core::Device::Cpu => Kernel::Cpu,
                candle_core::Device::Cuda(_) if has_cuda && cfg!(feature = "cuda") => Kernel::Cuda,
                _ => Kernel::Generic,
            }
        };
        kernel.count();
        kernel
    }

    fn count(self) {
        BODIES[self as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// How many times each body was picked in this process ([`Kernel::select`]): runs record it (`summary.json`'s
/// `op_bodies`), and `make test-generic` checks that `ERC_OPS=generic` took effect.
static BODIES: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

/// Dispatches per body, from [`body_counts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BodyCounts {
    pub cpu: u64,
    pub cuda: u64,
    pub generic: u64,
}

impl BodyCounts {
    /// The dispatches since `earlier` (a snapshot of the same process).
    pub fn since(&self, earlier: &BodyCounts) -> BodyCounts {
        BodyCounts {
            cpu: self.cpu.saturating_sub(earlier.cpu),
            cuda: self.cuda.saturating_sub(earlier.cuda),
            generic: self.generic.saturating_sub(earlier.generic),
        }
    }
}

/// The dispatches so far in this process.
pub fn body_counts() -> BodyCounts {
    let get = |k: Kernel| BODIES[k as usize].load(Ordering::Relaxed);
    BodyCounts {
        cpu: get(Kernel::Cpu),
        cuda: get(Kernel::Cuda),
        generic: get(Kernel::Generic),
    }
}

/// Whether `ERC_OPS=generic` is set: read once per process (the value must not change between the forward and
/// backward of a step). Any other value of `ERC_OPS` is the default (kernels where they exist).
pub fn forced_generic() -> bool {
    static GENERIC: OnceLock<bool> = OnceLock::new();
    *GENERIC.get_or_init(|| {
        let value = std::env::var("ERC_OPS").unwrap_or_default();
        let generic = value.eq_ignore_ascii_case("generic");
        if !value.is_empty() && !generic {
            tracing::warn!(
                "ERC_OPS={value} is not `generic`: the ops' kernels run where they exist"
            );
        }
        generic
    })
}

// ---------------------------------------------------------------------------------------------------------------
// CPU storage access shared by the kernels

/// The values of a contiguous f32 CPU storage, as a custom op receives it; an error naming `op` otherwise.
pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(values), Some((start, end))) => Ok(&values[start..end]),
        _ => candle_core::bail!("{op} expects a contiguous f32 tensor"),
    }
}

/// [`contiguous_f32`] for ops that write in place.
pub(crate) fn contiguous_f32_mut<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a mut [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(values), Some((start, end))) => Ok(&mut values[start..end]),
        _ => candle_core::bail!("{op} expects a contiguous f32 tensor"),
    }
}

/// Runs `f` on a CPU f32 tensor's values (made contiguous first; a no-op when it already is), borrowed from its
/// storage; an error naming `op` for a tensor elsewhere or of another dtype.
pub(crate) fn with_cpu_f32<R>(
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

/// [`with_cpu_f32`] for a fallible `f`.
pub(crate) fn with_values<R>(
    t: &Tensor,
    op: &str,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    with_cpu_f32(t, op, f)?
}

/// The width of the last dimension and the number of rows before it.
pub(crate) fn rows_and_width(shape: &Shape) -> candle_core::Result<(usize, usize)> {
    let width = *shape
        .dims()
        .last()
        .ok_or_else(|| candle_core::Error::Msg("a scalar has no rows".into()))?;
    Ok((shape.elem_count() / width.max(1), width))
}

/// Σ x² in f64, over 8 independent lanes so that the loop vectorises.
pub(crate) fn sum_squares(values: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let chunks = values.chunks_exact(8);
    let rest: f64 = chunks
        .remainder()
        .iter()
        .map(|x| (*x as f64) * (*x as f64))
        .sum();
    for chunk in chunks {
        for (lane, x) in lanes.iter_mut().zip(chunk) {
            *lane += (*x as f64) * (*x as f64);
        }
    }
    lanes.iter().sum::<f64>() + rest
}

/// Σ a·b in f64, over 8 lanes.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let rest: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| (*x as f64) * (*y as f64))
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            lanes[i] += (x[i] as f64) * (y[i] as f64);
        }
    }
    lanes.iter().sum::<f64>() + rest
}
