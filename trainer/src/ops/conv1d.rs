//! 1-D convolution on channels-last sequences (B, L, C), as unfold + one matrix product per group, for training
//! on the CPU and on CUDA GPUs (wav2vec 2.0's feature encoder and positional convolution).
//!
//! Why not candle's `conv1d`: in candle 0.11 its forward is right but its gradients are wrong (the kernel gradient
//! as soon as the batch or the input channels exceed 1, and the input gradient at stride 1 without padding), and a
//! height-1 `conv2d` fails on shape in its backward. The composed version ([`composed`]: zero-padding with
//! `cat`, k `narrow`s and reshapes) is correct but slow on wav2vec2's big feature maps (k copies of the input
//! forward, and the backward of every `narrow`/`cat` pads and sums full-size tensors). Here the whole convolution
//! (and the GELU after it, when asked) is one custom op with its own backward: patches are extracted block by
//! block and multiplied by candle's GEMM on plain tensors, and the backward is the matching products plus a
//! gather-sum of the patch gradients onto the input (see [`Conv1dOp`]).
//!
//! Channels-last is the layout that makes the patches cheap: for one output step the k input steps it reads are
//! k consecutive rows of C values, one memcpy per kernel position, and the product's output (B·T, C_out) already
//! is the next layer's channels-last input — no transposes of full-size tensors anywhere in the feature encoder.
//!
//! `cols[g, b·T + t, j·C_g + c] = x[b, t·s − p + j, g·C_g + c]` (0 outside), then per group
//! `y_g = cols_g · W_gᵀ` with `W_g[o, j·C_g + c] = w[g·O_g + o, c, j]` (PyTorch's (C_out, C_in/groups, k) weight).
//!
//! CUDA (`kernels/conv1d.cu` + cuBLAS, [`forward_on`] / [`backward_on`], written once against [`Exec`] so that
//! the emulation test runs the very launches and products the GPU gets): chunks of whole batch elements, at most
//! [`CUDA_WORKSPACE`] column values at a time (always at least one element). Per chunk `conv1d_columns` writes
//! every group's columns, then ONE product batched over the groups writes `z = cols_g · W_gᵀ` straight into the
//! (B·T, C_out) output at column g·O_g with row stride C_out — no transposes, no concatenation. The backward is a
//! second op on (x, w, ∂z) returning `[∂x | ∂w]`: per chunk the columns again, `∂W_g (+)= ∂z_gᵀ · cols_g` (β = 1
//! after the first chunk), `∂cols_g = ∂z_g · W_g` over the columns, and `conv1d_gather`, whose every ∂x element
//! sums the column gradients copied from it in a fixed order (no atomics: deterministic) — whole batch elements
//! per chunk make that a plain write of complete ∂x rows. The padding is the kernels' bounds (the generic path's
//! zero `cat` around x, and its k strided copies, never exist: for wav2vec2's positional conv, k = 128, they were
//! 128 copies of the input). GELU is not fused on a GPU: the convolution is products, and [`super::gelu_erf`]'s
//! kernel follows it (one pass each way; candle's `gelu_erf` would cost ~8 full-size ops backward).

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::cuda::{self, Arg, Exec, Gemm, Operand};
use super::gelu::{gelu, gelu_grad};
use super::{with_cpu_f32, Kernel};
use crate::error::{Error, Result};

/// Values per block of columns (16 MB): the patches are built, multiplied and dropped one block at a time.
const BLOCK_VALUES: usize = 4 << 20;

/// Column values per chunk of the CUDA body (256 MB; a chunk holds at least one batch element, however large):
/// wav2vec2's second layer (2 × 14 999 steps × 3·512) fits in one chunk, the positional conv (k = 128, 768
/// channels) takes one batch element per chunk.
pub const CUDA_WORKSPACE: usize = 64 << 20;

thread_local! {
    /// [`BLOCK_VALUES`], lowered by tests to exercise several blocks on small inputs.
    static BLOCK_VALUES_IN_USE: std::cell::Cell<usize> = const { std::cell::Cell::new(BLOCK_VALUES) };
}

/// One convolution (optionally followed by GELU) over a channels-last x (B, L, C) with the weight rearranged to
/// (groups, O_g, k·C_g), as one graph node. The columns never exist whole: per group, per batch element and per
/// block of output steps they are built, multiplied by the weight (candle's GEMM on plain tensors) and dropped, and
/// the backward rebuilds them. That keeps the memory a block (the positional conv's full columns are 368 MB at
/// the bench size), and keeps candle's backward from allocating, zeroing and summing full-size gradient tensors
/// for every intermediate (columns, product, reshape, activation).
struct Conv1dOp {
    kernel: usize,
    stride: usize,
    padding: usize,
    groups: usize,
    t_out: usize,
    gelu: bool,
    /// Values per block of columns ([`BLOCK_VALUES`]; small in tests, to cross block boundaries).
    block_values: usize,
    /// The pre-activation output, kept by the forward for the GELU backward.
    pre_activation: Mutex<Vec<f32>>,
}

