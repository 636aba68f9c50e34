//! 2-D max pooling with kernel 3, stride 2, padding 1 (ResNet's stem) as a candle custom op WITH a backward pass:
//! candle's own `max_pool2d` only back-propagates when kernel == stride.
//!
//! Forward: out[b,c,i,j] = max over the 3×3 window at (2i−1, 2j−1) of the input (padding never wins), output size
//! ⌊(H + 2 − 3)/2⌋ + 1. Backward: each output gradient goes to the window's maximum — the FIRST one in row-major
//! order on ties, as PyTorch does. CPU kernel: one pass per plane each way. Generic: the nine shifted windows
//! stacked, the first maximum picked with a gather (whose backward is the matching scatter-add), all on the
//! tensor's device — no round trip through host memory.
//!
//! CUDA (`kernels/pool.cu`): one thread per output forward. The backward is a second op over (x, ∂L/∂y),
//! stateless: one thread per input element gathers from the ≤ 2×2 windows that contain it, recomputing each
//! window's first maximum exactly as [`argmax_plane`] (NaN included) and adding the gradients of the windows
//! whose maximum it is in row-major output order — the CPU kernel's sums, bit for bit, without the atomics a
//! scatter from the outputs would need and without an argmax tensor kept between the passes.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Shape, Tensor};

use super::Kernel;
use crate::error::Result;

const KERNEL: usize = 3;
const STRIDE: usize = 2;
const PAD: usize = 1;

fn out_size(n: usize) -> usize {
    (n + 2 * PAD - KERNEL) / STRIDE + 1
}

/// For each output position, the flat input index (within its (b, c) plane) of the window's first maximum.
fn argmax_plane(
    input: &[f32],
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    out: &mut [f32],
    arg: &mut [usize],
) {
    for i in 0..oh {
        for j in 0..ow {
            let mut best = f32::NEG_INFINITY;
            let mut best_at = usize::MAX;
            for di in 0..KERNEL {
                let y = (i * STRIDE + di) as isize - PAD as isize;
                if y < 0 || y as usize >= h {
                    continue;
                }
                for dj in 0..KERNEL {
                    let x = (j * STRIDE + dj) as isize - PAD as isize;
                    if x < 0 || x as usize >= w {
                        continue;
                    }
                    let at = y as usize * w + x as usize;
                    let v = input[at];
                    // `>` keeps the first maximum; NaN propagates like PyTorch's max-pool.
                    if v > best || best_at == usize::MAX || v.is_nan() {
                        best = v;
                        best_at = at;
                        if v.is_nan() {
                            break;
                        }
                    }
                }
            }
            out[i * ow + j] = best;
            arg[i * ow + j] = best_at;
        }
    }
}

struct MaxPool3x3S2;

