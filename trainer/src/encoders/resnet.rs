//! ResNet-50 visual encoder (docs/reference.md §3.3): torchvision's ResNet-50 (v1.5: the stride sits on the 3×3 convolution of each
//! bottleneck), classification layer removed, global average pooling → 2048 non-negative features, then l2 if
//! `visual_l2norm`.
//!
//! Parameter names are torchvision's (`conv1.weight`, `bn1.running_mean`, `layer3.4.conv2.weight`,
//! `layer2.0.downsample.0.weight`, ...) under the `visual.` prefix, so torchvision checkpoints load by name
//! (BatchNorm's `num_batches_tracked` aside). Random initialisation as torchvision's: kaiming-normal (fan_out,
//! ReLU) convolutions, BatchNorm weight 1 and bias 0.
//!
//! BatchNorm ([`crate::ops::batch_norm`]) uses batch statistics in training (updating the running statistics, momentum
//! 0.1, unbiased variance) and the running statistics in evaluation. The stem's 3×3/stride-2 max-pool is
//! [`crate::ops::max_pool_3x3_s2`], which has a backward pass.
//!
//! Widths are a [`Config`]: [`Config::resnet50`] is the real network; [`Config::from_checkpoint`] reads them off a
//! torchvision state dict (the test fixture is a narrow ResNet-50). [`load_torchvision`] copies a torchvision
//! checkpoint (safetensors, torchvision's own `.pth`, or any other format of [`crate::encoders::weights`]) into a built network's
//! parameters.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, D};

use crate::encoders::weights::Checkpoint;
use crate::error::{Error, Result};
use crate::nn::params::ParamStore;
use crate::nn::BatchNorm;
use crate::ops::l2_normalize_if;
use crate::ops::{conv2d, max_pool_3x3_s2};

/// Output width of the real encoder.
pub const RESNET50_FEATURES: usize = 2048;

/// A bottleneck's output has `EXPANSION` × its width channels.
const EXPANSION: usize = 4;

/// The network's widths: the stem's channels, each stage's bottleneck width ("planes" in torchvision) and its
/// number of blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub stem_width: usize,
    pub widths: [usize; 4],
    pub blocks: [usize; 4],
}

impl Config {
    /// torchvision's `resnet50`.
    pub fn resnet50() -> Self {
        Config {
            stem_width: 64,
            widths: [64, 128, 256, 512],
            blocks: [3, 4, 6, 3],
        }
    }

    /// Width of the pooled features (2048 for ResNet-50).
    pub fn out_features(&self) -> usize {
        self.widths[3] * EXPANSION
    }

    /// The widths of the torchvision ResNet whose state dict is at `path` (a weights file of any format of
    /// [`weights`], or a folder), from the shapes of `conv1.weight` and `layerN.i.conv1.weight` in its headers.
    pub fn from_checkpoint(path: &Path) -> Result<Self> {
        let checkpoint = Checkpoint::open(path)?;
        let shapes = checkpoint.shapes(checkpoint_name)?;
        Self::from_shapes(&shapes).map_err(|message| Error::data(&checkpoint.path, message))
    }

    /// The widths of a torchvision ResNet from its tensors' shapes (under [`checkpoint_name`]s).
    pub fn from_shapes(shapes: &BTreeMap<String, Vec<usize>>) -> std::result::Result<Self, String> {
        Self::infer(|name| shapes.get(name).cloned())
    }

    /// The widths from the shape of each tensor, looked up by its torchvision name.
    fn infer(shape_of: impl Fn(&str) -> Option<Vec<usize>>) -> std::result::Result<Self, String> {
        let out_channels = |name: &str| -> std::result::Result<usize, String> {
            match shape_of(name).as_deref() {
                Some([out, _, _, _]) => Ok(*out),
                Some(other) => Err(format!(
                    "`{name}` has shape {other:?}, a convolution weight needs 4 dims"
                )),
                None => Err(format!(
                    "no tensor `{name}`: not a torchvision ResNet state dict"
                )),
            }
        };
        let stem_width = out_channels("conv1.weight")?;
        let mut widths = [0; 4];
        let mut blocks = [0; 4];
        for stage in 0..4 {
            widths[stage] = out_channels(&format!("layer{}.0.conv1.weight", stage + 1))?;
            blocks[stage] = (0..)
                .take_while(|i| shape_of(&format!("layer{}.{i}.conv1.weight", stage + 1)).is_some())
                .count();
        }
        Ok(Config {
            stem_width,
            widths,
            blocks,
        })
    }