impl Conv1dOp {
    /// The convolution's shapes for an x of shape `x` and a rearranged weight of shape `w`.
    fn shape(&self, x: &Shape, w: &Shape) -> candle_core::Result<Conv1dShape> {
        let shape = Conv1dShape::new(
            x.dims3()?,
            w.dims3()?,
            self.kernel,
            self.stride,
            self.padding,
        )?;
        if shape.steps != self.t_out {
            candle_core::bail!(
                "conv1d: {shape:?} gives {} steps, not {}",
                shape.steps,
                self.t_out
            )
        }
        Ok(shape)
    }

    /// Output steps per block for columns of `row` values.
    fn block_steps(&self, row: usize) -> usize {
        (self.block_values / row.max(1)).clamp(1, self.t_out.max(1))
    }

    /// The columns of output steps `t0..t1` of batch element `b`, group `g`:
    /// `cols[t − t0, j·C_g + c] = x[b, t·s − p + j, g·C_g + c]` (0 outside).
    fn columns(
        &self,
        x: &[f32],
        (l, c): (usize, usize),
        b: usize,
        g: usize,
        (t0, t1): (usize, usize),
    ) -> Vec<f32> {
        let cg = c / self.groups;
        let row = self.kernel * cg;
        let mut cols = vec![0f32; (t1 - t0) * row];
        cols.par_chunks_mut(row)
            .enumerate()
            .with_min_len(16)
            .for_each(|(dt, out)| {
                for j in 0..self.kernel {
                    if let Some(i) = self.input_step(t0 + dt, j, l) {
                        let src = (b * l + i) * c + g * cg;
                        out[j * cg..(j + 1) * cg].copy_from_slice(&x[src..src + cg]);
                    }
                }
            });
        cols
    }

    /// The input step read by output step `t` at kernel position `j`, if inside the input.
    fn input_step(&self, t: usize, j: usize, l: usize) -> Option<usize> {
        (t * self.stride + j)
            .checked_sub(self.padding)
            .filter(|&i| i < l)
    }

    /// Visits every (group, batch element, block of output steps) in order.
    fn for_each_block(
        &self,
        b: usize,
        row: usize,
        mut f: impl FnMut(usize, usize, (usize, usize)) -> candle_core::Result<()>,
    ) -> candle_core::Result<()> {
        let steps = self.block_steps(row);
        for g in 0..self.groups {
            for bi in 0..b {
                let mut t0 = 0;
                while t0 < self.t_out {
                    let t1 = (t0 + steps).min(self.t_out);
                    f(g, bi, (t0, t1))?;
                    t0 = t1;
                }
            }
        }
        Ok(())
    }
}

fn cpu_tensor(values: Vec<f32>, shape: (usize, usize)) -> candle_core::Result<Tensor> {
    Tensor::from_vec(values, shape, &candle_core::Device::Cpu)
}

