//! Our CUDA kernels on the Rust side: their launch shapes (plain functions, in every build) and, with the `cuda`
//! feature, the PTX of each `trainer/kernels/*.cu` and the helpers the ops' `cuda_fwd` bodies share.
//!
//! # The kernels
//! One `.cu` file per op with a CUDA body (which ops: [`crate::ops`]), f32, in blocks of [`BLOCK`] threads
//! (1-D), with shared headers (`common.cuh`: block reductions, `gelu.cuh`). `build.rs` compiles each file to PTX
//! (no fast-math) and writes one `&str` constant per file, `ptx::LAYER_NORM` for `layer_norm.cu`; `Module` names
//! each for the device's module cache. Three launch shapes:
//!
//! * **rows** — one block per row of a row-wise reduction (softmax, LayerNorm, a loss's rows), grid = rows;
//! * **elementwise** — grid-stride loops, grid = [`elementwise`] (at most [`MAX_GRID`] blocks);
//! * **column sums** — reductions over rows (γ/β gradients, per-channel statistics), deterministic: per block
//!   [`COLS`] adjacent columns × `BLOCK / COLS` row lanes, or one block per (channel, chunk of values), writing
//!   partials that a per-channel kernel adds in a fixed order. No atomics, no warp shuffles.
//!
//! The shapes are plain functions here, compiled in every build, because the CPU emulation test
//! (`trainer/tests/kernels_on_cpu.rs`) launches each kernel with the very grid the `cuda_fwd` bodies use.

/// Threads per block of every kernel: `ERC_BLOCK` in `kernels/common.cuh` (the emulation test checks they agree).
pub const BLOCK: u32 = 256;

/// Adjacent columns per block of the column-sum kernels: `ERC_COLS` in `kernels/common.cuh`.
pub const COLS: u32 = 32;

/// Most blocks an elementwise (grid-stride) launch uses: enough to fill an H100/H200 several times over.
pub const MAX_GRID: u32 = 4096;

/// Rows per block of the LayerNorm γ/β partial sums (`layer_norm_bwd_partials`).
pub const LAYER_NORM_ROWS: u32 = 256;

/// Time steps per block of the GroupNorm partial sums (`gn_partials`, `gn_bwd_partials`).
pub const GROUP_NORM_STEPS: u32 = 256;

/// Values of one channel per block of the BatchNorm partial sums (`bn_*_partials`).
pub const BATCH_NORM_CHUNK: u32 = 16 * BLOCK;

/// `n` as a kernel's `unsigned` parameter, or an error naming `op` for tensors beyond 2³² − 1.
pub fn to_u32(n: usize, op: &str) -> candle_core::Result<u32> {
    u32::try_from(n)
        .map_err(|_| candle_core::Error::Msg(format!("{op}: {n} is beyond a CUDA kernel's range")))
}

/// Grid of a grid-stride elementwise kernel over `n` values (at least one block).
pub fn elementwise(n: usize) -> u32 {
    n.div_ceil(BLOCK as usize).clamp(1, MAX_GRID as usize) as u32
}

/// Grid of a kernel with one thread per item (`n` channels, classes, …).
pub fn per_thread(n: usize) -> candle_core::Result<u32> {
    to_u32(n.div_ceil(BLOCK as usize).max(1), "per-thread launch")
}

/// How many chunks of `chunk` cover `count` values (at least one).
pub fn chunks(count: usize, chunk: u32) -> candle_core::Result<u32> {
    to_u32(count.div_ceil(chunk as usize).max(1), "chunked launch")
}

/// LayerNorm's γ/β partial-sum launch over `rows` rows of `d`: (grid, chunks) with grid = ⌈d/COLS⌉ · chunks.
pub fn layer_norm_partials(rows: usize, d: usize) -> candle_core::Result<(u32, u32)> {
    let chunks = chunks(rows, LAYER_NORM_ROWS)?;
    let grid = d.div_ceil(COLS as usize) * chunks as usize;
    Ok((to_u32(grid, "layer norm")?, chunks))
}

/// GroupNorm's partial-sum launch over x (B, T, C): (grid, chunks) with grid = B · ⌈C/COLS⌉ · chunks.
pub fn group_norm_partials(b: usize, t: usize, c: usize) -> candle_core::Result<(u32, u32)> {
    let chunks = chunks(t, GROUP_NORM_STEPS)?;
    let grid = b * c.div_ceil(COLS as usize) * chunks as usize;
    Ok((to_u32(grid, "group norm")?, chunks))
}

