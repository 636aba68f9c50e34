//! 1-D convolution on channels-last sequences (B, L, C), as unfold + one matrix product per group, for training
//! on the CPU (wav2vec 2.0's feature encoder and positional convolution).
//!
//! Why not candle's `conv1d`: in candle 0.11 its forward is right but its gradients are wrong (the kernel gradient
//! as soon as the batch or the input channels exceed 1, and the input gradient at stride 1 without padding), and a
//! height-1 `conv2d` fails on shape in its backward. The composed version ([`conv1d_composed`]: zero-padding with
//! `cat`, k `narrow`s and reshapes) is correct but slow on wav2vec2's big feature maps (k copies of the input
//! forward, and the backward of every `narrow`/`cat` pads and sums full-size tensors). Here the patch extraction
//! is one custom op whose backward is the matching gather-sum, and the rest is a matrix product that candle runs on
//! its GEMM kernels, forward and backward.
//!
//! Channels-last is the layout that makes the patches cheap: for one output step the k input steps it reads are
//! k consecutive rows of C values, one memcpy per kernel position, and the product's output (B·T, C_out) already
//! is the next layer's channels-last input — no transposes of full-size tensors anywhere in the feature encoder.
//!
//! `cols[g, b·T + t, j·C_g + c] = x[b, t·s − p + j, g·C_g + c]` (0 outside), then per group
//! `y_g = cols_g · W_gᵀ` with `W_g[o, j·C_g + c] = w[g·O_g + o, c, j]` (PyTorch's (C_out, C_in/groups, k) weight).

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// The geometry of one convolution: input (B, L, C), `groups` groups of `C / groups` channels, output T steps.
#[derive(Debug, Clone, Copy)]
struct Unfold {
    kernel: usize,
    stride: usize,
    padding: usize,
    groups: usize,
    t_out: usize,
}

impl Unfold {
    /// The input step read by output step `t` at kernel position `j`, if inside the input.
    fn input_step(&self, t: usize, j: usize, l: usize) -> Option<usize> {
        (t * self.stride + j)
            .checked_sub(self.padding)
            .filter(|&i| i < l)
    }
}