    /// Whether block `block` of stage `stage` has a projection shortcut (torchvision: where the stride or the
    /// channel count changes, i.e. block 0 of every stage unless stem_width == 4 × the first width).
    fn has_downsample(&self, stage: usize, block: usize) -> bool {
        let cin = if stage == 0 {
            self.stem_width
        } else {
            self.widths[stage - 1] * EXPANSION
        };
        block == 0 && (stage > 0 || cin != self.widths[0] * EXPANSION)
    }

    /// Every parameter and buffer name, torchvision's (without a prefix).
    fn names(&self) -> Vec<String> {
        self.shapes().into_keys().collect()
    }

    /// The shape of every parameter and buffer, under torchvision's names (without a prefix): what a checkpoint
    /// of these widths holds, as the network built by [`ResNet50::with_config`] has them.
    pub fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        // (name, out channels, in channels, kernel) of every convolution, (name, channels) of every BatchNorm
        let mut convs = vec![("conv1".to_string(), self.stem_width, 3, 7)];
        let mut norms = vec![("bn1".to_string(), self.stem_width)];
        let mut cin = self.stem_width;
        for stage in 0..4 {
            let width = self.widths[stage];
            let cout = width * EXPANSION;
            for block in 0..self.blocks[stage] {
                let at = format!("layer{}.{block}", stage + 1);
                convs.push((format!("{at}.conv1"), width, cin, 1));
                convs.push((format!("{at}.conv2"), width, width, 3));
                convs.push((format!("{at}.conv3"), cout, width, 1));
                norms.extend([
                    (format!("{at}.bn1"), width),
                    (format!("{at}.bn2"), width),
                    (format!("{at}.bn3"), cout),
                ]);
                if self.has_downsample(stage, block) {
                    convs.push((format!("{at}.downsample.0"), cout, cin, 1));
                    norms.push((format!("{at}.downsample.1"), cout));
                }
                cin = cout;
            }
        }
        let mut shapes = BTreeMap::new();
        for (name, cout, cin, k) in convs {
            shapes.insert(format!("{name}.weight"), vec![cout, cin, k, k]);
        }
        for (name, channels) in norms {
            for part in ["weight", "bias", "running_mean", "running_var"] {
                shapes.insert(format!("{name}.{part}"), vec![channels]);
            }
        }
        shapes
    }
}

/// The name [`load_torchvision`] gives a torchvision tensor: itself, or `None` for what the encoder does not use,
/// the classifier `fc.*` (the encoder ends at the pooled features) and BatchNorm's `num_batches_tracked` counters
/// (momentum is fixed at 0.1).
pub fn checkpoint_name(name: &str) -> Option<String> {
    let unused = name.starts_with("fc.") || name.ends_with(".num_batches_tracked");
    (!unused).then(|| name.to_string())
}

/// A torchvision state dict as [`checkpoint_name`] keeps it, and the file it came from.
fn read_checkpoint(path: &Path) -> Result<(PathBuf, HashMap<String, Tensor>)> {
    let checkpoint = Checkpoint::open(path)?;
    let tensors = checkpoint.read(&Device::Cpu, checkpoint_name)?;
    Ok((checkpoint.path, tensors))
}

