//! wav2vec 2.0 (HF `facebook/wav2vec2-base` layout: group-norm feature encoder, post-LN transformer), trainable,
//! and the reference's wav2vec2 audio encoder (docs/reference.md §3.5).
//!
//! ```text
//! x (B, N) → conv0 → GroupNorm → GELU → conv1..6 → GELU        feature encoder, (B, C, T), T = 49 per 16 000
//!   → transpose → LayerNorm → Linear → dropout                   feature projection, (B, T, H)
//!   → [training: SpecAugment time masks ← masked_spec_embed]
//!   → h + GELU(SamePad(pos_conv(h))) → LayerNorm → dropout       positional conv embedding
//!   → layers (post-LN): h = LN(h + attn(h)); h = LN(h + FF(h))   with LayerDrop in training
//!   → last_hidden_state (B, T, H) → concat(mean_t, max_t) (B, 2H) → [Linear] → [l2]
//! ```
//!
//! The positional convolution (kernel 128, 16 groups, padding 64) is weight-normalised: its effective kernel is
//! `g · v / ‖v‖` with the norm taken over the output and input channels separately for each kernel position
//! (PyTorch `weight_norm(dim=2)`), rebuilt at every forward so that `weight_g` and `weight_v` both train. The even
//! kernel gives one frame too many: the LAST is dropped (HF `SamePad`).
//!
//! All hyper-parameters come from the checkpoint's `config.json`. In training (`train = true`) the config's
//! dropouts, LayerDrop and SpecAugment-style masking (`mask_time_prob`, `mask_time_length`, `mask_time_min_masks`,
//! and feature masking when `mask_feature_prob` > 0) apply, with the draws of HF's `_compute_mask_indices`, from the
//! model's own seeded generator. No attention mask: the reference feeds zero-padded audio as signal.
//!
//! Gradient-safe throughout. The big tensors go through ops with their own backward — convolutions
//! ([`crate::ops::conv1d`], channels-last, so no full-size transposes), the per-channel GroupNorm fused with GELU
//! ([`crate::ops::group_norm`]), GELU ([`crate::ops::gelu`]), the attention's softmax + dropout
//! ([`crate::ops::softmax_dropout`]) and LayerNorm ([`crate::ops::layer_norm`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::encoders::hub;
use crate::encoders::weights::{self, Checkpoint};
use crate::error::{Error, Result};
use crate::nn::{dropout_shared, LayerNorm};
use crate::ops::conv1d;
use crate::ops::gelu_erf;
use crate::ops::group_norm_per_channel;
use crate::ops::l2_normalize_if;
use crate::ops::softmax_dropout;

fn d_eps() -> f64 {
    1e-5
}
fn d_gelu() -> String {
    "gelu".to_string()
}
fn d_group() -> String {
    "group".to_string()
}
fn d_drop() -> f64 {
    0.1
}
fn d_true() -> bool {
    true
}
fn d_ten() -> usize {
    10
}
fn d_two() -> usize {
    2
}

/// The checkpoint's own `config.json` (HF `Wav2Vec2Config`); keys not listed are ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "d_gelu")]
    pub hidden_act: String,
    #[serde(default = "d_gelu")]
    pub feat_extract_activation: String,
    #[serde(default = "d_group")]
    pub feat_extract_norm: String,
    pub conv_dim: Vec<usize>,
    pub conv_kernel: Vec<usize>,
    pub conv_stride: Vec<usize>,
    #[serde(default)]
    pub conv_bias: bool,
    pub num_conv_pos_embeddings: usize,
    pub num_conv_pos_embedding_groups: usize,
    #[serde(default)]
    pub do_stable_layer_norm: bool,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d_drop")]
    pub hidden_dropout: f64,
    #[serde(default = "d_drop")]
    pub attention_dropout: f64,
    #[serde(default)]
    pub activation_dropout: f64,
    #[serde(default = "d_drop")]
    pub feat_proj_dropout: f64,
    #[serde(default = "d_drop")]
    pub layerdrop: f64,
    #[serde(default = "d_true")]
    pub apply_spec_augment: bool,
    #[serde(default)]
    pub mask_time_prob: f64,
    #[serde(default = "d_ten")]
    pub mask_time_length: usize,
    #[serde(default = "d_two")]
    pub mask_time_min_masks: usize,
    #[serde(default)]
    pub mask_feature_prob: f64,
    #[serde(default = "d_ten")]
    pub mask_feature_length: usize,
    #[serde(default)]
    pub mask_feature_min_masks: usize,
}

