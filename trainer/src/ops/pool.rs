//! 2-D max pooling with kernel 3, stride 2, padding 1 (ResNet's stem) as a candle custom op WITH a backward pass:
//! candle's own `max_pool2d` only back-propagates when kernel == stride.
//!
//! Forward: out[b,c,i,j] = max over the 3×3 window at (2i−1, 2j−1) of the input (padding never wins), output size
//! ⌊(H + 2 − 3)/2⌋ + 1. Backward: each output gradient goes to the window's maximum — the FIRST one in row-major
//! order on ties, as PyTorch does. The op runs on the CPU; on another device the tensor makes a round trip
//! through host memory (the op is tiny next to the convolutions around it).

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};

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
        let data = crate::nn::contiguous_f32(storage, layout, "max-pool-3x3-s2")?;
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

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (b, c, h, w) = arg.dims4()?;
        let (oh, ow) = (out_size(h), out_size(w));
        let input = arg
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let grad = grad_res
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?;
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

/// Max-pool 3×3, stride 2, padding 1 over (B, C, H, W), differentiable.
pub fn max_pool_3x3_s2(x: &Tensor) -> Result<Tensor> {
    let device = x.device().clone();
    let x = x.to_device(&Device::Cpu)?.contiguous()?;
    let y = x.apply_op1(MaxPool3x3S2)?;
    Ok(y.to_device(&device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_matches_a_direct_computation() {
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
            expected
        );
        // ResNet stem shape: 128x361 → 64x181
        let x = Tensor::zeros((1, 2, 128, 361), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert_eq!(max_pool_3x3_s2(&x).unwrap().dims(), [1, 2, 64, 181]);
    }

    #[test]
    fn gradient_matches_finite_differences() {
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
                "input {i}: numeric {numeric} vs analytic {}",
                analytic[i]
            );
            if analytic[i] != 0.0 {
                nonzero += 1;
            }
        }
        assert!(nonzero > 20, "gradient reached {nonzero} inputs");
    }
}