impl CustomOp2 for Conv1dOp {
    fn name(&self) -> &'static str {
        "conv1d-channels-last"
    }

    fn cpu_fwd(
        &self,
        x_storage: &CpuStorage,
        x_layout: &Layout,
        w_storage: &CpuStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, l, c) = x_layout.shape().dims3()?;
        let (groups, o_g, row) = w_layout.shape().dims3()?;
        let x = super::contiguous_f32(x_storage, x_layout, "conv1d")?;
        let w = super::contiguous_f32(w_storage, w_layout, "conv1d weight")?;
        let c_out = groups * o_g;
        let t_out = self.t_out;
        let mut z = vec![0f32; b * t_out * c_out];
        let weights = (0..groups)
            .map(|g| cpu_tensor(w[g * o_g * row..(g + 1) * o_g * row].to_vec(), (o_g, row)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        self.for_each_block(b, row, |g, bi, (t0, t1)| {
            let cols = cpu_tensor(self.columns(x, (l, c), bi, g, (t0, t1)), (t1 - t0, row))?;
            let out = cols.matmul(&weights[g].t()?)?; // (t1 − t0, O_g)
            with_cpu_f32(&out, "conv1d", |out| {
                let dst = &mut z[(bi * t_out + t0) * c_out..(bi * t_out + t1) * c_out];
                if groups == 1 {
                    dst.copy_from_slice(out);
                } else {
                    for (dst, src) in dst.chunks_mut(c_out).zip(out.chunks(o_g)) {
                        dst[g * o_g..(g + 1) * o_g].copy_from_slice(src);
                    }
                }
            })
        })?;
        let y = if self.gelu {
            let mut y = vec![0f32; z.len()];
            y.par_chunks_mut(1 << 14)
                .zip(z.par_chunks(1 << 14))
                .for_each(|(y, z)| {
                    for (y, &z) in y.iter_mut().zip(z) {
                        *y = gelu(z);
                    }
                });
            *self
                .pre_activation
                .lock()
                .map_err(|_| candle_core::Error::Msg("conv1d pre-activation poisoned".into()))? = z;
            y
        } else {
            z
        };
        Ok((CpuStorage::F32(y), Shape::from((b, t_out, c_out))))
    }

    /// The convolution alone (the op never fuses GELU here: [`fused`] applies [`super::gelu_erf`] after it).
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
        w: &candle_core::CudaStorage,
        w_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::CudaExec;
        use candle_core::backend::BackendStorage;
        if self.gelu {
            candle_core::bail!(
                "conv1d: the CUDA body does not fuse GELU (ops::conv1d applies gelu_erf after it)"
            )
        }
        let shape = self.shape(x_layout.shape(), w_layout.shape())?;
        let exec = CudaExec::new(x.device());
        let (xb, wb) = (
            CudaExec::input(x, x_layout, "conv1d")?,
            CudaExec::input(w, w_layout, "conv1d weight")?,
        );
        let z = forward_on(&exec, &xb, &wb, &shape, CUDA_WORKSPACE)?;
        Ok((
            exec.into_storage(z, "conv1d")?,
            Shape::from((shape.batch, shape.steps, shape.c_out())),
        ))
    }

    /// Per block: `∂L/∂cols = ∂L/∂z · W_g`, gathered back onto the input steps each column entry was copied from,
    /// and `∂L/∂W_g += ∂L/∂zᵀ · cols` (columns rebuilt from x), with `∂L/∂z = ∂L/∂y ⊙ GELU′(z)` when fused.
    fn bwd(
        &self,
        x_t: &Tensor,
        w_t: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        if x_t.device().is_cuda() {
            // The first layer's input is data: no ∂x (nor ∂cols) to compute.
            let input_grad = x_t.track_op();
            let op = Conv1dGrad {
                shape: self.shape(x_t.shape(), w_t.shape())?,
                input_grad,
            };
            let packed = x_t.apply_op3_no_bwd(w_t, &grad_res.contiguous()?, &op)?;
            let len_x = if input_grad { x_t.elem_count() } else { 0 };
            let grad_x = if input_grad {
                Some(packed.narrow(0, 0, len_x)?.reshape(x_t.shape())?)
            } else {
                None
            };
            let grad_w = packed
                .narrow(0, len_x, w_t.elem_count())?
                .reshape(w_t.shape())?;
            return Ok((grad_x, Some(grad_w)));
        }
        let (b, l, c) = x_t.dims3()?;
        let (groups, o_g, row) = w_t.dims3()?;
        let (k, s, p, t_out) = (self.kernel, self.stride, self.padding, self.t_out);
        let (cg, c_out) = (c / groups, groups * o_g);
        let grad_z: Vec<f32> = with_cpu_f32(grad_res, "conv1d backward", |g| {
            if !self.gelu {
                return Ok(g.to_vec());
            }
            let z = self
                .pre_activation
                .lock()
                .map_err(|_| candle_core::Error::Msg("conv1d pre-activation poisoned".into()))?;
            if z.len() != g.len() {
                candle_core::bail!("conv1d backward: the forward kept no pre-activation");
            }
            let mut out = vec![0f32; g.len()];
            out.par_chunks_mut(1 << 14)
                .zip(g.par_chunks(1 << 14).zip(z.par_chunks(1 << 14)))
                .for_each(|(o, (g, z))| {
                    for ((o, &g), &z) in o.iter_mut().zip(g).zip(z) {
                        *o = g * gelu_grad(z);
                    }
                });
            Ok(out)
        })??;
        let grad_z = cpu_tensor(grad_z, (b * t_out, c_out))?;
        // The first layer's input is data: no gradient to gather (and no patch gradients to multiply out).
        let input_grad = x_t.track_op();
        let mut grad_x = vec![0f32; if input_grad { b * l * c } else { 0 }];
        let mut grad_w = vec![0f32; groups * o_g * row];
        let weights = with_cpu_f32(w_t, "conv1d backward", |w| {
            (0..groups)
                .map(|g| cpu_tensor(w[g * o_g * row..(g + 1) * o_g * row].to_vec(), (o_g, row)))
                .collect::<candle_core::Result<Vec<_>>>()
        })??;
        with_cpu_f32(x_t, "conv1d backward", |x| {
            self.for_each_block(b, row, |g, bi, (t0, t1)| {
                let n = t1 - t0;
                let gz = grad_z.narrow(0, bi * t_out + t0, n)?; // (n, C_out), a view
                let gz = if groups == 1 {
                    gz
                } else {
                    gz.narrow(1, g * o_g, o_g)?.contiguous()?
                };
                let cols = cpu_tensor(self.columns(x, (l, c), bi, g, (t0, t1)), (n, row))?;
                let gw = gz.t()?.matmul(&cols)?; // (O_g, k·C_g)
                with_cpu_f32(&gw, "conv1d backward", |gw| {
                    for (acc, &v) in grad_w[g * o_g * row..(g + 1) * o_g * row]
                        .iter_mut()
                        .zip(gw)
                    {
                        *acc += v;
                    }
                })?;
                drop(cols);
                if !input_grad {
                    return Ok(());
                }
                let gcols = gz.matmul(&weights[g])?; // (n, k·C_g)
                with_cpu_f32(&gcols, "conv1d backward", |gcols| {
                    // the input steps this block read, each summing the entries copied from it
                    let i_lo = (t0 * s).saturating_sub(p);
                    let i_hi = ((t1 - 1) * s + k).saturating_sub(p).min(l);
                    if i_lo >= i_hi {
                        return;
                    }
                    let rows = &mut grad_x[(bi * l + i_lo) * c..(bi * l + i_hi) * c];
                    rows.par_chunks_mut(c)
                        .enumerate()
                        .with_min_len(16)
                        .for_each(|(di, out)| {
                            let ip = i_lo + di + p;
                            // output steps t in t0..t1 with 0 ≤ ip − t·s < k
                            let lo = if ip + 1 >= k {
                                (ip + 1 - k).div_ceil(s)
                            } else {
                                0
                            }
                            .max(t0);
                            let hi = (ip / s + 1).min(t1);
                            for t in lo..hi {
                                let j = ip - t * s;
                                let src =
                                    &gcols[(t - t0) * row + j * cg..(t - t0) * row + (j + 1) * cg];
                                for (o, &v) in out[g * cg..(g + 1) * cg].iter_mut().zip(src) {
                                    *o += v;
                                }
                            }
                        });
                })
            })
        })??;
        let grad_x = if input_grad {
            Some(Tensor::from_vec(grad_x, (b, l, c), x_t.device())?)
        } else {
            None
        };
        Ok((
            grad_x,
            Some(Tensor::from_vec(grad_w, (groups, o_g, row), w_t.device())?),
        ))
    }
}