impl Config {
    /// Reads `config.json` and refuses the variants this file does not implement.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: Config = serde_json::from_str(&text)
            .map_err(|e| Error::data(path, format!("not a wav2vec2 config.json: {e}")))?;
        let bad = |m: String| Err(Error::data(path, m));
        if cfg.feat_extract_norm != "group" || cfg.do_stable_layer_norm {
            return bad(format!(
                "feat_extract_norm `{}` / do_stable_layer_norm {}: only the base layout (group, false) is \
                 implemented",
                cfg.feat_extract_norm, cfg.do_stable_layer_norm
            ));
        }
        let n = cfg.conv_dim.len();
        if n == 0 || cfg.conv_kernel.len() != n || cfg.conv_stride.len() != n {
            return bad(
                "conv_dim, conv_kernel and conv_stride must be non-empty and of equal length"
                    .into(),
            );
        }
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return bad("hidden_size must be a multiple of num_attention_heads".into());
        }
        if cfg.num_conv_pos_embedding_groups == 0
            || !cfg
                .hidden_size
                .is_multiple_of(cfg.num_conv_pos_embedding_groups)
        {
            return bad("hidden_size must be a multiple of num_conv_pos_embedding_groups".into());
        }
        for act in [&cfg.hidden_act, &cfg.feat_extract_activation] {
            Activation::from_name(act).map_err(|m| Error::data(path, m))?;
        }
        Ok(cfg)
    }

    /// `facebook/wav2vec2-base`'s architecture and regularisation, for random-weight models (benchmarks).
    pub fn base() -> Self {
        Config {
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: d_gelu(),
            feat_extract_activation: d_gelu(),
            feat_extract_norm: d_group(),
            conv_dim: vec![512; 7],
            conv_kernel: vec![10, 3, 3, 3, 3, 2, 2],
            conv_stride: vec![5, 2, 2, 2, 2, 2, 2],
            conv_bias: false,
            num_conv_pos_embeddings: 128,
            num_conv_pos_embedding_groups: 16,
            do_stable_layer_norm: false,
            layer_norm_eps: 1e-5,
            hidden_dropout: 0.1,
            attention_dropout: 0.1,
            activation_dropout: 0.0,
            feat_proj_dropout: 0.1,
            layerdrop: 0.05,
            apply_spec_augment: true,
            mask_time_prob: 0.05,
            mask_time_length: 10,
            mask_time_min_masks: 2,
            mask_feature_prob: 0.0,
            mask_feature_length: 10,
            mask_feature_min_masks: 0,
        }
    }

    /// Frames out of the feature encoder for `samples` input samples (`⌊(n − k)/s⌋ + 1` per conv).
    pub fn frames(&self, samples: usize) -> usize {
        self.conv_kernel
            .iter()
            .zip(&self.conv_stride)
            .fold(
                samples,
                |n, (&k, &s)| if n < k { 0 } else { (n - k) / s + 1 },
            )
    }
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    GeluErf,
    GeluTanh,
    Relu,
}

impl Activation {
    fn from_name(name: &str) -> std::result::Result<Self, String> {
        match name {
            "gelu" => Ok(Activation::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            other => Err(format!(
                "activation `{other}` is not supported (expected gelu, gelu_new or relu)"
            )),
        }
    }

    fn forward(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::GeluErf => gelu_erf(x)?,
            Activation::GeluTanh => crate::ops::gelu_tanh(x)?,
            Activation::Relu => x.relu()?,
        })
    }
}

