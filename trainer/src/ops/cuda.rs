//! Our CUDA kernels on the Rust side: their launch shapes (plain functions, in every build) and, with the `cuda`
//! feature, the PTX of each `trainer/kernels/*.cu` and the helpers the ops' `cuda_fwd` bodies share.
//!
//! # The kernels
//! One `.cu` file per op with a CUDA body (which ops: [`crate::ops`]), f32, in blocks of [`BLOCK`] threads
//! (1-D), with shared headers (`common.cuh`: block reductions, `gelu.cuh`). `build.rs` compiles each file to PTX
//! (no fast-math) and writes one `&str` constant per file, `ptx::LAYER_NORM` for `layer_norm.cu`; `Module` names
//! each for the device's module cache. Four launch shapes:
//!
//! * **rows** — one block per row of a row-wise reduction (softmax, LayerNorm, a loss's rows), grid = rows;
//! * **elementwise** — grid-stride loops, grid = [`elementwise`] (at most [`MAX_GRID`] blocks);
//! * **planes** — 2-D grids whose `blockIdx.y` is a plane (a channel, a (batch element, chunk of steps), a
//!   convolution group) and whose x covers the positions inside it with 32-bit index math: a thread's plane
//!   constants are loaded once and no value costs a 64-bit division. Taller than [`MAX_GRID_Y`] planes, a kernel
//!   runs as several launches, each told its first plane ([`plane_launches`]);
//! * **column sums** — reductions over rows (γ/β gradients, per-channel statistics), deterministic: per block
//!   [`COLS`] adjacent columns × `BLOCK / COLS` row lanes, or one block per (channel, chunk of values), writing
//!   partials that one block per channel (or per (b, c)) adds by a fixed-order tree. No atomics, no warp
//!   shuffles.
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

/// Elements per block of the multi-tensor AdamW kernels: `ERC_ADAMW_CHUNK` in `kernels/adamw.cu`.
pub const ADAMW_CHUNK: usize = 4096;

/// The chunk table of a multi-tensor AdamW launch over tensors of lengths `lens`: (tensor, first element) per
/// block, [`ADAMW_CHUNK`] elements per chunk (empty tensors have none).
pub fn adamw_chunks(lens: &[usize]) -> Vec<u64> {
    let mut chunks = Vec::new();
    for (t, &len) in lens.iter().enumerate() {
        for start in (0..len).step_by(ADAMW_CHUNK) {
            chunks.extend([t as u64, start as u64]);
        }
    }
    chunks
}

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

/// A 1-D or 2-D grid of blocks (`blockIdx.y` numbers planes, channels, tensors: whatever the kernel says).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub x: u32,
    pub y: u32,
}

impl From<u32> for Grid {
    fn from(x: u32) -> Grid {
        Grid { x, y: 1 }
    }
}

impl From<(u32, u32)> for Grid {
    fn from((x, y): (u32, u32)) -> Grid {
        Grid { x, y }
    }
}

impl std::fmt::Display for Grid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.y == 1 {
            write!(f, "{}", self.x)
        } else {
            write!(f, "{}x{}", self.x, self.y)
        }
    }
}

/// Most blocks along a grid's y axis (CUDA's limit).
pub const MAX_GRID_Y: u32 = 65_535;

/// `n` as the length of a range that a kernel walks with `unsigned` indices (a plane, a channel's values), with
/// room for one more grid stride so that the loop's index cannot wrap; an error naming `op` beyond.
pub fn to_u32_indexed(n: usize, op: &str) -> candle_core::Result<u32> {
    let limit = (u32::MAX - MAX_GRID * BLOCK) as usize;
    if n > limit {
        candle_core::bail!("{op}: {n} values in one plane are beyond a kernel's 32-bit indices")
    }
    Ok(n as u32)
}

/// The launches of a kernel over `planes` planes (`blockIdx.y`) of `x` blocks each: grids at most `max_y` tall,
/// each with its first plane, which the kernel adds to `blockIdx.y` (its `y0` parameter). `max_y` is
/// [`MAX_GRID_Y`]; the emulation tests lower it to cross launches on small inputs.
pub fn plane_launches(x: u32, planes: usize, max_y: u32) -> candle_core::Result<Vec<(u32, Grid)>> {
    let planes = to_u32(planes, "plane launch")?;
    let max_y = max_y.clamp(1, MAX_GRID_Y);
    Ok((0..planes)
        .step_by(max_y as usize)
        .map(|y0| {
            (
                y0,
                Grid {
                    x: x.max(1),
                    y: (planes - y0).min(max_y),
                },
            )
        })
        .collect())
}

