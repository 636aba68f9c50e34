//! 2-D convolution of x (B, C, H, W) with a bias-free square kernel (C_out, C, k, k) → (B, C_out, H', W').
//!
//! candle 0.11's convolution backward runs a direct transposed convolution (slow on the CPU) and, for strided
//! convolutions of inputs whose height and width differ in parity, returns a gradient of the wrong shape (it
//! derives the transposed convolution's output padding from the height alone and applies it to the width too:
//! 256×721 at ResNet's stem). CPU kernel: im2col + matrix product — the patch extraction is a custom op whose
//! backward is the matching scatter-add (col2im), and everything else is a matrix product, whose forward and
//! backward candle runs on its GEMM kernels. Generic: candle's convolution on an input padded so that no
//! dimension needs an output padding in the backward pass (see [`generic`]).
//!
//! `cols[b, (oy, ox), (c, ky, kx)] = x[b, c, oy·s − p + ky, ox·s − p + kx]` (0 outside), then
//! `y = cols · Wᵀ` with W reshaped to (C_out, C·k·k) — the row-major layout of PyTorch's (C_out, C, k, k) weight.
//!
//! CUDA ([`cuda_body`], `kernels/conv2d.cu`): im2col + cuBLAS too, with the columns laid out so that no NCHW copy
//! is ever made. With L = H'·W' and CKK = C·k·k, images go in chunks of nb, as many as a bounded workspace holds
//! ([`cuda_body::WORKSPACE`]: the stem's columns are 6.8 M values per image, 1.7 GiB for a batch of 64), and a
//! chunk's columns are one (CKK, nb·L) matrix — row (c, ky, kx), then image, then position:
//!
//! * forward: `y_n = W · cols_n` (C_out × L) for every image of the chunk as one strided-batched GEMM whose
//!   operand n starts at column n·L of the columns (row stride nb·L) and whose output is y's NCHW image n itself;
//!   a 1×1/stride-1 convolution reads x as its own columns (no im2col);
//! * backward, a second op over (x, W, ∂y) returning `[∂x | ∂W]` packed: per chunk ∂y is reordered to
//!   (C_out, nb·L) so that `∂W += ∂y · colsᵀ` is ONE GEMM over the chunk's nb·L positions (β = 0 for the first
//!   chunk, then 1: deterministic, no atomics); then `∂cols_n = Wᵀ · ∂y_n` into the columns' buffer and a gather
//!   col2im — each input element adds the column entries that read it, in a fixed order, one write each — gives
//!   the chunk's ∂x. A 1×1/stride-1 convolution gets `∂x_n = Wᵀ · ∂y_n` written straight into NCHW.
//!
//! The body is written once against [`Exec`](super::cuda::Exec): the GPU runs it on cuBLAS, the CPU emulation
//! test (`trainer/tests/kernels_on_cpu`) runs the same launches and products with chunks of one and two images.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Device, Layout, Shape, Tensor};

use super::Kernel;
use crate::error::Result;

#[derive(Debug, Clone, Copy)]
struct Geometry {
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    padding: usize,
}

impl Geometry {
    fn out(&self, n: usize) -> usize {
        (n + 2 * self.padding - self.k) / self.stride + 1
    }

    /// Visits every (column index, input index) pair of one image's patches.
    fn for_each(&self, mut f: impl FnMut(usize, usize)) {
        let (oh, ow) = (self.out(self.h), self.out(self.w));
        let ckk = self.c * self.k * self.k;
        for oy in 0..oh {
            for ox in 0..ow {
                let row = (oy * ow + ox) * ckk;
                for c in 0..self.c {
                    for ky in 0..self.k {
                        let y = (oy * self.stride + ky) as isize - self.padding as isize;
                        if y < 0 || y as usize >= self.h {
                            continue;
                        }
                        for kx in 0..self.k {
                            let x = (ox * self.stride + kx) as isize - self.padding as isize;
                            if x < 0 || x as usize >= self.w {
                                continue;
                            }
                            f(
                                row + (c * self.k + ky) * self.k + kx,
                                (c * self.h + y as usize) * self.w + x as usize,
                            );
                        }
                    }
                }
            }
        }
    }
}