type Rng8 = Mutex<ChaCha8Rng>;

/// `y = x·Wᵀ + b`, W stored `[out, in]` (PyTorch `nn.Linear`).
#[derive(Debug, Clone)]
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn new(d_in: usize, d_out: usize, vb: VarBuilder) -> Result<Self> {
        let bound = 1.0 / (d_in as f64).sqrt();
        let init = candle_nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        Ok(Linear {
            weight: vb.get_with_hints((d_out, d_in), "weight", init)?,
            bias: vb.get_with_hints(d_out, "bias", init)?,
        })
    }

    /// Any rank; the last dimension is the feature one. One 2-D matmul rather than a broadcasted batched one.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        let d_in = dims.pop().unwrap_or(0);
        let rows: usize = dims.iter().product();
        let y = x
            .reshape((rows, d_in))?
            .matmul(&self.weight.t()?)?
            .broadcast_add(&self.bias)?;
        dims.push(self.weight.dim(0)?);
        Ok(y.reshape(dims)?)
    }
}

struct ConvLayer {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    /// GroupNorm's (γ, β) on layer 0 (one group per channel)
    norm: Option<(Tensor, Tensor)>,
    activation: Activation,
}

impl ConvLayer {
    fn new(cfg: &Config, i: usize, vb: VarBuilder) -> Result<Self> {
        let c_in = if i == 0 { 1 } else { cfg.conv_dim[i - 1] };
        let c_out = cfg.conv_dim[i];
        let k = cfg.conv_kernel[i];
        let bound = 1.0 / ((c_in * k) as f64).sqrt();
        let init = candle_nn::Init::Uniform {
            lo: -bound,
            up: bound,
        };
        let conv = vb.pp("conv");
        let weight = conv.get_with_hints((c_out, c_in, k), "weight", init)?;
        let bias = if cfg.conv_bias {
            Some(conv.get_with_hints(c_out, "bias", init)?)
        } else {
            None
        };
        // HF's GroupNormConvLayer: one group per channel, PyTorch's default eps (not layer_norm_eps).
        let norm = if i == 0 {
            let ln = vb.pp("layer_norm");
            Some((
                ln.get_with_hints(c_out, "weight", candle_nn::Init::Const(1.0))?,
                ln.get_with_hints(c_out, "bias", candle_nn::Init::Const(0.0))?,
            ))
        } else {
            None
        };
        Ok(ConvLayer {
            weight,
            bias,
            stride: cfg.conv_stride[i],
            norm,
            activation: Activation::from_name(&cfg.feat_extract_activation)
                .map_err(Error::Other)?,
        })
    }

    /// Channels-last (B, L, C_in) → (B, T, C_out).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.bias.is_none() && self.norm.is_none() {
            if let Activation::GeluErf = self.activation {
                return conv1d(x, &self.weight, self.stride, 0, 1, true);
            }
        }
        let mut h = conv1d(x, &self.weight, self.stride, 0, 1, false)?;
        if let Some(b) = &self.bias {
            h = h.broadcast_add(b)?;
        }
        match (&self.norm, self.activation) {
            (Some((gamma, beta)), Activation::GeluErf) => {
                group_norm_per_channel(&h, gamma, beta, 1e-5, true)
            }
            (Some((gamma, beta)), activation) => {
                activation.forward(&group_norm_per_channel(&h, gamma, beta, 1e-5, false)?)
            }
            (None, activation) => activation.forward(&h),
        }
    }
}

struct FeatureEncoder {
    layers: Vec<ConvLayer>,
}