/// One block per item (a channel, a (b, c) pair) of a per-item reduction: the grid's x (up to 2³¹ − 1 blocks).
pub fn per_block(n: usize) -> candle_core::Result<u32> {
    let blocks = to_u32(n.max(1), "per-block launch")?;
    if blocks > i32::MAX as u32 {
        candle_core::bail!("per-block launch: {n} blocks are beyond a grid's x")
    }
    Ok(blocks)
}

/// GroupNorm's launches over x (B, T, C) for the kernels that read it (partial sums, forward, ∂x): blocks of
/// [`COLS`] channels × [`GROUP_NORM_STEPS`] steps, x = ⌈C/COLS⌉ column blocks, one plane per (b, chunk of steps)
/// (`b·chunks + chunk`); with `chunks` = ⌈T / GROUP_NORM_STEPS⌉.
pub fn group_norm_launches(
    b: usize,
    t: usize,
    c: usize,
    max_y: u32,
) -> candle_core::Result<(Vec<(u32, Grid)>, u32)> {
    const OP: &str = "group norm";
    let chunks = chunks(t, GROUP_NORM_STEPS)?;
    // the kernels' b·T + step and b·C + c are 32-bit; a thread's index in x is 64-bit
    to_u32(b * t, OP)?;
    to_u32(b * c, OP)?;
    let x = to_u32(c.div_ceil(COLS as usize), OP)?;
    Ok((plane_launches(x, b * chunks as usize, max_y)?, chunks))
}

/// BatchNorm's launches over x (N, C, H, W) for the kernels that read it (partial sums, forward, ∂x): one plane
/// per channel, x = the chunks of [`BATCH_NORM_CHUNK`] of its N·H·W values; with `chunks`.
pub fn batch_norm_launches(
    n: usize,
    c: usize,
    hw: usize,
    max_y: u32,
) -> candle_core::Result<(Vec<(u32, Grid)>, u32)> {
    to_u32_indexed(n * hw, "batch norm")?;
    let chunks = chunks(n * hw, BATCH_NORM_CHUNK)?;
    Ok((plane_launches(chunks, c, max_y)?, chunks))
}

/// A kernel file: the name under which a device caches its loaded module, and the file (what the CPU emulator
/// compiles); with the `cuda` feature, its PTX (`Module::ptx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Module {
    pub name: &'static str,
    /// The `.cu` file under `trainer/kernels/`.
    pub file: &'static str,
}

pub const SOFTMAX_DROPOUT: Module = Module {
    name: "erc_train_softmax_dropout",
    file: "softmax_dropout.cu",
};
pub const LAYER_NORM: Module = Module {
    name: "erc_train_layer_norm",
    file: "layer_norm.cu",
};
pub const GELU: Module = Module {
    name: "erc_train_gelu",
    file: "gelu.cu",
};
pub const GROUP_NORM: Module = Module {
    name: "erc_train_group_norm",
    file: "group_norm.cu",
};
pub const BATCH_NORM: Module = Module {
    name: "erc_train_batch_norm",
    file: "batch_norm.cu",
};
pub const CONV1D: Module = Module {
    name: "erc_train_conv1d",
    file: "conv1d.cu",
};
pub const LOSS: Module = Module {
    name: "erc_train_loss",
    file: "loss.cu",
};
pub const ADAMW: Module = Module {
    name: "erc_train_adamw",
    file: "adamw.cu",
};
pub const DROPOUT: Module = Module {
    name: "erc_train_dropout",
    file: "dropout.cu",
};
pub const CONV2D: Module = Module {
    name: "erc_train_conv2d",
    file: "conv2d.cu",
};
pub const POOL: Module = Module {
    name: "erc_train_pool",
    file: "pool.cu",
};