impl CustomOp1 for MaxPool3x3S2 {
    fn name(&self) -> &'static str {
        "max-pool-3x3-s2"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = layout.shape().dims4()?;
        let data = super::contiguous_f32(storage, layout, "max-pool-3x3-s2")?;
        let (oh, ow) = (out_size(h), out_size(w));
        let mut out = vec![0f32; b * c * oh * ow];
        let mut arg = vec![0usize; oh * ow];
        for plane in 0..b * c {
            argmax_plane(
                &data[plane * h * w..(plane + 1) * h * w],
                h,
                w,
                oh,
                ow,
                &mut out[plane * oh * ow..(plane + 1) * oh * ow],
                &mut arg,
            );
        }
        Ok((CpuStorage::F32(out), Shape::from((b, c, oh, ow))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{alloc, elementwise, input, launch, storage as wrap, POOL};
        use candle_core::backend::BackendStorage;
        let (b, c, h, w) = layout.shape().dims4()?;
        let (oh, ow) = (out_size(h), out_size(w));
        let dev = storage.device();
        let x = input(storage, layout, self.name())?;
        let n = b * c * oh * ow;
        let mut y = alloc::<f32>(dev, n)?;
        let [h_u, w_u, oh_u, ow_u] = plane_args(h, w)?;
        let n_u = n as u64;
        // max_pool_fwd(const float* x, float* y, unsigned h, unsigned w, unsigned oh, unsigned ow,
        //              unsigned long long n)
        launch!(
            dev,
            POOL,
            "max_pool_fwd",
            elementwise(n),
            [&x, &mut y, &h_u, &w_u, &oh_u, &ow_u, &n_u]
        );
        Ok((wrap(y, dev), Shape::from((b, c, oh, ow))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        if arg.device().is_cuda() {
            return Ok(Some(
                arg.apply_op2_no_bwd(&grad_res.contiguous()?, &MaxPoolGrad)?,
            ));
        }
        let (b, c, h, w) = arg.dims4()?;
        let (oh, ow) = (out_size(h), out_size(w));
        let input = arg.flatten_all()?.to_vec1::<f32>()?;
        let grad = grad_res.flatten_all()?.to_vec1::<f32>()?;
        let mut grad_in = vec![0f32; b * c * h * w];
        let mut out = vec![0f32; oh * ow];
        let mut where_max = vec![0usize; oh * ow];
        for plane in 0..b * c {
            argmax_plane(
                &input[plane * h * w..(plane + 1) * h * w],
                h,
                w,
                oh,
                ow,
                &mut out,
                &mut where_max,
            );
            let g = &grad[plane * oh * ow..(plane + 1) * oh * ow];
            let gi = &mut grad_in[plane * h * w..(plane + 1) * h * w];
            for (k, at) in where_max.iter().enumerate() {
                if *at != usize::MAX {
                    gi[*at] += g[k];
                }
            }
        }
        Ok(Some(Tensor::from_vec(grad_in, (b, c, h, w), arg.device())?))
    }
}

/// The kernels' plane sizes (H, W, H', W'); an error for a plane beyond their 32-bit in-plane indices.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn plane_args(h: usize, w: usize) -> candle_core::Result<[u32; 4]> {
    super::cuda::to_u32(h * w, "max-pool-3x3-s2")?;
    Ok([h, w, out_size(h), out_size(w)].map(|n| n as u32))
}

/// The backward on a GPU: (x, ∂L/∂y) → ∂L/∂x.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct MaxPoolGrad;

impl CustomOp2 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "max-pool-3x3-s2-grad"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!(
            "max-pool-3x3-s2-grad runs on CUDA only (the CPU backward is the op's bwd)"
        )
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        x_layout: &Layout,
        grad: &candle_core::CudaStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        use super::cuda::{alloc, elementwise, input, launch, storage, POOL};
        use candle_core::backend::BackendStorage;
        let (b, c, h, w) = x_layout.shape().dims4()?;
        let (oh, ow) = (out_size(h), out_size(w));
        if grad_layout.dims() != [b, c, oh, ow] {
            candle_core::bail!(
                "max-pool backward: gradient {:?} for x {:?}",
                grad_layout.dims(),
                x_layout.dims()
            );
        }
        let dev = x.device();
        let (xv, gv) = (
            input(x, x_layout, self.name())?,
            input(grad, grad_layout, self.name())?,
        );
        let n = xv.len();
        let mut dx = alloc::<f32>(dev, n)?;
        let [h_u, w_u, oh_u, ow_u] = plane_args(h, w)?;
        let n_u = n as u64;
        // max_pool_bwd(const float* x, const float* grad, float* dx, unsigned h, unsigned w, unsigned oh,
        //              unsigned ow, unsigned long long n)
        launch!(
            dev,
            POOL,
            "max_pool_bwd",
            elementwise(n),
            [&xv, &gv, &mut dx, &h_u, &w_u, &oh_u, &ow_u, &n_u]
        );
        Ok((storage(dx, dev), x_layout.shape().clone()))
    }
}