impl FeatureEncoder {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let layers = (0..cfg.conv_dim.len())
            .map(|i| ConvLayer::new(cfg, i, vb.pp(format!("conv_layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(FeatureEncoder { layers })
    }

    /// (B, N) → (B, T, C), channels-last throughout (see [`crate::ops::conv1d`]).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.unsqueeze(2)?;
        for layer in &self.layers {
            h = layer.forward(&h)?;
        }
        Ok(h)
    }
}

struct FeatureProjection {
    layer_norm: LayerNorm,
    projection: Linear,
    dropout: f64,
}

impl FeatureProjection {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let c = *cfg.conv_dim.last().unwrap_or(&cfg.hidden_size);
        Ok(FeatureProjection {
            layer_norm: LayerNorm::load(c, cfg.layer_norm_eps, vb.pp("layer_norm"))?,
            projection: Linear::new(c, cfg.hidden_size, vb.pp("projection"))?,
            dropout: cfg.feat_proj_dropout,
        })
    }

    /// (projected hidden states, layer-normed features): HF returns the latter as `extract_features`.
    fn forward(&self, x: &Tensor, train: bool, rng: &Rng8) -> Result<(Tensor, Tensor)> {
        let normed = self.layer_norm.forward(x)?;
        let h = self.projection.forward(&normed)?;
        Ok((dropout_shared(&h, self.dropout, train, rng)?, normed))
    }
}

struct PositionalConvEmbedding {
    weight_g: Tensor,
    weight_v: Tensor,
    bias: Tensor,
    kernel: usize,
    groups: usize,
    activation: Activation,
}

impl PositionalConvEmbedding {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (h, k, g) = (
            cfg.hidden_size,
            cfg.num_conv_pos_embeddings,
            cfg.num_conv_pos_embedding_groups,
        );
        let conv = vb.pp("conv");
        let std = (4.0 / (k * h) as f64).sqrt();
        Ok(PositionalConvEmbedding {
            weight_g: conv.get_with_hints((1, 1, k), "weight_g", candle_nn::Init::Const(1.0))?,
            weight_v: conv.get_with_hints(
                (h, h / g, k),
                "weight_v",
                candle_nn::Init::Randn {
                    mean: 0.0,
                    stdev: std,
                },
            )?,
            bias: conv.get_with_hints(h, "bias", candle_nn::Init::Const(0.0))?,
            kernel: k,
            groups: g,
            activation: Activation::from_name(&cfg.feat_extract_activation)
                .map_err(Error::Other)?,
        })
    }

    /// (B, T, H) → (B, T, H)
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // weight_norm(dim=2): one norm per kernel position, over output and input channels.
        let norm = self
            .weight_v
            .sqr()?
            .sum_keepdim(0)?
            .sum_keepdim(1)?
            .sqrt()?;
        let weight = self
            .weight_v
            .broadcast_mul(&self.weight_g.broadcast_div(&norm)?)?;
        let h = conv1d(x, &weight, 1, self.kernel / 2, self.groups, false)?;
        let h = h.broadcast_add(&self.bias)?;
        let t = x.dim(1)?;
        // SamePad: an even kernel yields T + 1 frames; drop the last.
        let h = h.narrow(1, 0, t)?;
        self.activation.forward(&h)
    }
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
    dropout: f64,
}

impl Attention {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Attention {
            q_proj: Linear::new(h, h, vb.pp("q_proj"))?,
            k_proj: Linear::new(h, h, vb.pp("k_proj"))?,
            v_proj: Linear::new(h, h, vb.pp("v_proj"))?,
            out_proj: Linear::new(h, h, vb.pp("out_proj"))?,
            heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
            dropout: cfg.attention_dropout,
        })
    }

    fn forward(&self, x: &Tensor, train: bool, rng: &Rng8) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let split = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, t, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split((self.q_proj.forward(x)? * (self.head_dim as f64).powf(-0.5))?)?;
        let k = split(self.k_proj.forward(x)?)?;
        let v = split(self.v_proj.forward(x)?)?;
        let scores = q.matmul(&k.t()?.contiguous()?)?;
        let weights = softmax_dropout(&scores, self.dropout, train, rng)?;
        let mixed = weights
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, t, h))?;
        self.out_proj.forward(&mixed)
    }
}