/// Every kernel file (the build checks that each `kernels/*.cu` is here, and the emulation test that each has a
/// test).
pub const MODULES: &[Module] = &[
    ADAMW,
    BATCH_NORM,
    CONV1D,
    CONV2D,
    DROPOUT,
    GELU,
    GROUP_NORM,
    LAYER_NORM,
    LOSS,
    POOL,
    SOFTMAX_DROPOUT,
];

// ---------------------------------------------------------------------------------------------------------------
// Bodies written once for the GPU and its CPU emulation

/// One operand of a [`Gemm`]: where its first matrix starts (in values from the buffer's start), its row stride,
/// and the distance between consecutive matrices of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operand {
    pub offset: usize,
    pub ld: usize,
    pub stride: usize,
}

impl Operand {
    /// A single matrix at `offset` with row stride `ld`.
    pub fn at(offset: usize, ld: usize) -> Operand {
        Operand {
            offset,
            ld,
            stride: 0,
        }
    }

    /// Consecutive matrices `stride` values apart.
    pub fn strided(self, stride: usize) -> Operand {
        Operand { stride, ..self }
    }
}

/// A batch of row-major matrix products `C_i = α·op(A_i)·op(B_i) + β·C_i` (`i < batch`; op(A) is m×k, op(B) k×n,
/// C m×n; `trans_a` means A is stored k×m and read transposed, likewise `trans_b`). cuBLAS runs it (column-major,
/// as `Cᵀ = op(B)ᵀ·op(A)ᵀ`), in TF32 when `precision: tf32` is set, like every candle matmul; the emulation test
/// computes it in f64.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f32,
    pub beta: f32,
    pub a: Operand,
    pub b: Operand,
    pub c: Operand,
    pub batch: usize,
}

impl Gemm {
    /// C (m×n) = A (m×k) · B (k×n): one product, α = 1, β = 0 (set the other fields for more).
    pub fn new(m: usize, n: usize, k: usize, a: Operand, b: Operand, c: Operand) -> Gemm {
        Gemm {
            m,
            n,
            k,
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            beta: 0.0,
            a,
            b,
            c,
            batch: 1,
        }
    }

    /// How many values each operand's buffer must hold from its start: (A, B, C).
    pub fn extents(&self) -> (usize, usize, usize) {
        let extent = |o: &Operand, rows: usize, cols: usize| {
            if rows == 0 || cols == 0 || self.batch == 0 {
                return 0;
            }
            o.offset + (self.batch - 1) * o.stride + (rows - 1) * o.ld + cols
        };
        let (ar, ac) = if self.trans_a {
            (self.k, self.m)
        } else {
            (self.m, self.k)
        };
        let (br, bc) = if self.trans_b {
            (self.n, self.k)
        } else {
            (self.k, self.n)
        };
        (
            extent(&self.a, ar, ac),
            extent(&self.b, br, bc),
            extent(&self.c, self.m, self.n),
        )
    }

    /// An error naming `op` unless every operand's row stride covers its row and its buffer its extent.
    pub fn check(&self, op: &str, lens: (usize, usize, usize)) -> candle_core::Result<()> {
        let (ac, bc) = (
            if self.trans_a { self.m } else { self.k },
            if self.trans_b { self.k } else { self.n },
        );
        let (ea, eb, ec) = self.extents();
        if self.a.ld < ac || self.b.ld < bc || self.c.ld < self.n {
            candle_core::bail!("{op}: a product's row stride is shorter than its row: {self:?}")
        }
        if ea > lens.0 || eb > lens.1 || ec > lens.2 {
            candle_core::bail!(
                "{op}: a product reaches past its buffers ({ea}, {eb}, {ec} of {lens:?}): {self:?}"
            )
        }
        Ok(())
    }
}