impl CustomOp1 for Unfold {
    fn name(&self) -> &'static str {
        "unfold1d"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, l, c) = layout.shape().dims3()?;
        let x = crate::nn::contiguous_f32(storage, layout, "unfold1d")?;
        let (k, g, t_out) = (self.kernel, self.groups, self.t_out);
        let cg = c / g;
        let row = k * cg;
        let rows_per_group = b * t_out;
        let mut cols = vec![0f32; g * rows_per_group * row];
        cols.par_chunks_mut(row)
            .enumerate()
            .with_min_len(64)
            .for_each(|(r, out)| {
                let (group, bt) = (r / rows_per_group, r % rows_per_group);
                let (bi, t) = (bt / t_out, bt % t_out);
                for j in 0..k {
                    if let Some(i) = self.input_step(t, j, l) {
                        let src = (bi * l + i) * c + group * cg;
                        out[j * cg..(j + 1) * cg].copy_from_slice(&x[src..src + cg]);
                    }
                }
            });
        Ok((CpuStorage::F32(cols), Shape::from((g, rows_per_group, row))))
    }

    /// ∂L/∂x: every input value sums the column entries it was copied to. Written as a gather (each input row
    /// visits the output steps that read it) so that rows can be filled in parallel without races.
    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (b, l, c) = arg.dims3()?;
        let (k, s, g, t_out) = (self.kernel, self.stride, self.groups, self.t_out);
        let cg = c / g;
        let row = k * cg;
        let rows_per_group = b * t_out;
        let grad = grad_res.contiguous()?;
        let (storage, layout) = grad.storage_and_layout();
        let cols = match &*storage {
            Storage::Cpu(cpu) => crate::nn::contiguous_f32(cpu, layout, "unfold1d backward")?,
            _ => candle_core::bail!("unfold1d backward expects a CPU gradient"),
        };
        let mut grad_x = vec![0f32; b * l * c];
        grad_x
            .par_chunks_mut(c)
            .enumerate()
            .with_min_len(64)
            .for_each(|(r, out)| {
                let (bi, i) = (r / l, r % l);
                let ip = i + self.padding;
                // output steps t with 0 ≤ ip − t·s < k
                let t_lo = if ip + 1 >= k {
                    (ip + 1 - k).div_ceil(s)
                } else {
                    0
                };
                let t_hi = (ip / s).min(t_out.saturating_sub(1));
                if t_out == 0 || t_lo > t_hi {
                    return;
                }
                for t in t_lo..=t_hi {
                    let j = ip - t * s;
                    for group in 0..g {
                        let src = (group * rows_per_group + bi * t_out + t) * row + j * cg;
                        for (o, &v) in out[group * cg..(group + 1) * cg]
                            .iter_mut()
                            .zip(&cols[src..src + cg])
                        {
                            *o += v;
                        }
                    }
                }
            });
        drop(storage);
        Ok(Some(Tensor::from_vec(grad_x, (b, l, c), arg.device())?))
    }
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
/// `T = ⌊(L + 2p − k)/s⌋ + 1`. The unfold custom op on the CPU for f32; elsewhere [`conv1d_composed`] between
/// transposes.
pub fn conv1d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
    groups: usize,
) -> Result<Tensor> {
    let (b, l, c_in) = x.dims3()?;
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
    if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 {
        let y = conv1d_composed(&x.transpose(1, 2)?, w, stride, padding, groups)?;
        return Ok(y.transpose(1, 2)?);
    }
    let t = (l + 2 * padding - k) / stride + 1;
    let cols = x.contiguous()?.apply_op1(Unfold {
        kernel: k,
        stride,
        padding,
        groups,
        t_out: t,
    })?; // (groups, B·T, k·C_g)
    let c_out_g = c_out / groups;
    // (C_out, C_g, k) → (groups, O_g, k·C_g) in the columns' (j, c) order; small next to the activations.
    let w = w
        .permute((0, 2, 1))?
        .contiguous()?
        .reshape((groups, c_out_g, k * c_in_g))?;
    let y = cols.matmul(&w.transpose(1, 2)?)?; // (groups, B·T, O_g)
    Ok(if groups == 1 {
        y.reshape((b, t, c_out))?
    } else {
        y.permute((1, 0, 2))?.contiguous()?.reshape((b, t, c_out))?
    })
}

/// The same convolution on a channels-first x (B, C_in, L) → (B, C_out, T), composed of ops whose backward candle
/// gets right: zero-padding with `cat`, columns gathered with `narrow` and a reshape that picks every `stride`-th
/// step, one matmul per group. The device-independent path (and the reference the custom op is tested against).
pub fn conv1d_composed(
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
    use candle_core::{Device, Var};

    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Values and gradients (input and kernel) against the composed version, itself checked against a
    /// brute-force sum below.
    #[test]
    fn matches_the_composed_convolution_forward_and_backward() {
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
            let ours = conv1d(x.as_tensor(), w.as_tensor(), s, p, g).unwrap();
            let reference = conv1d_composed(
                &x.as_tensor().transpose(1, 2).unwrap(),
                w.as_tensor(),
                s,
                p,
                g,
            )
            .unwrap()
            .transpose(1, 2)
            .unwrap();
            assert_eq!(ours.dims(), reference.dims());
            assert_eq!(ours.dim(1).unwrap(), (l + 2 * p - k) / s + 1);
            let case = format!("b{b} c{c_in}→{c_out} l{l} k{k} s{s} p{p} g{g}");
            assert!(max_abs(&(&ours - &reference).unwrap()) < 1e-4, "{case}");
            let upstream = Tensor::randn(0f32, 1.0, ours.dims(), &dev).unwrap();
            let g_ours = (&ours * &upstream)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g_ref = (&reference * &upstream)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
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
            conv1d_composed(&x.transpose(1, 2).unwrap(), w.as_tensor(), s, p, 1)
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        } else {
            conv1d(&x, w.as_tensor(), s, p, 1).unwrap()
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