/// The backward on a GPU: (x, rearranged w, ∂L/∂z) → `[∂x | ∂w]` flat (`[∂w]` without `input_grad`), by
/// [`backward_on`].
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct Conv1dGrad {
    shape: Conv1dShape,
    /// Whether x needs a gradient (not the first layer's, whose input is the waveform).
    input_grad: bool,
}

impl candle_core::CustomOp3 for Conv1dGrad {
    fn name(&self) -> &'static str {
        "conv1d-channels-last-grad"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!(
            "conv1d-channels-last-grad runs on CUDA only (the CPU backward is the op's bwd)"
        )
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
        w: &candle_core::CudaStorage,
        w_layout: &Layout,
        grad: &candle_core::CudaStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::CudaExec;
        use candle_core::backend::BackendStorage;
        const OP: &str = "conv1d backward";
        let exec = CudaExec::new(x.device());
        let (xb, wb, gb) = (
            CudaExec::input(x, x_layout, OP)?,
            CudaExec::input(w, w_layout, OP)?,
            CudaExec::input(grad, grad_layout, OP)?,
        );
        let packed = backward_on(
            &exec,
            (&xb, &wb, &gb),
            &self.shape,
            CUDA_WORKSPACE,
            self.input_grad,
        )?;
        let len = exec.len(&packed);
        Ok((exec.into_storage(packed, OP)?, Shape::from(len)))
    }
}

/// The shapes of one convolution as the CUDA body reads them: x (B, L, C) channels-last, the weight rearranged to
/// (groups, O_g, k·C_g), T output steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv1dShape {
    pub batch: usize,
    pub length: usize,
    pub channels: usize,
    pub groups: usize,
    /// O_g: output channels per group.
    pub out_per_group: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    /// T = ⌊(L + 2p − k)/s⌋ + 1.
    pub steps: usize,
}