/// A kernel argument of an [`Exec`] launch: a buffer read or written, or a number of the kernel parameter's exact
/// type (`u32` for `unsigned`, `u64` for `unsigned long long`, `i32` for `int`).
pub enum Arg<'a, B> {
    In(&'a B),
    Out(&'a mut B),
    U32(u32),
    U64(u64),
    I32(i32),
    F32(f32),
}

/// What a CUDA body needs from a device: f32 buffers, kernel launches and matrix products. The ops whose CUDA
/// bodies chain kernels and cuBLAS products (conv2d, conv1d) are written once against this trait: the GPU runs
/// them through `CudaExec`, the emulation test (`trainer/tests/kernels_on_cpu`) through its CPU emulator — the
/// same launches, grids, offsets and leading dimensions.
pub trait Exec {
    /// A buffer of f32 values on the device.
    type Buf;
    /// A buffer of `n` values, uninitialised (every value is written before it is read).
    fn alloc(&self, n: usize) -> candle_core::Result<Self::Buf>;
    /// How many values `buf` holds.
    fn len(&self, buf: &Self::Buf) -> usize;
    /// Launches `kernel` of `module` on `grid` blocks of [`BLOCK`] threads, its arguments in order.
    fn launch(
        &self,
        module: &Module,
        kernel: &'static str,
        grid: Grid,
        args: &mut [Arg<'_, Self::Buf>],
    ) -> candle_core::Result<()>;
    /// `c ← α·op(a)·op(b) + β·c` as `g` says.
    fn gemm(
        &self,
        g: &Gemm,
        a: &Self::Buf,
        b: &Self::Buf,
        c: &mut Self::Buf,
    ) -> candle_core::Result<()>;
}

#[cfg(feature = "cuda")]
pub use device::*;

#[cfg(feature = "cuda")]
mod device {
    use candle_core::cuda_backend::cudarc::cublas::{result as cublas, sys as cublas_sys};
    use candle_core::cuda_backend::cudarc::driver::{
        CudaSlice, CudaView, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaDevice, WrapErr};
    use candle_core::{bail, CudaStorage, Layout, Result, Storage, Tensor};

    use super::{Arg, Exec, Gemm, Grid, Module, BLOCK};

    /// The PTX of each `kernels/*.cu`, one `&str` constant per file (`LAYER_NORM` for `layer_norm.cu`), written
    /// by `build.rs`.
    pub mod ptx {
        include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
    }

    impl Module {
        /// The file's PTX, compiled by `build.rs`.
        pub fn ptx(&self) -> &'static str {
            ptx::by_file(self.file)
        }
    }

    /// `grid` blocks of [`BLOCK`] threads, no dynamic shared memory (the kernels' shared arrays are static).
    pub fn config(grid: impl Into<Grid>) -> LaunchConfig {
        let grid = grid.into();
        LaunchConfig {
            grid_dim: (grid.x, grid.y, 1),
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
            let func = $dev.get_or_load_custom_func($kernel, module.name, module.ptx())?;
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

    // -----------------------------------------------------------------------------------------------------------
    // The Exec of a GPU

    /// A buffer of a [`CudaExec`]: an op's input, borrowed from candle's storage, or a buffer the body made.
    pub enum DevBuf<'a> {
        View(CudaView<'a, f32>),
        Owned(CudaSlice<f32>),
    }

    impl DevBuf<'_> {
        fn len(&self) -> usize {
            match self {
                DevBuf::View(v) => v.len(),
                DevBuf::Owned(s) => s.len(),
            }
        }
    }

    /// [`Exec`] on a CUDA device: kernels from our PTX, products on candle's cuBLAS handle (and stream).
    pub struct CudaExec<'a> {
        pub dev: &'a CudaDevice,
    }

    impl<'a> CudaExec<'a> {
        pub fn new(dev: &'a CudaDevice) -> Self {
            CudaExec { dev }
        }

        /// An op's contiguous f32 input, as a buffer of this Exec.
        pub fn input(storage: &'a CudaStorage, layout: &Layout, op: &str) -> Result<DevBuf<'a>> {
            Ok(DevBuf::View(input(storage, layout, op)?))
        }

        /// A buffer the body made, as an op's output storage.
        pub fn into_storage(&self, buf: DevBuf<'a>, op: &str) -> Result<CudaStorage> {
            match buf {
                DevBuf::Owned(slice) => Ok(storage(slice, self.dev)),
                DevBuf::View(_) => bail!("{op}: an input is not an output"),
            }
        }
    }

    impl<'a> Exec for CudaExec<'a> {
        type Buf = DevBuf<'a>;

        fn alloc(&self, n: usize) -> Result<DevBuf<'a>> {
            Ok(DevBuf::Owned(alloc(self.dev, n)?))
        }

        fn len(&self, buf: &DevBuf<'a>) -> usize {
            buf.len()
        }

        fn launch(
            &self,
            module: &Module,
            kernel: &'static str,
            grid: Grid,
            args: &mut [Arg<'_, DevBuf<'a>>],
        ) -> Result<()> {
            let func = self
                .dev
                .get_or_load_custom_func(kernel, module.name, module.ptx())?;
            let mut builder = func.builder();
            for arg in args.iter_mut() {
                match arg {
                    Arg::In(DevBuf::View(v)) => builder.arg(v),
                    Arg::In(DevBuf::Owned(s)) => builder.arg(s),
                    Arg::Out(buf) => match &mut **buf {
                        DevBuf::Owned(s) => builder.arg(s),
                        DevBuf::View(_) => bail!("{kernel}: writes to an input"),
                    },
                    Arg::U32(v) => builder.arg(&*v),
                    Arg::U64(v) => builder.arg(&*v),
                    Arg::I32(v) => builder.arg(&*v),
                    Arg::F32(v) => builder.arg(&*v),
                };
            }
            // SAFETY: the bodies written against `Exec` pass each kernel its parameters in order, with the
            // types the trait's `Arg` documents, and buffers as large as the kernel reads and writes (the
            // emulation test runs the same launches under AddressSanitizer).
            unsafe { builder.launch(config(grid)) }.w()?;
            Ok(())
        }

        fn gemm(&self, g: &Gemm, a: &DevBuf<'a>, b: &DevBuf<'a>, c: &mut DevBuf<'a>) -> Result<()> {
            g.check("gemm", (a.len(), b.len(), c.len()))?;
            if g.batch == 0 || g.m == 0 || g.n == 0 {
                return Ok(());
            }
            let int = |v: usize| {
                i32::try_from(v).map_err(|_| {
                    candle_core::Error::Msg(format!("gemm: {v} is beyond cuBLAS's int"))
                })
            };
            let stream = self.dev.cuda_stream();
            // The guards live until the product is scheduled (they order other streams' uses; candle has one).
            let (a_ptr, _a_guard) = match a {
                DevBuf::View(v) => v.device_ptr(&stream),
                DevBuf::Owned(s) => s.device_ptr(&stream),
            };
            let (b_ptr, _b_guard) = match b {
                DevBuf::View(v) => v.device_ptr(&stream),
                DevBuf::Owned(s) => s.device_ptr(&stream),
            };
            let (c_ptr, _c_guard) = match c {
                DevBuf::Owned(s) => s.device_ptr_mut(&stream),
                DevBuf::View(_) => bail!("gemm: writes to an input"),
            };
            let at = |base: u64, offset: usize| base + 4 * offset as u64;
            let op = |t: bool| {
                if t {
                    cublas_sys::cublasOperation_t::CUBLAS_OP_T
                } else {
                    cublas_sys::cublasOperation_t::CUBLAS_OP_N
                }
            };
            let compute = if candle_core::cuda::gemm_reduced_precision_f32() {
                cublas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
            } else {
                cublas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F
            };
            let f32_type = cublas_sys::cudaDataType_t::CUDA_R_32F;
            let blas = self.dev.cublas_handle();
            // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: cuBLAS gets B first, n × m.
            // SAFETY: `check` above keeps every matrix of the batch inside its buffer; the pointers stay valid
            // until the product has run (the buffers outlive this call and the stream is candle's own).
            unsafe {
                cublas::gemm_strided_batched_ex(
                    *blas.handle(),
                    op(g.trans_b),
                    op(g.trans_a),
                    int(g.n)?,
                    int(g.m)?,
                    int(g.k)?,
                    &g.alpha as *const f32 as *const _,
                    at(b_ptr, g.b.offset) as *const _,
                    f32_type,
                    int(g.b.ld)?,
                    g.b.stride as i64,
                    at(a_ptr, g.a.offset) as *const _,
                    f32_type,
                    int(g.a.ld)?,
                    g.a.stride as i64,
                    &g.beta as *const f32 as *const _,
                    at(c_ptr, g.c.offset) as *mut _,
                    f32_type,
                    int(g.c.ld)?,
                    g.c.stride as i64,
                    int(g.batch)?,
                    compute,
                    cublas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
                )
            }
            .map_err(|e| candle_core::Error::Msg(format!("gemm: {e:?}")))?;
            Ok(())
        }
    }
}