/// Max-pool 3×3, stride 2, padding 1 over (B, C, H, W) → (B, C, ⌊(H − 1)/2⌋ + 1, ⌊(W − 1)/2⌋ + 1),
/// differentiable.
pub fn max_pool_3x3_s2(x: &Tensor) -> Result<Tensor> {
    x.dims4()?;
    match Kernel::select(x, true) {
        Kernel::Generic => generic(x),
        _ => kernel(x),
    }
}

/// The CPU kernel.
pub(crate) fn kernel(x: &Tensor) -> Result<Tensor> {
    Ok(x.contiguous()?.apply_op1(MaxPool3x3S2)?)
}

/// The composed version: pad with the lowest finite value (padding never wins: every window holds a real
/// pixel), take the 9 windows' values as strided views stacked on a last axis in row-major window order, and
/// gather each window's first maximum. The gather's backward sends each output gradient to that one input.
pub(crate) fn generic(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (oh, ow) = (out_size(h), out_size(w));
    // Window (i, dy) starts at padded row 2i + dy: rows up to dy + 2·oh must exist for the stride-2 reshape.
    let (ph, pw) = (KERNEL - 1 + STRIDE * oh, KERNEL - 1 + STRIDE * ow);
    let low = |shape: (usize, usize, usize, usize)| -> Result<Tensor> {
        Ok(Tensor::full(f32::MIN, shape, x.device())?.to_dtype(x.dtype())?)
    };
    let mut rows = vec![low((b, c, PAD, w))?, x.clone()];
    if ph > PAD + h {
        rows.push(low((b, c, ph - PAD - h, w))?);
    }
    let x = Tensor::cat(&rows, 2)?;
    let mut cols = vec![low((b, c, ph, PAD))?, x];
    if pw > PAD + w {
        cols.push(low((b, c, ph, pw - PAD - w))?);
    }
    let x = Tensor::cat(&cols, 3)?;
    let mut windows = Vec::with_capacity(KERNEL * KERNEL);
    for dy in 0..KERNEL {
        let rows = x
            .narrow(2, dy, STRIDE * oh)?
            .reshape((b, c, oh, STRIDE, pw))?
            .narrow(3, 0, 1)?
            .squeeze(3)?;
        for dx in 0..KERNEL {
            windows.push(
                rows.narrow(3, dx, STRIDE * ow)?
                    .reshape((b, c, oh, ow, STRIDE))?
                    .narrow(4, 0, 1)?,
            );
        }
    }
    let windows = Tensor::cat(&windows, 4)?; // (B, C, oh, ow, 9)
    let values = windows.detach();
    let is_max = values
        .broadcast_eq(&values.max_keepdim(4)?)?
        .to_dtype(DType::F32)?;
    // the first maximum: where the running count of maxima reaches 1 for the first time
    let first = (&is_max * is_max.cumsum(4)?.eq(1f32)?.to_dtype(DType::F32)?)?;
    let positions = Tensor::arange(0f32, (KERNEL * KERNEL) as f32, x.device())?;
    let index = first
        .broadcast_mul(&positions)?
        .sum_keepdim(4)?
        .to_dtype(DType::U32)?;
    Ok(windows.gather(&index, 4)?.squeeze(4)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::max_diff;
    use candle_core::Device;

    fn kernel(x: &Tensor) -> Result<Tensor> {
        Ok(x.contiguous()?.apply_op1(MaxPool3x3S2)?)
    }

    type Pool = fn(&Tensor) -> Result<Tensor>;

    /// Both bodies, by name.
    const PATHS: [(&str, Pool); 2] = [("kernel", kernel), ("generic", generic)];

    #[test]
    fn forward_matches_a_direct_computation() {
        for (name, pool) in PATHS {
            forward_matches(name, pool);
        }
    }

    fn forward_matches(name: &str, max_pool_3x3_s2: Pool) {
        let x = Tensor::arange(0f32, 30.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 5, 6))
            .unwrap();
        let y = max_pool_3x3_s2(&x).unwrap();
        assert_eq!(y.dims(), [1, 1, 3, 3]);
        // window maxima: bottom-right corner of each clipped window
        let expected = [[7f32, 9.0, 11.0], [19.0, 21.0, 23.0], [25.0, 27.0, 29.0]];
        assert_eq!(
            y.squeeze(0)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap(),
            expected,
            "{name}"
        );
        // ResNet stem shape: 128x361 → 64x181
        let x = Tensor::zeros((1, 2, 128, 361), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert_eq!(max_pool_3x3_s2(&x).unwrap().dims(), [1, 2, 64, 181]);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        for (name, pool) in PATHS {
            gradient_matches(name, pool);
        }
    }

    fn gradient_matches(name: &str, max_pool_3x3_s2: Pool) {
        let dev = Device::Cpu;
        // distinct values so the maximum of every window is unique and the function is locally linear
        let n = 2 * 3 * 7 * 8;
        let values: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32) * 0.1 + (i as f32) * 1e-3)
            .collect();
        let x = candle_core::Var::from_vec(values.clone(), (2, 3, 7, 8), &dev).unwrap();
        let weights = Tensor::rand(0f64, 1.0, (2, 3, 4, 4), &dev).unwrap();
        // the pooled values are copies of inputs: summing them in f64 keeps the finite differences exact enough
        let loss = |t: &Tensor| {
            let pooled = max_pool_3x3_s2(t)
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap();
            (pooled * &weights).unwrap().sum_all().unwrap()
        };
        let grads = loss(x.as_tensor()).backward().unwrap();
        let analytic = grads
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let eps = 1e-2f32;
        let mut nonzero = 0;
        for i in 0..n {
            let mut plus = values.clone();
            plus[i] += eps;
            let mut minus = values.clone();
            minus[i] -= eps;
            let f = |v: Vec<f32>| {
                loss(&Tensor::from_vec(v, (2, 3, 7, 8), &dev).unwrap())
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let numeric = ((f(plus) - f(minus)) / (2.0 * eps as f64)) as f32;
            assert!(
                (numeric - analytic[i]).abs() < 1e-3,
                "{name}, input {i}: numeric {numeric} vs analytic {}",
                analytic[i]
            );
            if analytic[i] != 0.0 {
                nonzero += 1;
            }
        }
        assert!(nonzero > 20, "{name}: gradient reached {nonzero} inputs");
    }

    /// Ties (ReLU zeros and repeated values, as after ResNet's stem): the generic path sends each gradient to the
    /// window's FIRST maximum, as the kernel and PyTorch do; odd and even sizes.
    #[test]
    fn generic_matches_the_kernel_on_ties() {
        let dev = Device::Cpu;
        for (h, w) in [(7, 8), (6, 9), (1, 1)] {
            let n = 2 * 3 * h * w;
            let values: Vec<f32> = (0..n)
                .map(|i| ((i * 7 % 5) as f32 - 2.0).max(0.0))
                .collect();
            let x = candle_core::Var::from_vec(values, (2, 3, h, w), &dev).unwrap();
            let (a, b) = (
                kernel(x.as_tensor()).unwrap(),
                generic(x.as_tensor()).unwrap(),
            );
            assert_eq!(a.dims(), b.dims());
            assert_eq!(max_diff(&a, &b), 0.0, "{h}x{w}");
            let upstream = Tensor::rand(0.5f32, 1.5, a.dims(), &dev).unwrap();
            let (ga, gb) = (
                crate::testing::grads_through(&a, &upstream),
                crate::testing::grads_through(&b, &upstream),
            );
            let (ga, gb) = (
                ga.get(x.as_tensor()).unwrap(),
                gb.get(x.as_tensor()).unwrap(),
            );
            // the same routing; where several windows send to one input the sums differ in order only
            assert!(
                max_diff(ga, gb) < 1e-5,
                "{h}x{w}: gradients differ by {}",
                max_diff(ga, gb)
            );
            // every output gradient went to exactly one input
            let total = |g: &Tensor| g.sum_all().unwrap().to_scalar::<f32>().unwrap();
            let sent = total(&upstream);
            assert!((total(gb) - sent).abs() < 1e-3 * sent, "{h}x{w}");
        }
    }
}