/// Copies the torchvision checkpoint `path` (a `state_dict()` in any format of [`weights`]: safetensors,
/// torchvision's `.pth`, a `pytorch_model.bin`, or a folder holding one) into the ResNet built in `store` under
/// `prefix` (`visual`): every convolution and BatchNorm weight, bias and running statistic. `fc.*` and
/// `num_batches_tracked` are ignored; a tensor the network lacks, a network tensor the file lacks and a shape that
/// differs are errors naming the file and the tensor.
pub fn load_torchvision(store: &ParamStore, prefix: &str, path: &Path) -> Result<()> {
    let (path, tensors) = read_checkpoint(path)?;
    let path = path.as_path();
    // The built network's widths, read back from the store: they give the names it must find in the file.
    let built = Config::infer(|name| {
        store
            .get(&format!("{prefix}.{name}"))
            .map(|t| t.dims().to_vec())
    })
    .map_err(|message| Error::Other(format!("no ResNet under `{prefix}`: {message}")))?;
    let expected: BTreeSet<String> = built.names().into_iter().collect();
    if let Some(extra) = tensors.keys().filter(|n| !expected.contains(*n)).min() {
        return Err(Error::data(
            path,
            format!("tensor `{extra}` is not part of this ResNet (widths {built:?})"),
        ));
    }
    for name in &expected {
        let value = tensors.get(name).ok_or_else(|| {
            Error::data(path, format!("tensor `{name}` missing from the checkpoint"))
        })?;
        store.assign(&format!("{prefix}.{name}"), value, path)?;
    }
    Ok(())
}

/// A bias-free 2-D convolution (the [`crate::ops::conv2d`] op).
#[derive(Debug, Clone)]
struct Conv {
    weight: Tensor,
    stride: usize,
    padding: usize,
}

impl Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv2d(x, &self.weight, self.stride, self.padding)
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
        stride,
        padding,
    })
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
        downsample: bool,
    ) -> Result<Self> {
        let cout = width * EXPANSION;
        let downsample = if downsample {
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
                BatchNorm::new(store, &format!("{name}.downsample.1"), cout)?,
            ))
        } else {
            None
        };
        Ok(Bottleneck {
            conv1: conv(store, &format!("{name}.conv1"), cin, width, 1, 1, 0)?,
            bn1: BatchNorm::new(store, &format!("{name}.bn1"), width)?,
            conv2: conv(store, &format!("{name}.conv2"), width, width, 3, stride, 1)?,
            bn2: BatchNorm::new(store, &format!("{name}.bn2"), width)?,
            conv3: conv(store, &format!("{name}.conv3"), width, cout, 1, 1, 0)?,
            bn3: BatchNorm::new(store, &format!("{name}.bn3"), cout)?,
            downsample,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let h = self.bn1.forward_relu(&self.conv1.forward(x)?, train)?;
        let h = self.bn2.forward_relu(&self.conv2.forward(&h)?, train)?;
        let h = self.bn3.forward(&self.conv3.forward(&h)?, train)?;
        let identity = match &self.downsample {
            Some((conv, bn)) => bn.forward(&conv.forward(x)?, train)?,
            None => x.clone(),
        };
        Ok((h + identity)?.relu()?)
    }
}

#[derive(Debug, Clone)]
pub struct ResNet50 {
    conv1: Conv,
    bn1: BatchNorm,
    /// The bottlenecks of each of the four stages.
    stages: Vec<Vec<Bottleneck>>,
    out_features: usize,
    l2norm: bool,
}

impl ResNet50 {
    /// The real ResNet-50, randomly initialised, parameters under `name.`.
    pub fn new(store: &mut ParamStore, name: &str, l2norm: bool) -> Result<Self> {
        Self::with_config(store, name, &Config::resnet50(), l2norm)
    }

