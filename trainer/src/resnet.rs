//! ResNet-50 visual encoder (§3.3): torchvision's ResNet-50 (v1.5: the stride sits on the 3×3 convolution of each
//! bottleneck), classification layer removed, global average pooling → 2048 non-negative features, then l2 if
//! `visual_l2norm`.
//!
//! Parameter names are torchvision's (`conv1.weight`, `bn1.running_mean`, `layer3.4.conv2.weight`,
//! `layer2.0.downsample.0.weight`, ...) under the `visual.` prefix, so torchvision checkpoints load by name
//! (BatchNorm's `num_batches_tracked` aside). Random initialisation as torchvision's: kaiming-normal (fan_out,
//! ReLU) convolutions, BatchNorm weight 1 and bias 0.
//!
//! BatchNorm uses batch statistics in training (updating the running statistics, momentum 0.1) and the running
//! statistics in evaluation. The stem's 3×3/stride-2 max-pool is [`crate::pool::max_pool_3x3_s2`], which has a
//! backward pass.

use candle_core::{ModuleT, Tensor, D};
use candle_nn::BatchNorm;

use crate::error::Result;
use crate::nn::l2_normalize;
use crate::params::ParamStore;
use crate::pool::max_pool_3x3_s2;

/// Output width of the encoder.
pub const RESNET50_FEATURES: usize = 2048;

/// Blocks per stage and the stages' bottleneck widths.
const STAGES: [(usize, usize); 4] = [(3, 64), (4, 128), (6, 256), (3, 512)];
const EXPANSION: usize = 4;

/// A bias-free 2-D convolution: on the CPU im2col + GEMM ([`crate::im2col`], a much faster backward than
/// candle's); elsewhere candle's convolution, strided ones through [`Conv::forward`]'s padding workaround:
/// candle 0.11's conv2d backward derives the transposed convolution's output padding from the height alone and
/// applies it to the width too, so an input whose height and width differ in parity (256×721 at the stem) gets a
/// gradient of the wrong shape.
#[derive(Debug, Clone)]
struct Conv {
    weight: Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() {
            return crate::im2col::conv2d(x, &self.weight, self.stride, self.padding);
        }
        if self.stride == 1 {
            // stride 1 never needs an output padding: candle's backward is exact
            return Ok(x.conv2d(&self.weight, self.padding, 1, 1, 1)?);
        }
        // Pad explicitly, plus one zero row/column where (n + 2p − k) is odd, so that every dimension needs no
        // output padding in the backward pass; the extra output row/column this creates is cut off again.
        let (_, _, h, w) = x.dims4()?;
        let (p, k, s) = (self.padding, self.kernel, self.stride);
        let out = |n: usize| (n + 2 * p - k) / s + 1;
        let extra = |n: usize| (s - (n + 2 * p - k) % s) % s;
        let padded = x
            .pad_with_zeros(2, p, p + extra(h))?
            .pad_with_zeros(3, p, p + extra(w))?;
        let y = padded.conv2d(&self.weight, 0, s, 1, 1)?;
        Ok(y.narrow(2, 0, out(h))?.narrow(3, 0, out(w))?)
    }
}

impl candle_core::Module for Conv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        Conv::forward(self, x).map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
}

fn conv(
    store: &mut ParamStore,
    name: &str,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    padding: usize,
) -> Result<Conv> {
    let std = (2.0 / (cout * k * k) as f64).sqrt();
    let weight = store.normal(&format!("{name}.weight"), &[cout, cin, k, k], std)?;
    Ok(Conv {
        weight,
        kernel: k,
        stride,
        padding,
    })
}

fn batch_norm(store: &mut ParamStore, name: &str, c: usize) -> Result<BatchNorm> {
    let running_mean = store.buffer(&format!("{name}.running_mean"), &[c], 0.0)?;
    let running_var = store.buffer(&format!("{name}.running_var"), &[c], 1.0)?;
    let weight = store.constant(&format!("{name}.weight"), &[c], 1.0)?;
    let bias = store.constant(&format!("{name}.bias"), &[c], 0.0)?;
    Ok(BatchNorm::new_with_momentum(
        c,
        running_mean,
        running_var,
        weight,
        bias,
        1e-5,
        0.1,
    )?)
}