impl Conv1dShape {
    /// From x's (B, L, C), the rearranged weight's (groups, O_g, k·C_g), the kernel size, stride and padding; an
    /// error naming them when they do not fit together.
    pub fn new(
        (batch, length, channels): (usize, usize, usize),
        (groups, out_per_group, row): (usize, usize, usize),
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> candle_core::Result<Conv1dShape> {
        if groups == 0
            || stride == 0
            || kernel == 0
            || !channels.is_multiple_of(groups)
            || row != kernel * (channels / groups)
            || length + 2 * padding < kernel
        {
            candle_core::bail!(
                "conv1d: input ({batch}, {length}, {channels}), weight ({groups}, {out_per_group}, {row}), kernel \
                 {kernel}, stride {stride}, padding {padding} do not fit"
            )
        }
        Ok(Conv1dShape {
            batch,
            length,
            channels,
            groups,
            out_per_group,
            kernel,
            stride,
            padding,
            steps: (length + 2 * padding - kernel) / stride + 1,
        })
    }

    /// C_g: input channels per group.
    pub fn group_channels(&self) -> usize {
        self.channels / self.groups
    }

    /// k·C_g: the length of a row of columns (and of the weight).
    pub fn row(&self) -> usize {
        self.kernel * self.group_channels()
    }

    pub fn c_out(&self) -> usize {
        self.groups * self.out_per_group
    }

    /// The chunks `(first batch element, elements)` of whole batch elements whose columns (all groups) fit
    /// `workspace` values, at least one element each.
    pub fn chunks(&self, workspace: usize) -> Vec<(usize, usize)> {
        let per_element = (self.steps * self.row() * self.groups).max(1);
        let size = (workspace / per_element).clamp(1, self.batch.max(1));
        (0..self.batch)
            .step_by(size)
            .map(|b0| (b0, size.min(self.batch - b0)))
            .collect()
    }

    /// An error unless the kernels' 32-bit indices cover a chunk of `nb` batch elements: its columns per group,
    /// its ∂x per group and its slice of x.
    fn check_chunk(&self, nb: usize) -> candle_core::Result<()> {
        const OP: &str = "conv1d";
        cuda::to_u32_indexed(nb * self.steps * self.row(), OP)?;
        cuda::to_u32_indexed(nb * self.length * self.group_channels(), OP)?;
        cuda::to_u32(nb * self.length * self.channels, OP)?;
        cuda::to_u32(self.length + 2 * self.padding, OP)?;
        Ok(())
    }
}

/// Which way `kernels/conv1d.cu` moves values between x and the columns of a chunk.
#[derive(Debug, Clone, Copy)]
enum Move {
    /// `conv1d_columns`: x → columns.
    Columns,
    /// `conv1d_gather`: column gradients → ∂x, each element summing the entries copied from it.
    Gather,
}

/// `how`'s kernel for the chunk `(b0, nb)` from `src` into `dst`: every group, one plane each.
fn move_columns<E: Exec>(
    exec: &E,
    how: Move,
    (src, dst): (&E::Buf, &mut E::Buf),
    s: &Conv1dShape,
    (b0, nb): (usize, usize),
) -> candle_core::Result<()> {
    const OP: &str = "conv1d";
    // the positions of a plane: a group's columns, or a group's channels of the chunk's ∂x rows
    let (kernel, per_group) = match how {
        Move::Columns => ("conv1d_columns", nb * s.steps * s.row()),
        Move::Gather => ("conv1d_gather", nb * s.length * s.group_channels()),
    };
    let x0 = (b0 * s.length * s.channels) as u64;
    let dims = [
        cuda::to_u32(nb, OP)?,
        cuda::to_u32(s.length, OP)?,
        cuda::to_u32(s.channels, OP)?,
        cuda::to_u32(s.group_channels(), OP)?,
        cuda::to_u32(s.steps, OP)?,
        cuda::to_u32(s.kernel, OP)?,
        cuda::to_u32(s.stride, OP)?,
        cuda::to_u32(s.padding, OP)?,
    ];
    for (y0, grid) in
        cuda::plane_launches(cuda::elementwise(per_group), s.groups, cuda::MAX_GRID_Y)?
    {
        // conv1d_columns(const float* x, float* cols, …) / conv1d_gather(const float* dcols, float* dx, …), then
        // (unsigned long long x0, unsigned nb, unsigned l, unsigned c, unsigned cg, unsigned t, unsigned k,
        //  unsigned s, unsigned p, unsigned y0)
        let mut args = vec![Arg::In(src), Arg::Out(&mut *dst), Arg::U64(x0)];
        args.extend(dims.iter().map(|&d| Arg::U32(d)));
        args.push(Arg::U32(y0));
        exec.launch(&cuda::CONV1D, kernel, grid, &mut args)?;
    }
    Ok(())
}

/// The forward on an [`Exec`] device: x (B, L, C) and the rearranged weight (groups, O_g, k·C_g) →
/// z (B·T, C_out). Per chunk of whole batch elements (columns of at most `workspace` values): the columns of every
/// group, then one product batched over the groups, `z[b·T + t, g·O_g + o] = Σ cols_g[b·T + t, ·]·W_g[o, ·]`,
/// written in place in z (row stride C_out, group g at column g·O_g).
pub fn forward_on<E: Exec>(
    exec: &E,
    x: &E::Buf,
    w: &E::Buf,
    s: &Conv1dShape,
    workspace: usize,
) -> candle_core::Result<E::Buf> {
    let (t, row, o_g, c_out) = (s.steps, s.row(), s.out_per_group, s.c_out());
    let chunks = s.chunks(workspace);
    let largest = chunks.first().map_or(0, |c| c.1);
    s.check_chunk(largest)?;
    let mut z = exec.alloc(s.batch * t * c_out)?;
    let mut cols = exec.alloc(s.groups * largest * t * row)?;
    for (b0, nb) in chunks {
        move_columns(exec, Move::Columns, (x, &mut cols), s, (b0, nb))?;
        let product = Gemm {
            trans_b: true,
            batch: s.groups,
            ..Gemm::new(
                nb * t,
                o_g,
                row,
                Operand::at(0, row).strided(nb * t * row),
                Operand::at(0, row).strided(o_g * row),
                Operand::at(b0 * t * c_out, c_out).strided(o_g),
            )
        };
        exec.gemm(&product, &cols, w, &mut z)?;
    }
    Ok(z)
}

/// The backward on an [`Exec`] device: (x, rearranged w, ∂z (B·T, C_out)) → `[∂x | ∂w]` flat, or `[∂w]` when
/// x needs no gradient. Per chunk of whole batch elements: the columns again; `∂W_g (+)= ∂z_gᵀ·cols_g` (one
/// product batched over the groups, β = 1 after the first chunk); then, for ∂x, `∂cols_g = ∂z_g·W_g` written over
/// the columns and gathered onto the chunk's rows of ∂x (each element summing the entries copied from it).
pub fn backward_on<E: Exec>(
    exec: &E,
    (x, w, grad_z): (&E::Buf, &E::Buf, &E::Buf),
    s: &Conv1dShape,
    workspace: usize,
    input_grad: bool,
) -> candle_core::Result<E::Buf> {
    let (t, row, o_g, c_out) = (s.steps, s.row(), s.out_per_group, s.c_out());
    let chunks = s.chunks(workspace);
    let largest = chunks.first().map_or(0, |c| c.1);
    s.check_chunk(largest)?;
    let len_x = if input_grad {
        s.batch * s.length * s.channels
    } else {
        0
    };
    let mut out = exec.alloc(len_x + s.groups * o_g * row)?;
    let mut cols = exec.alloc(s.groups * largest * t * row)?;
    for (i, &(b0, nb)) in chunks.iter().enumerate() {
        // ∂z_g of the chunk: rows b0·T …, columns g·O_g …
        let grad_g = Operand::at(b0 * t * c_out, c_out).strided(o_g);
        let cols_g = Operand::at(0, row).strided(nb * t * row);
        move_columns(exec, Move::Columns, (x, &mut cols), s, (b0, nb))?;
        let grad_w = Gemm {
            trans_a: true,
            beta: if i == 0 { 0.0 } else { 1.0 },
            batch: s.groups,
            ..Gemm::new(
                o_g,
                row,
                nb * t,
                grad_g,
                cols_g,
                Operand::at(len_x, row).strided(o_g * row),
            )
        };
        exec.gemm(&grad_w, grad_z, &cols, &mut out)?;
        if input_grad {
            let grad_cols = Gemm {
                batch: s.groups,
                ..Gemm::new(
                    nb * t,
                    row,
                    o_g,
                    grad_g,
                    Operand::at(0, row).strided(o_g * row),
                    cols_g,
                )
            };
            exec.gemm(&grad_cols, grad_z, w, &mut cols)?;
            move_columns(exec, Move::Gather, (&cols, &mut out), s, (b0, nb))?;
        }
    }
    Ok(out)
}

fn check(
    x_dims: &[usize],
    w_dims: &[usize],
    groups: usize,
    padding: usize,
) -> Result<(usize, usize, usize)> {
    let bad = || {
        Error::Other(format!(
            "conv1d: input {x_dims:?}, kernel {w_dims:?}, groups {groups}, padding {padding} do not fit"
        ))
    };
    let (&[_, _, _], &[c_out, c_in_g, k]) = (x_dims, w_dims) else {
        return Err(bad());
    };
    Ok((c_out, c_in_g, k))
}

/// Convolution of a channels-last x (B, L, C_in) with a bias-free weight (C_out, C_in/groups, k) → (B, T, C_out),
/// `T = ⌊(L + 2p − k)/s⌋ + 1`, followed by GELU (erf) when `gelu` (fused into the same node by the CPU kernel,
/// `ops::gelu_erf`'s kernel after the CUDA body).
pub fn conv1d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    groups: usize,
    gelu: bool,
) -> Result<Tensor> {
    let (_, l, c_in) = x.dims3()?;
    let (c_out, c_in_g, k) = check(x.dims(), w.dims(), groups, padding)?;
    if groups == 0
        || stride == 0
        || c_in != c_in_g * groups
        || !c_out.is_multiple_of(groups)
        || l + 2 * padding < k
    {
        return Err(Error::Other(format!(
            "conv1d: input {:?}, kernel {:?}, groups {groups}, stride {stride}, padding {padding} do not fit",
            x.dims(),
            w.dims()
        )));
    }
    match Kernel::select(x, true) {
        Kernel::Generic => generic(x, w, stride, padding, groups, gelu),
        _ => fused(x, w, stride, padding, groups, gelu),
    }
}