struct EncoderLayer {
    attention: Attention,
    layer_norm: LayerNorm,
    intermediate_dense: Linear,
    output_dense: Linear,
    final_layer_norm: LayerNorm,
    activation: Activation,
    hidden_dropout: f64,
    activation_dropout: f64,
}

impl EncoderLayer {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (h, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        let ff = vb.pp("feed_forward");
        Ok(EncoderLayer {
            attention: Attention::new(cfg, vb.pp("attention"))?,
            layer_norm: LayerNorm::load(h, eps, vb.pp("layer_norm"))?,
            intermediate_dense: Linear::new(h, i, ff.pp("intermediate_dense"))?,
            output_dense: Linear::new(i, h, ff.pp("output_dense"))?,
            final_layer_norm: LayerNorm::load(h, eps, vb.pp("final_layer_norm"))?,
            activation: Activation::from_name(&cfg.hidden_act).map_err(Error::Other)?,
            hidden_dropout: cfg.hidden_dropout,
            activation_dropout: cfg.activation_dropout,
        })
    }

    /// Post-LN: `h = LN(h + attn(h)); h = LN(h + FF(h))`.
    fn forward(&self, x: &Tensor, train: bool, rng: &Rng8) -> Result<Tensor> {
        let a = dropout_shared(
            &self.attention.forward(x, train, rng)?,
            self.hidden_dropout,
            train,
            rng,
        )?;
        let h = self.layer_norm.forward(&(x + a)?)?;
        let f = self
            .activation
            .forward(&self.intermediate_dense.forward(&h)?)?;
        let f = dropout_shared(&f, self.activation_dropout, train, rng)?;
        let f = dropout_shared(
            &self.output_dense.forward(&f)?,
            self.hidden_dropout,
            train,
            rng,
        )?;
        self.final_layer_norm.forward(&(h + f)?)
    }
}

/// What one forward produces.
pub struct Wav2Vec2Output {
    /// conv feature encoder output after the feature projection's LayerNorm (B, T, C), as HF's
    /// `extract_features` (the input of the projection's Linear)
    pub extract_features: Tensor,
    /// input of layer 0 (after the positional embedding and `encoder.layer_norm`), then each layer's output
    pub hidden_states: Vec<Tensor>,
    /// (B, T, H)
    pub last_hidden_state: Tensor,
}

/// The wav2vec 2.0 model (HF `Wav2Vec2Model`), weights named as in the checkpoint without the `wav2vec2.` prefix.
pub struct Wav2Vec2Model {
    feature_extractor: FeatureEncoder,
    feature_projection: FeatureProjection,
    masked_spec_embed: Option<Tensor>,
    pos_conv_embed: PositionalConvEmbedding,
    layer_norm: LayerNorm,
    layers: Vec<EncoderLayer>,
    cfg: Config,
    rng: Rng8,
}