    /// A ResNet-50-shaped network of the given widths, randomly initialised, parameters under `name.`.
    pub fn with_config(
        store: &mut ParamStore,
        name: &str,
        cfg: &Config,
        l2norm: bool,
    ) -> Result<Self> {
        let conv1 = conv(store, &format!("{name}.conv1"), 3, cfg.stem_width, 7, 2, 3)?;
        let bn1 = BatchNorm::new(store, &format!("{name}.bn1"), cfg.stem_width)?;
        let mut stages = Vec::new();
        let mut cin = cfg.stem_width;
        for stage in 0..4 {
            let width = cfg.widths[stage];
            let mut blocks = Vec::new();
            for block in 0..cfg.blocks[stage] {
                let stride = if stage > 0 && block == 0 { 2 } else { 1 };
                let block_name = format!("{name}.layer{}.{block}", stage + 1);
                let downsample = cfg.has_downsample(stage, block);
                blocks.push(Bottleneck::new(
                    store,
                    &block_name,
                    cin,
                    width,
                    stride,
                    downsample,
                )?);
                cin = width * EXPANSION;
            }
            stages.push(blocks);
        }
        Ok(ResNet50 {
            conv1,
            bn1,
            stages,
            out_features: cfg.out_features(),
            l2norm,
        })
    }

    /// The network of the torchvision checkpoint `path` (widths read off its shapes) with its weights, under
    /// `name.` in `store`.
    pub fn from_torchvision(
        store: &mut ParamStore,
        name: &str,
        path: &Path,
        l2norm: bool,
    ) -> Result<Self> {
        let cfg = Config::from_checkpoint(path)?;
        let model = Self::with_config(store, name, &cfg, l2norm)?;
        load_torchvision(store, name, path)?;
        Ok(model)
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// The activations after the stem's max-pool and after each of the four stages: (B, 3, H, W) →
    /// [(B, stem, H/4, W/4), (B, 4·w1, H/4, W/4), ..., (B, 4·w4, H/32, W/32)] (sizes rounded up).
    pub fn stages(&self, x: &Tensor, train: bool) -> Result<Vec<Tensor>> {
        let h = self.bn1.forward_relu(&self.conv1.forward(x)?, train)?;
        let mut h = max_pool_3x3_s2(&h)?;
        let mut out = vec![h.clone()];
        for blocks in &self.stages {
            for block in blocks {
                h = block.forward(&h, train)?;
            }
            out.push(h.clone());
        }
        Ok(out)
    }

    /// The stem (conv, BatchNorm, ReLU, max-pool): (B, 3, H, W) → (B, stem, H/4, W/4). With [`Self::run_stages`]
    /// and [`Self::pool`], the network in pieces, for a block between two stages (MESM's sparse attention).
    pub fn stem(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        max_pool_3x3_s2(&self.bn1.forward_relu(&self.conv1.forward(x)?, train)?)
    }

    /// The stages `stages` (0-based, of 4) over `h`, the output of the stem or of the stage before them.
    pub fn run_stages(
        &self,
        h: &Tensor,
        stages: std::ops::Range<usize>,
        train: bool,
    ) -> Result<Tensor> {
        let mut h = h.clone();
        for blocks in &self.stages[stages] {
            for block in blocks {
                h = block.forward(&h, train)?;
            }
        }
        Ok(h)
    }

    /// The channels after stage `stage` (0-based): 4 × its width.
    pub fn stage_channels(&self, stage: usize) -> Result<usize> {
        let block = self.stages.get(stage).and_then(|b| b.last());
        let block = block.ok_or_else(|| Error::Other(format!("ResNet without stage {stage}")))?;
        Ok(block.conv3.weight.dim(0)?)
    }

    /// Global average pool of the last stage's (B, C, h, w) → (B, C), l2-normalised if configured.
    pub fn pool(&self, last: &Tensor) -> Result<Tensor> {
        l2_normalize_if(last.flatten_from(2)?.mean(D::Minus1)?, self.l2norm)
    }

    /// (B, 3, H, W) → (B, 2048): global average pool of the last stage (l2-normalised if configured).
    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let stages = self.stages(x, train)?;
        let last = stages
            .last()
            .ok_or_else(|| Error::Other("ResNet without stages".into()))?;
        let pooled = last.flatten_from(2)?.mean(D::Minus1)?;
        l2_normalize_if(pooled, self.l2norm)
    }
}