/// BatchNorm's partial-sum launch over x (N, C, H, W): (grid, chunks) with grid = C · chunks, chunks covering
/// the N·H·W values of a channel.
pub fn batch_norm_partials(n: usize, c: usize, hw: usize) -> candle_core::Result<(u32, u32)> {
    let chunks = chunks(n * hw, BATCH_NORM_CHUNK)?;
    Ok((to_u32(c * chunks as usize, "batch norm")?, chunks))
}

#[cfg(feature = "cuda")]
pub use device::*;

#[cfg(feature = "cuda")]
mod device {
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaView, DeviceRepr, LaunchConfig,
    };
    use candle_core::cuda_backend::CudaDevice;
    use candle_core::{bail, CudaStorage, Layout, Result, Storage, Tensor};

    use super::BLOCK;

    /// The PTX of each `kernels/*.cu`, one `&str` constant per file (`LAYER_NORM` for `layer_norm.cu`), written
    /// by `build.rs`.
    pub mod ptx {
        include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
    }

    /// A kernel file: its PTX and the name under which a device caches the loaded module.
    pub struct Module {
        pub name: &'static str,
        pub ptx: &'static str,
    }

    pub const SOFTMAX_DROPOUT: Module = Module {
        name: "erc_train_softmax_dropout",
        ptx: ptx::SOFTMAX_DROPOUT,
    };
    pub const LAYER_NORM: Module = Module {
        name: "erc_train_layer_norm",
        ptx: ptx::LAYER_NORM,
    };
    pub const GELU: Module = Module {
        name: "erc_train_gelu",
        ptx: ptx::GELU,
    };
    pub const GROUP_NORM: Module = Module {
        name: "erc_train_group_norm",
        ptx: ptx::GROUP_NORM,
    };
    pub const BATCH_NORM: Module = Module {
        name: "erc_train_batch_norm",
        ptx: ptx::BATCH_NORM,
    };
    pub const LOSS: Module = Module {
        name: "erc_train_loss",
        ptx: ptx::LOSS,
    };

    /// `grid` blocks of [`BLOCK`] threads, no dynamic shared memory (the kernels' shared arrays are static).
    pub fn config(grid: u32) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// `launch!(device, MODULE, "kernel", grid, [arg, …])`: loads the kernel (once per device) and launches it
    /// with the arguments in order — device buffers as `&view` (read) or `&mut slice` (written), numbers as
    /// `&value` of the kernel parameter's exact type (`u32` for `unsigned`, `u64` for `unsigned long long`,
    /// `i32` for `int`, `f32`, `f64`). The caller's `unsafe` contract: the arguments match the kernel's
    /// parameters, and the buffers are as large as the kernel reads and writes.
    macro_rules! launch {
        ($dev:expr, $module:expr, $kernel:expr, $grid:expr, [$($arg:expr),* $(,)?]) => {{
            use candle_core::cuda_backend::cudarc::driver::PushKernelArg as _;
            use candle_core::cuda_backend::WrapErr as _;
            let module = &$module;
            let func = $dev.get_or_load_custom_func($kernel, module.name, module.ptx)?;
            let mut builder = func.builder();
            $( builder.arg($arg); )*
            // SAFETY: see the macro's doc; each call site states the kernel's signature.
            unsafe { builder.launch($crate::ops::cuda::config($grid)) }.w()?;
        }};
    }
    pub(crate) use launch;

    /// The f32 values of an input of a custom op (contiguous: the ops make their inputs so), as a view.
    pub fn input<'a>(
        storage: &'a CudaStorage,
        layout: &Layout,
        op: &str,
    ) -> Result<CudaView<'a, f32>> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            bail!("{op} expects a contiguous tensor")
        };
        Ok(storage.as_cuda_slice::<f32>()?.slice(start..end))
    }

    /// Runs `f` on the f32 values of a CUDA tensor that an op carries beside its inputs (targets, class weights,
    /// running statistics: data without a gradient), made contiguous first.
    pub fn with_tensor<R>(
        t: &Tensor,
        op: &str,
        f: impl FnOnce(CudaView<'_, f32>) -> Result<R>,
    ) -> Result<R> {
        let t = t.contiguous()?;
        let (storage, layout) = t.storage_and_layout();
        match &*storage {
            Storage::Cuda(s) => f(input(s, layout, op)?),
            _ => bail!("{op} expects a CUDA tensor"),
        }
    }

    /// An uninitialised device buffer of `n` values, for a kernel to write in full.
    pub fn alloc<T: DeviceRepr>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
        // SAFETY: every caller launches a kernel that writes all `n` values before anything reads them.
        unsafe { dev.alloc::<T>(n.max(1)) }
    }

    /// An op's output storage.
    pub fn storage(slice: CudaSlice<f32>, dev: &CudaDevice) -> CudaStorage {
        CudaStorage::wrap_cuda_slice(slice, dev.clone())
    }
}