struct Im2Col {
    k: usize,
    stride: usize,
    padding: usize,
}

impl Im2Col {
    fn geometry(&self, c: usize, h: usize, w: usize) -> Geometry {
        Geometry {
            c,
            h,
            w,
            k: self.k,
            stride: self.stride,
            padding: self.padding,
        }
    }
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = layout.shape().dims4()?;
        let data = super::contiguous_f32(storage, layout, "im2col")?;
        let g = self.geometry(c, h, w);
        let l = g.out(h) * g.out(w);
        let ckk = c * self.k * self.k;
        let mut cols = vec![0f32; b * l * ckk];
        use rayon::prelude::*;
        cols.par_chunks_mut(l * ckk)
            .zip(data.par_chunks(c * h * w))
            .for_each(|(out, image)| g.for_each(|col, at| out[col] = image[at]));
        Ok((CpuStorage::F32(cols), Shape::from((b, l, ckk))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (b, c, h, w) = arg.dims4()?;
        let g = self.geometry(c, h, w);
        let l = g.out(h) * g.out(w);
        let ckk = c * self.k * self.k;
        let grad = grad_res
            .to_device(&Device::Cpu)?
            .contiguous()?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut grad_in = vec![0f32; b * c * h * w];
        use rayon::prelude::*;
        grad_in
            .par_chunks_mut(c * h * w)
            .zip(grad.par_chunks(l * ckk))
            .for_each(|(image, cols)| g.for_each(|col, at| image[at] += cols[col]));
        Ok(Some(Tensor::from_vec(grad_in, (b, c, h, w), arg.device())?))
    }
}

/// Convolution of x (B, C, H, W) with a bias-free weight (C_out, C, k, k), square kernel.
pub fn conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let (_, c, _, _) = x.dims4()?;
    let (_, cin, k, k2) = weight.dims4()?;
    if c != cin || k != k2 || stride == 0 {
        return Err(crate::error::Error::Other(format!(
            "conv2d: input {:?}, kernel {:?}, stride {stride} do not fit",
            x.dims(),
            weight.dims()
        )));
    }
    match Kernel::select(x, true) {
        Kernel::Generic => generic(x, weight, stride, padding),
        Kernel::Cpu => fused(x, weight, stride, padding),
        Kernel::Cuda => Ok(x
            .contiguous()?
            .apply_op2(&weight.contiguous()?, Conv2dCuda { stride, padding })?),
    }
}

/// The CUDA body as one graph node over (x, W): [`cuda_body::forward`]; its backward the [`Conv2dGrad`] node.
struct Conv2dCuda {
    stride: usize,
    padding: usize,
}

impl CustomOp2 for Conv2dCuda {
    fn name(&self) -> &'static str {
        "conv2d"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!(
            "the conv2d CUDA node runs on CUDA only (the CPU kernel is im2col + matmul)"
        )
    }

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
        const OP: &str = "conv2d";
        let conv = cuda_body::Conv::of(
            x_layout.shape(),
            w_layout.shape(),
            self.stride,
            self.padding,
        )?;
        let exec = CudaExec::new(x.device());
        let (xb, wb) = (
            CudaExec::input(x, x_layout, OP)?,
            CudaExec::input(w, w_layout, OP)?,
        );
        let y = cuda_body::forward(&exec, &xb, &wb, &conv, cuda_body::WORKSPACE)?;
        Ok((exec.into_storage(y, OP)?, Shape::from(&conv.output_dims())))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = Conv2dGrad {
            stride: self.stride,
            padding: self.padding,
        };
        let packed = x.apply_op3_no_bwd(w, &grad_res.contiguous()?, &grad)?;
        let len = x.elem_count();
        Ok((
            Some(packed.narrow(0, 0, len)?.reshape(x.shape())?),
            Some(packed.narrow(0, len, w.elem_count())?.reshape(w.shape())?),
        ))
    }
}