impl Wav2Vec2Model {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let masks = cfg.mask_time_prob > 0.0 || cfg.mask_feature_prob > 0.0;
        let masked_spec_embed = if masks {
            Some(vb.get_with_hints(
                cfg.hidden_size,
                "masked_spec_embed",
                candle_nn::Init::Uniform { lo: 0.0, up: 1.0 },
            )?)
        } else {
            None
        };
        let enc = vb.pp("encoder");
        Ok(Wav2Vec2Model {
            feature_extractor: FeatureEncoder::new(cfg, vb.pp("feature_extractor"))?,
            feature_projection: FeatureProjection::new(cfg, vb.pp("feature_projection"))?,
            masked_spec_embed,
            pos_conv_embed: PositionalConvEmbedding::new(cfg, enc.pp("pos_conv_embed"))?,
            layer_norm: LayerNorm::load(cfg.hidden_size, cfg.layer_norm_eps, enc.pp("layer_norm"))?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| EncoderLayer::new(cfg, enc.pp(format!("layers.{i}"))))
                .collect::<Result<Vec<_>>>()?,
            cfg: cfg.clone(),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(0)),
        })
    }

    /// The generator of the dropout and SpecAugment masks.
    pub fn rng(&self) -> &Mutex<ChaCha8Rng> {
        &self.rng
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Reseeds the generator of dropout, LayerDrop and masking.
    pub fn set_seed(&self, seed: u64) {
        if let Ok(mut rng) = self.rng.lock() {
            *rng = ChaCha8Rng::seed_from_u64(seed);
        }
    }

    /// Raw samples (B, N) → hidden states.
    pub fn forward(&self, input_values: &Tensor, train: bool) -> Result<Wav2Vec2Output> {
        let (b, n) = input_values.dims2()?;
        let t = self.cfg.frames(n);
        if t == 0 {
            return Err(Error::Other(format!(
                "wav2vec2 input of {n} samples is too short for one frame"
            )));
        }
        let features = self.feature_extractor.forward(input_values)?;
        let (mut h, extract_features) = self
            .feature_projection
            .forward(&features, train, &self.rng)?;
        if train && self.cfg.apply_spec_augment {
            h = self.mask_hidden_states(&h, b, t)?;
        }
        let h = (&h + self.pos_conv_embed.forward(&h)?)?;
        let h = self.layer_norm.forward(&h)?;
        let mut h = dropout_shared(&h, self.cfg.hidden_dropout, train, &self.rng)?;
        let mut hidden_states = vec![h.clone()];
        for layer in &self.layers {
            let skip = train && self.cfg.layerdrop > 0.0 && {
                let mut rng = self.lock_rng()?;
                rng.gen::<f64>() < self.cfg.layerdrop
            };
            if !skip {
                h = layer.forward(&h, train, &self.rng)?;
            }
            hidden_states.push(h.clone());
        }
        Ok(Wav2Vec2Output {
            extract_features,
            hidden_states,
            last_hidden_state: h,
        })
    }

    fn lock_rng(&self) -> Result<std::sync::MutexGuard<'_, ChaCha8Rng>> {
        self.rng
            .lock()
            .map_err(|_| Error::Other("wav2vec2 generator poisoned".into()))
    }

    /// SpecAugment as HF `_mask_hidden_states`: masked time steps take `masked_spec_embed`, masked feature
    /// channels become 0.
    fn mask_hidden_states(&self, h: &Tensor, b: usize, t: usize) -> Result<Tensor> {
        let c = &self.cfg;
        let mut h = h.clone();
        if c.mask_time_prob > 0.0 {
            if let Some(embed) = &self.masked_spec_embed {
                let mask = {
                    let mut rng = self.lock_rng()?;
                    compute_mask_indices(
                        &mut rng,
                        b,
                        t,
                        c.mask_time_prob,
                        c.mask_time_length,
                        c.mask_time_min_masks,
                    )
                };
                let m: Vec<f32> = mask
                    .concat()
                    .iter()
                    .map(|&x| if x { 1.0 } else { 0.0 })
                    .collect();
                let m = Tensor::from_vec(m, (b, t, 1), h.device())?;
                let keep = m.affine(-1.0, 1.0)?;
                h = (h.broadcast_mul(&keep)? + m.broadcast_mul(&embed.reshape((1, 1, ()))?)?)?;
            }
        }
        if c.mask_feature_prob > 0.0 {
            let hidden = c.hidden_size;
            let mask = {
                let mut rng = self.lock_rng()?;
                compute_mask_indices(
                    &mut rng,
                    b,
                    hidden,
                    c.mask_feature_prob,
                    c.mask_feature_length,
                    c.mask_feature_min_masks,
                )
            };
            let keep: Vec<f32> = mask
                .concat()
                .iter()
                .map(|&x| if x { 0.0 } else { 1.0 })
                .collect();
            let keep = Tensor::from_vec(keep, (b, 1, hidden), h.device())?;
            h = h.broadcast_mul(&keep)?;
        }
        Ok(h)
    }
}