#[derive(Debug, Clone)]
struct Bottleneck {
    conv1: Conv,
    bn1: BatchNorm,
    conv2: Conv,
    bn2: BatchNorm,
    conv3: Conv,
    bn3: BatchNorm,
    downsample: Option<(Conv, BatchNorm)>,
}

impl Bottleneck {
    fn new(
        store: &mut ParamStore,
        name: &str,
        cin: usize,
        width: usize,
        stride: usize,
    ) -> Result<Self> {
        let cout = width * EXPANSION;
        let downsample = if stride != 1 || cin != cout {
            Some((
                conv(
                    store,
                    &format!("{name}.downsample.0"),
                    cin,
                    cout,
                    1,
                    stride,
                    0,
                )?,
                batch_norm(store, &format!("{name}.downsample.1"), cout)?,
            ))
        } else {
            None
        };
        Ok(Bottleneck {
            conv1: conv(store, &format!("{name}.conv1"), cin, width, 1, 1, 0)?,
            bn1: batch_norm(store, &format!("{name}.bn1"), width)?,
            conv2: conv(store, &format!("{name}.conv2"), width, width, 3, stride, 1)?,
            bn2: batch_norm(store, &format!("{name}.bn2"), width)?,
            conv3: conv(store, &format!("{name}.conv3"), width, cout, 1, 1, 0)?,
            bn3: batch_norm(store, &format!("{name}.bn3"), cout)?,
            downsample,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.bn1.forward_t(&x.apply(&self.conv1)?, train)?.relu()?;
        let h = self.bn2.forward_t(&h.apply(&self.conv2)?, train)?.relu()?;
        let h = self.bn3.forward_t(&h.apply(&self.conv3)?, train)?;
        let identity = match &self.downsample {
            Some((conv, bn)) => bn.forward_t(&x.apply(conv)?, train)?,
            None => x.clone(),
        };
        Ok((h + identity)?.relu()?)
    }
}

#[derive(Debug, Clone)]
pub struct ResNet50 {
    conv1: Conv,
    bn1: BatchNorm,
    layers: Vec<Bottleneck>,
    l2norm: bool,
}

impl ResNet50 {
    pub fn new(store: &mut ParamStore, name: &str, l2norm: bool) -> Result<Self> {
        let conv1 = conv(store, &format!("{name}.conv1"), 3, 64, 7, 2, 3)?;
        let bn1 = batch_norm(store, &format!("{name}.bn1"), 64)?;
        let mut layers = Vec::new();
        let mut cin = 64;
        for (stage, (blocks, width)) in STAGES.iter().enumerate() {
            for block in 0..*blocks {
                let stride = if stage > 0 && block == 0 { 2 } else { 1 };
                let block_name = format!("{name}.layer{}.{block}", stage + 1);
                layers.push(Bottleneck::new(store, &block_name, cin, *width, stride)?);
                cin = width * EXPANSION;
            }
        }
        Ok(ResNet50 {
            conv1,
            bn1,
            layers,
            l2norm,
        })
    }

    pub fn out_features(&self) -> usize {
        RESNET50_FEATURES
    }

    /// (B, 3, H, W) → (B, 2048).
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.bn1.forward_t(&x.apply(&self.conv1)?, train)?.relu()?;
        let mut h = max_pool_3x3_s2(&h)?;
        for layer in &self.layers {
            h = layer.forward(&h, train)?;
        }
        let pooled = h.flatten_from(2)?.mean(D::Minus1)?;
        if self.l2norm {
            l2_normalize(&pooled)
        } else {
            Ok(pooled)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn strided_conv_matches_candle_and_back_propagates_for_mixed_parity() {
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
            let weight = Tensor::randn(0f32, 1.0, (4, 3, k, k), &dev).unwrap();
            let conv = Conv {
                weight: weight.clone(),
                kernel: k,
                stride: 2,
                padding: p,
            };
            let ours = conv.forward(x.as_tensor()).unwrap();
            let reference = x.as_tensor().conv2d(&weight, p, 2, 1, 1).unwrap();
            assert_eq!(ours.dims(), reference.dims());
            let diff = (ours.clone() - reference)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-4, "k{k} {h}x{w}: {diff}");
            let grads = ours.sum_all().unwrap().backward().unwrap();
            assert_eq!(grads.get(x.as_tensor()).unwrap().dims(), [2, 3, h, w]);
        }
    }
}