/// [`composed`] between transposes, and [`super::gelu_erf`] (whose backward is one kernel pass where it has one,
/// not candle's ~8 full-size ops).
pub(crate) fn generic(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    groups: usize,
    gelu: bool,
) -> Result<Tensor> {
    let y = composed(&x.transpose(1, 2)?, w, stride, padding, groups)?;
    let y = if gelu { super::gelu_erf(&y)? } else { y };
    Ok(y.transpose(1, 2)?)
}

/// The kernel (shapes checked by [`conv1d`]): the op, with GELU fused into it on the CPU and applied after it by
/// [`super::gelu_erf`] elsewhere (the CUDA body's output comes from a product, not from a pass GELU could join).
pub(crate) fn fused(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    groups: usize,
    gelu: bool,
) -> Result<Tensor> {
    let (_, l, _) = x.dims3()?;
    let k = w.dim(2)?;
    let t = (l + 2 * padding - k) / stride + 1;
    let fuse_gelu = gelu && x.device().is_cpu();
    let op = Conv1dOp {
        kernel: k,
        stride,
        padding,
        groups,
        t_out: t,
        gelu: fuse_gelu,
        block_values: BLOCK_VALUES_IN_USE.with(|b| b.get()),
        pre_activation: Mutex::new(Vec::new()),
    };
    let y = x
        .contiguous()?
        .apply_op2(&rearranged_weight(w, groups)?, op)?;
    if gelu && !fuse_gelu {
        super::gelu_erf(&y)
    } else {
        Ok(y)
    }
}

