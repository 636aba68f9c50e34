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

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};

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
    match Kernel::select(x, false) {
        Kernel::Generic => generic(x, weight, stride, padding),
        _ => fused(x, weight, stride, padding),
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