/// HF `_compute_mask_indices` without an attention mask: per row, `max(⌊p·T/len + ε⌋, min_masks)` spans of
/// `len` steps with distinct random starts in `[0, T − len]` (ε ~ U(0,1) drawn once per batch), ends clipped.
fn compute_mask_indices(
    rng: &mut ChaCha8Rng,
    batch: usize,
    t: usize,
    prob: f64,
    len: usize,
    min_masks: usize,
) -> Vec<Vec<bool>> {
    let mut mask = vec![vec![false; t]; batch];
    if len == 0 || len > t {
        return mask;
    }
    let epsilon: f64 = rng.gen();
    let mut spans = ((prob * t as f64 / len as f64 + epsilon) as usize).max(min_masks);
    if spans * len > t {
        spans = t / len;
    }
    let starts = t - (len - 1);
    spans = spans.min(starts);
    for row in mask.iter_mut() {
        for start in sample(rng, starts, spans) {
            for step in row.iter_mut().skip(start).take(len) {
                *step = true;
            }
        }
    }
    mask
}

/// The reference's audio encoder: `concat(mean_t, max_t)` of the last hidden state, an optional Linear
/// projection (`projection.*`, created when `audio_out_features` > 0), then l2 if asked.
pub struct Wav2Vec2Encoder {
    pub model: Wav2Vec2Model,
    projection: Option<Linear>,
    l2: bool,
}

impl Wav2Vec2Encoder {
    /// `out_features` ≤ 0 or `None`: no projection, 2 × hidden outputs.
    pub fn new(
        model: Wav2Vec2Model,
        out_features: Option<i64>,
        l2: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let pooled = 2 * model.cfg.hidden_size;
        let projection = match out_features {
            Some(out) if out > 0 => Some(Linear::new(pooled, out as usize, vb.pp("projection"))?),
            _ => None,
        };
        Ok(Wav2Vec2Encoder {
            model,
            projection,
            l2,
        })
    }

    pub fn out_features(&self) -> usize {
        match &self.projection {
            Some(p) => p.weight.dims()[0],
            None => 2 * self.model.cfg.hidden_size,
        }
    }

    /// (B, N) samples → (B, out_features).
    pub fn forward(&self, input_values: &Tensor, train: bool) -> Result<Tensor> {
        let out = self.model.forward(input_values, train)?;
        self.pool(&out.last_hidden_state)
    }

    /// `concat(mean over time, max over time)` of (B, T, H), then projection and l2.
    pub fn pool(&self, last_hidden_state: &Tensor) -> Result<Tensor> {
        let pooled = Tensor::cat(
            &[&last_hidden_state.mean(1)?, &last_hidden_state.max(1)?],
            1,
        )?;
        let out = match &self.projection {
            Some(p) => p.forward(&pooled)?,
            None => pooled,
        };
        l2_normalize_if(out, self.l2)
    }
}

/// A loaded wav2vec2 encoder, its trainable variables (named as the model names them) and its folder.
pub struct LoadedWav2Vec2 {
    pub encoder: Wav2Vec2Encoder,
    pub vars: VarMap,
    pub dir: PathBuf,
}

/// Renames a checkpoint tensor: the encoder is everything under `wav2vec2.` when the file has that prefix
/// (pre-training/CTC heads are the rest), and torch ≥ 2.1's weight-norm names become `weight_g` / `weight_v`.
fn rename(name: &str, prefixed: bool) -> Option<String> {
    let name = if prefixed {
        name.strip_prefix("wav2vec2.")?
    } else {
        name
    };
    let name = name
        .replace(".parametrizations.weight.original0", ".weight_g")
        .replace(".parametrizations.weight.original1", ".weight_v");
    Some(name)
}