/// PyTorch's weight (C_out, C_g, k) → (groups, O_g, k·C_g), in the columns' (j, c) order (small next to the
/// activations). The op's gradient of it comes back through the same tensor ops.
pub fn rearranged_weight(w: &Tensor, groups: usize) -> Result<Tensor> {
    let (c_out, c_in_g, k) = w.dims3()?;
    Ok(w.permute((0, 2, 1))?
        .contiguous()?
        .reshape((groups, c_out / groups, k * c_in_g))?)
}

/// The same convolution on a channels-first x (B, C_in, L) → (B, C_out, T), composed of ops whose backward candle
/// gets right: zero-padding with `cat`, columns gathered with `narrow` and a reshape that picks every `stride`-th
/// step, one matmul per group. The device-independent path (and the reference the custom op is tested against).
fn composed(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    groups: usize,
) -> Result<Tensor> {
    let (b, c_in, l) = x.dims3()?;
    let (c_out, c_in_g, k) = w.dims3()?;
    if c_in != c_in_g * groups || !c_out.is_multiple_of(groups) || l + 2 * padding < k {
        return Err(Error::Other(format!(
            "conv1d: input {:?}, kernel {:?}, groups {groups}, padding {padding} do not fit",
            x.dims(),
            w.dims()
        )));
    }
    let t = (l + 2 * padding - k) / stride + 1;
    // Zero-pad on the left by `padding` and on the right far enough that every column fits a reshape by stride.
    let total = (k - 1 + stride * t).max(l + 2 * padding);
    let right = total - padding - l;
    let zeros = |n: usize| Tensor::zeros((b, c_in, n), x.dtype(), x.device());
    let mut parts = Vec::new();
    if padding > 0 {
        parts.push(zeros(padding)?);
    }
    parts.push(x.clone());
    if right > 0 {
        parts.push(zeros(right)?);
    }
    let x = if parts.len() == 1 {
        x.clone()
    } else {
        Tensor::cat(&parts, 2)?
    };
    let columns = (0..k)
        .map(|j| -> Result<Tensor> {
            let window = x.narrow(2, j, stride * t)?;
            Ok(if stride == 1 {
                window.unsqueeze(3)?
            } else {
                window.reshape((b, c_in, t, stride))?.narrow(3, 0, 1)?
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let columns = Tensor::cat(&columns, 3)?; // (b, c_in, t, k)
    let cols = columns
        .reshape((b, groups, c_in_g, t, k))?
        .permute((1, 0, 3, 2, 4))?
        .contiguous()?
        .reshape((groups, b * t, c_in_g * k))?;
    let c_out_g = c_out / groups;
    let w = w
        .reshape((groups, c_out_g, c_in_g * k))?
        .transpose(1, 2)?
        .contiguous()?;
    let y = cols.matmul(&w)?; // (groups, b·t, c_out_g)
    Ok(y.reshape((groups, b, t, c_out_g))?
        .permute((1, 0, 3, 2))?
        .reshape((b, c_out, t))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{grads_through, max_abs};
    use candle_core::{Device, Var};

    /// Values and gradients (input and kernel) against the composed version, itself checked against a
    /// brute-force sum below.
    #[test]
    fn matches_the_composed_convolution_forward_and_backward() {
        check_against_composed();
        // blocks of 5 output steps or fewer: every case crosses block boundaries
        BLOCK_VALUES_IN_USE.with(|b| b.set(60));
        check_against_composed();
        BLOCK_VALUES_IN_USE.with(|b| b.set(BLOCK_VALUES));
    }

    fn check_against_composed() {
        let dev = Device::Cpu;
        // (batch, c_in, c_out, length, kernel, stride, padding, groups)
        for (b, c_in, c_out, l, k, s, p, g) in [
            (2, 1, 4, 53, 10, 5, 0, 1),
            (3, 4, 6, 17, 3, 2, 0, 1),
            (2, 5, 3, 16, 2, 2, 0, 1),
            (2, 6, 4, 20, 3, 1, 1, 2),
            (2, 8, 8, 11, 4, 1, 2, 4),
            (1, 3, 2, 9, 3, 5, 2, 1),
            (2, 4, 4, 7, 7, 1, 0, 1),
        ] {
            let x =
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, l, c_in), &dev).unwrap()).unwrap();
            let w =
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (c_out, c_in / g, k), &dev).unwrap())
                    .unwrap();
            // fused GELU on every other case
            let with_gelu = k % 2 == 0;
            let ours = fused(x.as_tensor(), w.as_tensor(), s, p, g, with_gelu).unwrap();
            let reference = generic(x.as_tensor(), w.as_tensor(), s, p, g, with_gelu).unwrap();
            assert_eq!(ours.dims(), reference.dims());
            assert_eq!(ours.dim(1).unwrap(), (l + 2 * p - k) / s + 1);
            let case = format!("b{b} c{c_in}→{c_out} l{l} k{k} s{s} p{p} g{g}");
            assert!(max_abs(&(&ours - &reference).unwrap()) < 1e-4, "{case}");
            let upstream = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
            let g_ours = grads_through(&ours, &upstream);
            let g_ref = grads_through(&reference, &upstream);
            for v in [x.as_tensor(), w.as_tensor()] {
                let (a, r) = (g_ours.get(v).unwrap(), g_ref.get(v).unwrap());
                assert_eq!(a.dims(), v.dims());
                assert!(max_abs(&(a - r).unwrap()) < 1e-4, "{case}");
                assert!(max_abs(a) > 0.1, "{case}: a real gradient");
            }
        }
    }

    /// Both versions against the definition, `y[b, t, o] = Σ_{c, j} x[b, t·s − p + j, c] · w[o, c, j]`
    /// (one group), values and the kernel gradient (which candle's own conv1d gets wrong).
    #[test]
    fn both_convolutions_match_the_definition() {
        for composed in [false, true] {
            check_definition(composed);
        }
    }

    fn check_definition(composed: bool) {
        let dev = Device::Cpu;
        let (b, c_in, c_out, l, k, s, p) = (2, 3, 2, 12, 3, 2, 1);
        let xv: Vec<f32> = (0..b * l * c_in)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0)
            .collect();
        let wv: Vec<f32> = (0..c_out * c_in * k)
            .map(|i| ((i * 5 % 7) as f32 - 3.0) / 3.0)
            .collect();
        let x = Tensor::from_vec(xv.clone(), (b, l, c_in), &dev).unwrap();
        let w = Var::from_tensor(&Tensor::from_vec(wv.clone(), (c_out, c_in, k), &dev).unwrap())
            .unwrap();
        let y = if composed {
            generic(&x, w.as_tensor(), s, p, 1, false)
                .unwrap()
                .contiguous()
                .unwrap()
        } else {
            fused(&x, w.as_tensor(), s, p, 1, false).unwrap()
        };
        let t = (l + 2 * p - k) / s + 1;
        let got = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut grad_w = vec![0f32; c_out * c_in * k];
        for bi in 0..b {
            for ti in 0..t {
                for o in 0..c_out {
                    let mut sum = 0f32;
                    for c in 0..c_in {
                        for j in 0..k {
                            let i = (ti * s + j) as isize - p as isize;
                            if i >= 0 && (i as usize) < l {
                                let xi = xv[(bi * l + i as usize) * c_in + c];
                                sum += xi * wv[(o * c_in + c) * k + j];
                                grad_w[(o * c_in + c) * k + j] += xi; // ∂(Σ y)/∂w
                            }
                        }
                    }
                    assert!((got[(bi * t + ti) * c_out + o] - sum).abs() < 1e-5);
                }
            }
        }
        let grads = y.sum_all().unwrap().backward().unwrap();
        let ours = grads
            .get(w.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (a, e) in ours.iter().zip(&grad_w) {
            assert!((a - e).abs() < 1e-4, "{a} vs {e}");
        }
    }
}