/// The backward on a GPU: (x, W, ∂L/∂y) → `[∂x | ∂W]` (flat), [`cuda_body::backward`].
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct Conv2dGrad {
    stride: usize,
    padding: usize,
}

impl CustomOp3 for Conv2dGrad {
    fn name(&self) -> &'static str {
        "conv2d-grad"
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
        candle_core::bail!("conv2d-grad runs on CUDA only (the CPU backward is the im2col op's)")
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
        const OP: &str = "conv2d backward";
        let conv = cuda_body::Conv::of(
            x_layout.shape(),
            w_layout.shape(),
            self.stride,
            self.padding,
        )?;
        if grad_layout.dims() != conv.output_dims() {
            candle_core::bail!(
                "{OP}: gradient {:?} for an output {:?}",
                grad_layout.dims(),
                conv.output_dims()
            );
        }
        let exec = CudaExec::new(x.device());
        let (xb, wb, gb) = (
            CudaExec::input(x, x_layout, OP)?,
            CudaExec::input(w, w_layout, OP)?,
            CudaExec::input(grad, grad_layout, OP)?,
        );
        let packed = cuda_body::backward(&exec, &xb, &wb, &gb, &conv, cuda_body::WORKSPACE)?;
        let len = x_layout.shape().elem_count() + w_layout.shape().elem_count();
        Ok((exec.into_storage(packed, OP)?, Shape::from(len)))
    }
}

/// candle's convolution, made exact in the backward: stride 1 never needs an output padding; for a strided one
/// the input is padded explicitly, plus one zero row/column where (n + 2p − k) is not a multiple of the stride,
/// so that every dimension needs no output padding, and the extra output row/column this creates is cut off.
pub(crate) fn generic(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    if stride == 1 {
        return Ok(x.conv2d(weight, padding, 1, 1, 1)?);
    }
    let (_, _, h, w) = x.dims4()?;
    let (_, _, k, _) = weight.dims4()?;
    let (p, s) = (padding, stride);
    let out = |n: usize| (n + 2 * p - k) / s + 1;
    let extra = |n: usize| (s - (n + 2 * p - k) % s) % s;
    let padded = x
        .pad_with_zeros(2, p, p + extra(h))?
        .pad_with_zeros(3, p, p + extra(w))?;
    let y = padded.conv2d(weight, 0, s, 1, 1)?;
    Ok(y.narrow(2, 0, out(h))?.narrow(3, 0, out(w))?)
}

/// The im2col kernel.
pub(crate) fn fused(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (cout, cin, k, _) = weight.dims4()?;
    let g = Geometry {
        c,
        h,
        w,
        k,
        stride,
        padding,
    };
    let (oh, ow) = (g.out(h), g.out(w));
    let cols = if k == 1 && stride == 1 && padding == 0 {
        // a 1×1 convolution is a matrix product over the pixels: (B, H·W, C)
        x.flatten_from(2)?.transpose(1, 2)?.contiguous()?
    } else {
        x.contiguous()?.apply_op1(Im2Col { k, stride, padding })?
    };
    let ckk = cin * k * k;
    let y = cols
        .reshape((b * oh * ow, ckk))?
        .matmul(&weight.reshape((cout, ckk))?.t()?)?; // (B·L, C_out)
    Ok(y.reshape((b, oh * ow, cout))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, cout, oh, ow))?)
}

/// The CUDA body, written once against [`Exec`]: the GPU runs it through `CudaExec` (kernels from
/// `kernels/conv2d.cu`, products on cuBLAS), the emulation test through its CPU emulator. The plan is the module
/// doc's; the kernels' layouts are `conv2d.cu`'s.
pub mod cuda_body {
    use candle_core::{bail, Result, Shape};

