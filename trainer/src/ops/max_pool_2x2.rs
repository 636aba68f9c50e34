//! 2-D max pooling with kernel 2 and stride 2 (seed system 3's CNN), with PyTorch's backward: each output's
//! gradient goes to its window's FIRST maximum in row-major order. candle's own `max_pool2d` backward is wrong
//! here: it multiplies each window's gradient by (maxima in the window)/4 — a quarter for a unique maximum (the
//! face CNN's parity test against PyTorch found it: every gradient below the first pooling was off by 75%).
//!
//! Forward: out[b,c,i,j] = max of x[b,c,2i..2i+2, 2j..2j+2]; an odd last row or column is dropped (PyTorch's
//! floor mode). One body for every device, composed of candle ops whose backward is right: the four window
//! positions as the last axis, the first maximum's index (`argmax` keeps the first), a `gather` — whose backward
//! is the matching scatter-add. No kernel: the pooled maps are small (the CNN's work is in the convolutions).

use candle_core::{Tensor, D};

use crate::error::{Error, Result};

/// Max-pool of x (B, C, H, W) with kernel 2, stride 2 → (B, C, ⌊H/2⌋, ⌊W/2⌋).
pub fn max_pool_2x2(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (oh, ow) = (h / 2, w / 2);
    if oh == 0 || ow == 0 {
        return Err(Error::Other(format!(
            "max_pool_2x2: input {:?} is smaller than the 2x2 window",
            x.dims()
        )));
    }
    let windows = x
        .narrow(2, 0, 2 * oh)?
        .narrow(3, 0, 2 * ow)?
        .reshape((b, c, oh, 2, ow, 2))?
        .permute((0, 1, 2, 4, 3, 5))?
        .contiguous()?
        .reshape((b, c, oh, ow, 4))?;
    let first_max = windows.argmax_keepdim(D::Minus1)?;
    Ok(windows.gather(&first_max, D::Minus1)?.squeeze(D::Minus1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn pools_and_sends_each_gradient_to_the_first_maximum() {
        // 1 x 1 x 3 x 4: the odd last row is dropped; the right window has a tie (5, 5)
        let x = Var::from_vec(
            vec![1f32, 2., 5., 5., 3., 0., 1., 4., 9., 9., 9., 9.],
            (1, 1, 3, 4),
            &Device::Cpu,
        )
        .unwrap();
        let y = max_pool_2x2(x.as_tensor()).unwrap();
        assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [3., 5.]);
        let r = Tensor::new(&[[[[10f32, 20.]]]], &Device::Cpu).unwrap();
        let g = (y * r).unwrap().sum_all().unwrap().backward().unwrap();
        let gx = g.get(x.as_tensor()).unwrap().flatten_all().unwrap();
        assert_eq!(
            gx.to_vec1::<f32>().unwrap(),
            [0., 0., 20., 0., 10., 0., 0., 0., 0., 0., 0., 0.]
        );
    }
}