/// How [`load`] names the tensors of `checkpoint`: [`rename`]d, with the `wav2vec2.` prefix stripped when the
/// file has it, and without `masked_spec_embed` when `cfg` masks nothing (the model only asks for it to mask).
pub fn renamer(checkpoint: &Checkpoint, cfg: &Config) -> Result<impl Fn(&str) -> Option<String>> {
    let inventory = checkpoint.inventory()?;
    let prefixed = inventory
        .shapes
        .keys()
        .chain(inventory.unreadable.keys())
        .any(|n| n.starts_with("wav2vec2."));
    let masks = cfg.mask_time_prob > 0.0 || cfg.mask_feature_prob > 0.0;
    Ok(move |name: &str| rename(name, prefixed).filter(|n| masks || n != "masked_spec_embed"))
}

/// The shape of every checkpoint tensor [`load`] needs for `cfg` (the encoder without its optional projection),
/// under the names [`renamer`] gives.
pub fn expected_shapes(cfg: &Config) -> Result<BTreeMap<String, Vec<usize>>> {
    hub::requested_shapes(|vb| Wav2Vec2Model::new(cfg, vb).map(|_| ()))
}

/// Loads `config.json` and the weights (any format of [`weights`]) from a model folder (see [`hub::resolve`]);
/// `out_features` and `l2` as [`Wav2Vec2Encoder::new`]; `seed` seeds the dropout / LayerDrop / masking generator
/// (the optional projection's initial values come from candle's generator). A tensor missing, left over or of
/// another shape than config.json says is an error naming it.
pub fn load(
    dir: &Path,
    out_features: Option<i64>,
    l2: bool,
    device: &Device,
    seed: u64,
) -> Result<LoadedWav2Vec2> {
    let cfg = Config::from_file(&dir.join("config.json"))?;
    let checkpoint = Checkpoint::open(dir)?;
    let rename = renamer(&checkpoint, &cfg)?;
    weights::ensure_matches(
        &checkpoint.path,
        weights::compare_shapes(
            &expected_shapes(&cfg)?,
            &checkpoint.shapes(&rename)?,
            "config.json",
        ),
    )?;
    let tensors = checkpoint.read(device, &rename)?;
    let vars = hub::CheckpointVars::new(&checkpoint.path, tensors)?;
    let vb = vars.var_builder(device);
    let model = Wav2Vec2Model::new(&cfg, vb.clone())?;
    let encoder = Wav2Vec2Encoder::new(model, out_features, l2, vb)?;
    let vars = vars.finish(&["projection."])?;
    encoder.model.set_seed(seed);
    Ok(LoadedWav2Vec2 {
        encoder,
        vars,
        dir: dir.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_masks_are_whole_spans_as_many_as_hf_draws() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..50 {
            // Base-model values on the reference's shortest input: ⌊0.05·468/10 + ε⌋ ∈ {2, 3} spans of 10.
            let mask = compute_mask_indices(&mut rng, 2, 468, 0.05, 10, 2);
            for row in &mask {
                let masked = row.iter().filter(|&&m| m).count();
                assert!((10..=30).contains(&masked), "{masked} masked frames");
                // every run of masked frames is at least one span long
                let mut run = 0;
                for &m in row.iter().chain([false].iter()) {
                    if m {
                        run += 1;
                    } else {
                        assert!(run == 0 || run >= 10, "a run of {run} frames");
                        run = 0;
                    }
                }
            }
        }
        // min_masks forces spans even when p·T/len rounds to 0; never more frames than fit.
        let mask = compute_mask_indices(&mut rng, 1, 49, 0.0, 10, 2);
        assert!(mask[0].iter().filter(|&&m| m).count() >= 10);
        let mask = compute_mask_indices(&mut rng, 1, 12, 0.9, 10, 2);
        assert_eq!(
            mask[0].iter().filter(|&&m| m).count(),
            10,
            "only one span fits in 12 frames"
        );
    }

    #[test]
    fn frames_follow_the_conv_stack() {
        let cfg = Config::base();
        assert_eq!(cfg.frames(16_000), 49);
        assert_eq!(cfg.frames(150_000), 468);
        assert_eq!(cfg.frames(200_000), 624);
        assert_eq!(cfg.frames(250_000), 781);
    }
}