    use crate::ops::cuda::{elementwise, to_u32, Arg, Exec, Gemm, Operand, CONV2D};

    /// Default workspace of the body in f32 values (256 MiB): a chunk's columns, and in the backward its ∂y
    /// reordered. A chunk holds at least one image whatever the bound.
    pub const WORKSPACE: usize = 64 << 20;

    const OP: &str = "conv2d";

    /// The sizes of one convolution, checked to fit the kernels' 32-bit indices: x (batch, c, h, w), W (c_out,
    /// c, k, k), stride, padding.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Conv {
        batch: usize,
        c: usize,
        h: usize,
        w: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: usize,
    }

    impl Conv {
        /// The convolution of an x of shape `x` by a weight of shape `w`; an error for shapes that do not fit
        /// each other, an empty output, or an image whose columns pass 2³² − 1 values.
        pub fn of(x: &Shape, w: &Shape, stride: usize, padding: usize) -> Result<Conv> {
            let (batch, c, h, width) = x.dims4()?;
            let (c_out, cin, k, k2) = w.dims4()?;
            let conv = Conv {
                batch,
                c,
                h,
                w: width,
                c_out,
                k,
                stride,
                padding,
            };
            let sizes = [batch, c, h, width, c_out, k, stride];
            if cin != c
                || k != k2
                || sizes.contains(&0)
                || h + 2 * padding < k
                || width + 2 * padding < k
            {
                bail!("{OP}: input {x:?}, kernel {w:?}, stride {stride}, padding {padding} do not fit")
            }
            for n in [
                c * h * width,
                conv.patch() * conv.positions(),
                c_out * conv.positions(),
            ] {
                to_u32(n, OP)?;
            }
            Ok(conv)
        }

        fn out(&self, n: usize) -> usize {
            (n + 2 * self.padding - self.k) / self.stride + 1
        }

        /// y's dimensions: (batch, c_out, H', W').
        pub fn output_dims(&self) -> [usize; 4] {
            [self.batch, self.c_out, self.out(self.h), self.out(self.w)]
        }

        /// L: output positions per image.
        fn positions(&self) -> usize {
            self.out(self.h) * self.out(self.w)
        }

        /// CKK: values per patch.
        fn patch(&self) -> usize {
            self.c * self.k * self.k
        }

        /// 1×1, stride 1, no padding: an image is its own column matrix.
        fn pointwise(&self) -> bool {
            self.k == 1 && self.stride == 1 && self.padding == 0
        }

        /// Workspace values a forward chunk takes per image: its columns (a 1×1/stride-1 forward takes none).
        pub fn forward_values_per_image(&self) -> usize {
            self.patch() * self.positions()
        }

        /// Workspace values a backward chunk takes per image: its columns and its ∂y reordered.
        pub fn backward_values_per_image(&self) -> usize {
            (self.patch() + self.c_out) * self.positions()
        }

        fn images_per_chunk(&self, per_image: usize, workspace: usize) -> usize {
            (workspace / per_image).clamp(1, self.batch)
        }

        fn expect(&self, what: &str, len: usize, expected: usize) -> Result<()> {
            if len != expected {
                bail!("{OP}: {what} holds {len} values, {self:?} needs {expected}")
            }
            Ok(())
        }

        /// The kernels' geometry parameters after their buffers and offset: nb, c, h, w, k, stride, padding,
        /// H', W'.
        fn kernel_args<'a, B>(&self, nb: usize) -> Result<Vec<Arg<'a, B>>> {
            let [_, _, oh, ow] = self.output_dims();
            [
                nb,
                self.c,
                self.h,
                self.w,
                self.k,
                self.stride,
                self.padding,
                oh,
                ow,
            ]
            .into_iter()
            .map(|v| Ok(Arg::U32(to_u32(v, OP)?)))
            .collect()
        }
    }

    /// y (batch, c_out, H', W') of x and W: per chunk of images, im2col then one strided-batched product
    /// `y_n = W · cols_n` written into y's NCHW images.
    pub fn forward<E: Exec>(
        e: &E,
        x: &E::Buf,
        w: &E::Buf,
        conv: &Conv,
        workspace: usize,
    ) -> Result<E::Buf> {
        conv.expect("x", e.len(x), conv.batch * conv.c * conv.h * conv.w)?;
        conv.expect("W", e.len(w), conv.c_out * conv.patch())?;
        let (l, ckk, c_out) = (conv.positions(), conv.patch(), conv.c_out);
        let mut y = e.alloc(conv.batch * c_out * l)?;
        // W (C_out × CKK) is every image's left operand (batch stride 0)
        let weight = Operand::at(0, ckk);
        let images_of_y = |b0: usize| Operand::at(b0 * c_out * l, l).strided(c_out * l);
        if conv.pointwise() {
            let images_of_x = Operand::at(0, l).strided(ckk * l);
            let g = Gemm {
                batch: conv.batch,
                ..Gemm::new(c_out, l, ckk, weight, images_of_x, images_of_y(0))
            };
            return e.gemm(&g, w, x, &mut y).map(|()| y);
        }
        let nb = conv.images_per_chunk(conv.forward_values_per_image(), workspace);
        let mut cols = e.alloc(nb * ckk * l)?;
        for b0 in (0..conv.batch).step_by(nb) {
            let n = nb.min(conv.batch - b0);
            im2col(e, x, &mut cols, conv, b0, n)?;
            // image i's columns: the (CKK × L) block at column i·L of the (CKK × n·L) matrix
            let g = Gemm {
                batch: n,
                ..Gemm::new(
                    c_out,
                    l,
                    ckk,
                    weight,
                    Operand::at(0, n * l).strided(l),
                    images_of_y(b0),
                )
            };
            e.gemm(&g, w, &cols, &mut y)?;
        }
        Ok(y)
    }

    /// `[∂x | ∂W]` (flat) from x, W and ∂L/∂y: per chunk of images, ∂y reordered to (C_out, n·L) and the
    /// columns, `∂W (+)= ∂y · colsᵀ`, then `∂cols_n = Wᵀ · ∂y_n` and the gather col2im for the chunk's ∂x (for a
    /// 1×1/stride-1 convolution `∂x_n = Wᵀ · ∂y_n` directly, the whole batch in one product).
    pub fn backward<E: Exec>(
        e: &E,
        x: &E::Buf,
        w: &E::Buf,
        dy: &E::Buf,
        conv: &Conv,
        workspace: usize,
    ) -> Result<E::Buf> {
        let dx_len = conv.batch * conv.c * conv.h * conv.w;
        let (l, ckk, c_out) = (conv.positions(), conv.patch(), conv.c_out);
        conv.expect("x", e.len(x), dx_len)?;
        conv.expect("W", e.len(w), c_out * ckk)?;
        conv.expect("∂y", e.len(dy), conv.batch * c_out * l)?;
        let mut grads = e.alloc(dx_len + c_out * ckk)?;
        let nb = conv.images_per_chunk(conv.backward_values_per_image(), workspace);
        let (mut cols, mut dy_rows) = (e.alloc(nb * ckk * l)?, e.alloc(nb * c_out * l)?);
        // W stored (C_out × CKK), read transposed by every image (batch stride 0)
        let weight = Operand::at(0, ckk);
        let images_of_dy = |b0: usize| Operand::at(b0 * c_out * l, l).strided(c_out * l);
        for (chunk, b0) in (0..conv.batch).step_by(nb).enumerate() {
            let n = nb.min(conv.batch - b0);
            ncl_to_cnl(e, dy, &mut dy_rows, b0 * c_out * l, n, c_out, l)?;
            im2col(e, x, &mut cols, conv, b0, n)?;
            // the chunks' contributions to ∂W added in chunk order
            let g = Gemm {
                trans_b: true,
                beta: if chunk == 0 { 0.0 } else { 1.0 },
                ..Gemm::new(
                    c_out,
                    ckk,
                    n * l,
                    Operand::at(0, n * l),
                    Operand::at(0, n * l),
                    Operand::at(dx_len, ckk),
                )
            };
            e.gemm(&g, &dy_rows, &cols, &mut grads)?;
            if !conv.pointwise() {
                // ∂cols over the columns just consumed, laid out as they were
                let g = Gemm {
                    trans_a: true,
                    batch: n,
                    ..Gemm::new(
                        ckk,
                        l,
                        c_out,
                        weight,
                        images_of_dy(b0),
                        Operand::at(0, n * l).strided(l),
                    )
                };
                e.gemm(&g, w, dy, &mut cols)?;
                col2im(e, &cols, &mut grads, conv, b0, n)?;
            }
        }
        if conv.pointwise() {
            let images_of_dx = Operand::at(0, l).strided(ckk * l);
            let g = Gemm {
                trans_a: true,
                batch: conv.batch,
                ..Gemm::new(ckk, l, c_out, weight, images_of_dy(0), images_of_dx)
            };
            e.gemm(&g, w, dy, &mut grads)?;
        }
        Ok(grads)
    }

    /// The (CKK, nb·L) columns of images b0 … b0 + nb − 1 into `cols`.
    fn im2col<E: Exec>(
        e: &E,
        x: &E::Buf,
        cols: &mut E::Buf,
        conv: &Conv,
        b0: usize,
        nb: usize,
    ) -> Result<()> {
        // the kernel indexes a chunk's columns in 32 bits
        let count = to_u32(nb * conv.patch() * conv.positions(), OP)?;
        let x0 = (b0 * conv.c * conv.h * conv.w) as u64;
        let mut args = vec![Arg::In(x), Arg::Out(cols), Arg::U64(x0)];
        args.extend(conv.kernel_args(nb)?);
        // conv2d_im2col(const float* x, float* cols, unsigned long long x0, unsigned nb, unsigned c, unsigned h,
        //               unsigned w, unsigned k, unsigned stride, unsigned padding, unsigned oh, unsigned ow)
        e.launch(
            &CONV2D,
            "conv2d_im2col",
            elementwise(count as usize).into(),
            &mut args,
        )
    }

    /// ∂x of images b0 … b0 + nb − 1 into `grads` (at their NCHW place) from the chunk's ∂cols.
    fn col2im<E: Exec>(
        e: &E,
        dcols: &E::Buf,
        grads: &mut E::Buf,
        conv: &Conv,
        b0: usize,
        nb: usize,
    ) -> Result<()> {
        to_u32(nb * conv.patch() * conv.positions(), OP)?;
        let count = to_u32(nb * conv.c * conv.h * conv.w, OP)?;
        let x0 = (b0 * conv.c * conv.h * conv.w) as u64;
        let mut args = vec![Arg::In(dcols), Arg::Out(grads), Arg::U64(x0)];
        args.extend(conv.kernel_args(nb)?);
        // conv2d_col2im(const float* dcols, float* dx, unsigned long long x0, unsigned nb, unsigned c, unsigned h,
        //               unsigned w, unsigned k, unsigned stride, unsigned padding, unsigned oh, unsigned ow)
        e.launch(
            &CONV2D,
            "conv2d_col2im",
            elementwise(count as usize).into(),
            &mut args,
        )
    }

    /// (nb, rows, l) from element `src0` of `src` → (rows, nb·l) in `dst`.
    fn ncl_to_cnl<E: Exec>(
        e: &E,
        src: &E::Buf,
        dst: &mut E::Buf,
        src0: usize,
        nb: usize,
        rows: usize,
        l: usize,
    ) -> Result<()> {
        let count = to_u32(nb * rows * l, OP)?;
        // conv2d_ncl_to_cnl(const float* src, float* dst, unsigned long long src0, unsigned nb, unsigned rows,
        //                   unsigned l)
        e.launch(
            &CONV2D,
            "conv2d_ncl_to_cnl",
            elementwise(count as usize).into(),
            &mut [
                Arg::In(src),
                Arg::Out(dst),
                Arg::U64(src0 as u64),
                Arg::U32(to_u32(nb, OP)?),
                Arg::U32(to_u32(rows, OP)?),
                Arg::U32(to_u32(l, OP)?),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{grads_through, max_diff};
    use candle_core::Var;

    #[test]
    fn matches_candle_forward_and_backward() {
        let dev = Device::Cpu;
        for (k, s, p, h, w) in [
            (3, 1, 1, 6, 7),
            (3, 2, 1, 8, 9),
            (1, 2, 0, 8, 9),
            (7, 2, 3, 11, 10),
            (1, 1, 0, 5, 4),
        ] {
            let x =
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, h, w), &dev).unwrap()).unwrap();
            let weight =
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 3, k, k), &dev).unwrap()).unwrap();
            let ours = fused(x.as_tensor(), weight.as_tensor(), s, p).unwrap();
            let reference = x
                .as_tensor()
                .conv2d(weight.as_tensor(), p, s, 1, 1)
                .unwrap();
            assert_eq!(ours.dims(), reference.dims());
            assert!(max_diff(&ours, &reference) < 1e-4);
            // gradients against candle's where candle's are right (same parity of H and W, or stride 1)
            let upstream = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
            let g_ours = grads_through(&ours, &upstream);
            assert_eq!(g_ours.get(x.as_tensor()).unwrap().dims(), [2, 3, h, w]);
            if s == 1 || h % 2 == w % 2 {
                let g_ref = grads_through(&reference, &upstream);
                for v in [x.as_tensor(), weight.as_tensor()] {
                    let a = g_ours.get(v).unwrap();
                    let b = g_ref.get(v).unwrap();
                    assert!(max_diff(a, b) < 1e-3, "k{k} s{s} {h}x{w}");
                }
            }
        }
    }

    /// The generic path runs the candle padding workaround it is written for: at stride 2 with H and W of
    /// different parity (where candle's own backward gets the shape wrong) its values and the gradients of x and
    /// the kernel equal the im2col kernel's (checked against candle above where candle is right).
    #[test]
    fn generic_strided_conv_matches_the_kernel_for_mixed_parity() {
        let dev = Device::Cpu;
        for (k, p, h, w) in [
            (3, 1, 8, 23),
            (1, 0, 8, 23),
            (7, 3, 16, 45),
            (3, 1, 9, 9),
            (1, 0, 10, 10),
        ] {
            let x =
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, h, w), &dev).unwrap()).unwrap();
            let weight =
                Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 3, k, k), &dev).unwrap()).unwrap();
            let ours = generic(x.as_tensor(), weight.as_tensor(), 2, p).unwrap();
            let kernel = fused(x.as_tensor(), weight.as_tensor(), 2, p).unwrap();
            let unpadded = x
                .as_tensor()
                .conv2d(weight.as_tensor(), p, 2, 1, 1)
                .unwrap();
            assert_eq!(ours.dims(), unpadded.dims());
            let diff = max_diff(&ours, &kernel);
            assert!(diff < 1e-4, "k{k} {h}x{w}: {diff}");
            let upstream = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
            let (g, g_kernel) = (
                grads_through(&ours, &upstream),
                grads_through(&kernel, &upstream),
            );
            for v in [x.as_tensor(), weight.as_tensor()] {
                let (a, b) = (g.get(v).unwrap(), g_kernel.get(v).unwrap());
                assert_eq!(a.dims(), v.dims(), "k{k} {h}x{w}");
                assert!(max_diff(a, b) < 1e-3, "k{k} {h}x{w}: {}", max_diff(a, b));
            }
        }
    }
}
