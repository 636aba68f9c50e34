//! GPT-2 (HF `gpt2` layout), trainable, and the reference's GPT-2 text encoder (docs/reference.md §3.2).
//!
//! ```text
//! h₀ = wte[ids] + wpe[0..L)                       (B, L, E)
//! hₗ = hₗ₋₁ + attn(ln_1(hₗ₋₁));  hₗ += mlp(ln_2(hₗ))  for each of the n_layer blocks
//! last_hidden_state = ln_f(h_n)                   (B, L, E)
//! encoder output    = last_hidden_state[b, len_b − 1]   (B, E), then l2 if asked
//! ```
//!
//! Attention is causal and also masks padding keys (right padding, so position ids stay 0..L−1); scores are scaled
//! by 1/√head_dim. Attention and MLP weights are HF `Conv1D`s, stored `[in, out]` (`y = x·W + b`, the transpose of a
//! `Linear`): they are used as stored, so the checkpoint loads by name with no mapping. The MLP's activation is
//! `gelu_new` (tanh approximation) for every released GPT-2.
//!
//! The reference adds a `[PAD]` token (id = the checkpoint's vocab_size, 50257 for `gpt2`), so the model's token
//! embedding has ONE MORE row than the checkpoint's `wte.weight`: [`load`] appends a N(0, 0.02) row. The row only
//! ever sits at masked padding positions.
//!
//! Everything is built from primitives that back-propagate (LayerNorm via `ops::layer_norm_slow`, softmax via
//! `ops::softmax`): candle's fused kernels silently drop gradients. Dropout (embd/attn/resid_pdrop from the
//! config) is active only when `train` is true; its masks come from the model's own seeded generator.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::encoders::hub;
use crate::encoders::weights::{self, Checkpoint};
use crate::error::{Error, Result};
use crate::nn::{dropout_shared, LayerNorm};
use crate::ops::l2_normalize_if;
use crate::ops::softmax_dropout;

fn default_pdrop() -> f64 {
    0.1
}
fn default_eps() -> f64 {
    1e-5
}
fn default_activation() -> String {
    "gelu_new".to_string()
}
fn default_true() -> bool {
    true
}

/// The checkpoint's own `config.json` (HF `GPT2Config`); keys not listed are ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_activation")]
    pub activation_function: String,
    #[serde(default = "default_pdrop")]
    pub resid_pdrop: f64,
    #[serde(default = "default_pdrop")]
    pub embd_pdrop: f64,
    #[serde(default = "default_pdrop")]
    pub attn_pdrop: f64,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_true")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
}

impl Config {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: Config = serde_json::from_str(&text)
            .map_err(|e| Error::data(path, format!("not a GPT-2 config.json: {e}")))?;
        if cfg.n_head == 0 || !cfg.n_embd.is_multiple_of(cfg.n_head) {
            return Err(Error::data(
                path,
                format!(
                    "n_embd {} is not a multiple of n_head {}",
                    cfg.n_embd, cfg.n_head
                ),
            ));
        }
        Activation::from_name(&cfg.activation_function).map_err(|m| Error::data(path, m))?;
        Ok(cfg)
    }

    /// HF `gpt2` (GPT-2 small, 124 M parameters), for random-weight models (benchmarks).
    pub fn gpt2_small() -> Self {
        Config {
            vocab_size: 50257,
            n_positions: 1024,
            n_embd: 768,
            n_layer: 12,
            n_head: 12,
            n_inner: None,
            activation_function: default_activation(),
            resid_pdrop: 0.1,
            embd_pdrop: 0.1,
            attn_pdrop: 0.1,
            layer_norm_epsilon: 1e-5,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
        }
    }

    /// Id of the added `[PAD]` token: the first id past the checkpoint's vocabulary.
    /// The tokenizer's `[PAD]` must be the embedding row the model appends (id = checkpoint vocab_size), or
    /// padding would index a real token's embedding; `dir` is the model folder, for the message.
    pub fn check_tokenizer(
        &self,
        tokenizer: &crate::data::tokenizer::Gpt2Tokenizer,
        dir: &Path,
    ) -> Result<()> {
        let expected = self.pad_token_id();
        if tokenizer.pad_id() != expected {
            return Err(Error::data(
                dir,
                format!(
                    "the tokenizer's [PAD] id is {} but the model's vocabulary has {} tokens (expected [PAD] = {})",
                    tokenizer.pad_id(),
                    self.vocab_size,
                    expected
                ),
            ));
        }
        Ok(())
    }

    pub fn pad_token_id(&self) -> u32 {
        self.vocab_size as u32
    }

    fn inner_dim(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }
}

#[derive(Debug, Clone, Copy)]
enum Activation {
    /// tanh approximation (`gelu_new`, `gelu_pytorch_tanh`)
    GeluTanh,
    /// exact erf form (`gelu`)
    GeluErf,
    Relu,
}

impl Activation {
    fn from_name(name: &str) -> std::result::Result<Self, String> {
        match name {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            "gelu" => Ok(Activation::GeluErf),
            "relu" => Ok(Activation::Relu),
            other => Err(format!(
                "activation_function `{other}` is not supported (expected gelu_new, gelu or relu)"
            )),
        }
    }

    fn forward(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::GeluTanh => crate::ops::gelu_tanh(x)?,
            Activation::GeluErf => crate::ops::gelu_erf(x)?,
            Activation::Relu => x.relu()?,
        })
    }
}

/// HF `Conv1D`: `y = x·W + b` with W stored `[in, out]`.
#[derive(Debug, Clone)]
struct Conv1D {
    weight: Tensor,
    bias: Tensor,
}

impl Conv1D {
    fn new(d_in: usize, d_out: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Conv1D {
            weight: vb.get_with_hints(
                (d_in, d_out),
                "weight",
                candle_nn::Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            )?,
            bias: vb.get_with_hints(d_out, "bias", candle_nn::Init::Const(0.0))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // One 2-D matmul over all positions rather than a broadcasted batched one.
        let (b, l, d_in) = x.dims3()?;
        let y = x
            .reshape((b * l, d_in))?
            .matmul(&self.weight)?
            .broadcast_add(&self.bias)?;
        Ok(y.reshape((b, l, ()))?)
    }
}

struct Attention {
    c_attn: Conv1D,
    c_proj: Conv1D,
    n_head: usize,
    head_dim: usize,
    scale: f64,
    attn_pdrop: f64,
    resid_pdrop: f64,
}

impl Attention {
    fn new(cfg: &Config, layer_idx: usize, vb: VarBuilder) -> Result<Self> {
        let e = cfg.n_embd;
        let head_dim = e / cfg.n_head;
        let mut scale = 1.0;
        if cfg.scale_attn_weights {
            scale /= (head_dim as f64).sqrt();
        }
        if cfg.scale_attn_by_inverse_layer_idx {
            scale /= (layer_idx + 1) as f64;
        }
        Ok(Attention {
            c_attn: Conv1D::new(e, 3 * e, vb.pp("c_attn"))?,
            c_proj: Conv1D::new(e, e, vb.pp("c_proj"))?,
            n_head: cfg.n_head,
            head_dim,
            scale,
            attn_pdrop: cfg.attn_pdrop,
            resid_pdrop: cfg.resid_pdrop,
        })
    }

    /// `mask_bias` (B, 1, L, L): 0 where a query may look at a key, a large negative number elsewhere.
    fn forward(
        &self,
        x: &Tensor,
        mask_bias: &Tensor,
        train: bool,
        rng: &Mutex<ChaCha8Rng>,
    ) -> Result<Tensor> {
        let (b, l, e) = x.dims3()?;
        let qkv = self.c_attn.forward(x)?;
        let heads = |i: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(2, i * e, e)?
                .reshape((b, l, self.n_head, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
        let scores = (q.matmul(&k.t()?.contiguous()?)? * self.scale)?.broadcast_add(mask_bias)?;
        let weights = softmax_dropout(&scores, self.attn_pdrop, train, rng)?;
        let mixed = weights
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, l, e))?;
        dropout_shared(&self.c_proj.forward(&mixed)?, self.resid_pdrop, train, rng)
    }
}

struct Mlp {
    c_fc: Conv1D,
    c_proj: Conv1D,
    activation: Activation,
    resid_pdrop: f64,
}

impl Mlp {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let activation = Activation::from_name(&cfg.activation_function).map_err(Error::Other)?;
        Ok(Mlp {
            c_fc: Conv1D::new(cfg.n_embd, cfg.inner_dim(), vb.pp("c_fc"))?,
            c_proj: Conv1D::new(cfg.inner_dim(), cfg.n_embd, vb.pp("c_proj"))?,
            activation,
            resid_pdrop: cfg.resid_pdrop,
        })
    }

    fn forward(&self, x: &Tensor, train: bool, rng: &Mutex<ChaCha8Rng>) -> Result<Tensor> {
        let h = self.activation.forward(&self.c_fc.forward(x)?)?;
        dropout_shared(&self.c_proj.forward(&h)?, self.resid_pdrop, train, rng)
    }
}

struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn new(cfg: &Config, layer_idx: usize, vb: VarBuilder) -> Result<Self> {
        let eps = cfg.layer_norm_epsilon;
        Ok(Block {
            ln_1: LayerNorm::load(cfg.n_embd, eps, vb.pp("ln_1"))?,
            attn: Attention::new(cfg, layer_idx, vb.pp("attn"))?,
            ln_2: LayerNorm::load(cfg.n_embd, eps, vb.pp("ln_2"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        mask_bias: &Tensor,
        train: bool,
        rng: &Mutex<ChaCha8Rng>,
    ) -> Result<Tensor> {
        let x = (x + self
            .attn
            .forward(&self.ln_1.forward(x)?, mask_bias, train, rng)?)?;
        Ok((&x + self.mlp.forward(&self.ln_2.forward(&x)?, train, rng)?)?)
    }
}

/// The GPT-2 transformer (HF `GPT2Model`) with the `[PAD]` row appended to its token embedding.
pub struct Gpt2Model {
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    cfg: Config,
    rng: Mutex<ChaCha8Rng>,
}

impl Gpt2Model {
    /// Weights named as in the HF checkpoint (`wte.weight`, `h.0.attn.c_attn.weight`, `ln_f.bias`, ...), with
    /// `wte.weight` holding vocab_size + 1 rows (the `[PAD]` row last).
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let init = candle_nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let wte = vb.get_with_hints((cfg.vocab_size + 1, cfg.n_embd), "wte.weight", init)?;
        let wpe = vb.get_with_hints((cfg.n_positions, cfg.n_embd), "wpe.weight", init)?;
        let blocks = (0..cfg.n_layer)
            .map(|i| Block::new(cfg, i, vb.pp(format!("h.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let ln_f = LayerNorm::load(cfg.n_embd, cfg.layer_norm_epsilon, vb.pp("ln_f"))?;
        Ok(Gpt2Model {
            wte,
            wpe,
            blocks,
            ln_f,
            cfg: cfg.clone(),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(0)),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The generator of the dropout masks.
    pub fn rng(&self) -> &Mutex<ChaCha8Rng> {
        &self.rng
    }

    /// Reseeds the generator of the dropout masks.
    pub fn set_seed(&self, seed: u64) {
        if let Ok(mut rng) = self.rng.lock() {
            *rng = ChaCha8Rng::seed_from_u64(seed);
        }
    }

    /// Token embeddings `wte[ids]` (B, L, E) of integer ids (B, L).
    pub fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (b, l) = input_ids.dims2()?;
        let flat = input_ids.flatten_all()?.to_dtype(DType::U32)?;
        Ok(self
            .wte
            .index_select(&flat, 0)?
            .reshape((b, l, self.cfg.n_embd))?)
    }

    /// `last_hidden_state` (B, L, E) for integer ids (B, L) and an attention mask (B, L) of 0/1.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        self.forward_embeds(&self.embed(input_ids)?, attention_mask, train)
    }

    /// As [`Gpt2Model::forward`] from token embeddings (B, L, E) (HF `inputs_embeds`).
    pub fn forward_embeds(
        &self,
        inputs_embeds: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let (b, l, _) = inputs_embeds.dims3()?;
        if l > self.cfg.n_positions {
            return Err(Error::Other(format!(
                "GPT-2 input of {l} tokens is longer than the model's n_positions {}",
                self.cfg.n_positions
            )));
        }
        let positions = self.wpe.narrow(0, 0, l)?;
        let h = inputs_embeds.broadcast_add(&positions)?;
        let mut h = dropout_shared(&h, self.cfg.embd_pdrop, train, &self.rng)?;
        if attention_mask.dims() != [b, l] {
            return Err(Error::Other(format!(
                "GPT-2 attention mask {:?} for inputs of {b} x {l} tokens",
                attention_mask.dims()
            )));
        }
        let mask_bias = mask_bias(&attention_mask.to_dtype(DType::U32)?, l)?.to_dtype(h.dtype())?;
        for block in &self.blocks {
            h = block.forward(&h, &mask_bias, train, &self.rng)?;
        }
        self.ln_f.forward(&h)
    }
}

/// Additive attention bias (B, 1, L, L): a query at position i sees keys j ≤ i that are real tokens. Built on the
/// mask's device from comparisons (no host round trip per batch).
fn mask_bias(attention_mask: &Tensor, l: usize) -> Result<Tensor> {
    // Large and finite rather than -inf: exp() of it is exactly 0 in fp32, and no inf − inf can appear.
    const MASKED: f64 = -1e9;
    let device = attention_mask.device();
    let (b, _) = attention_mask.dims2()?;
    let positions = Tensor::arange(0u32, l as u32, device)?;
    // causal[i, j] = j ≤ i
    let causal = positions
        .unsqueeze(0)?
        .broadcast_le(&positions.unsqueeze(1)?)?
        .to_dtype(DType::F32)?;
    let keys = attention_mask
        .ne(0u32)?
        .to_dtype(DType::F32)?
        .reshape((b, 1, 1, l))?;
    let allowed = keys.broadcast_mul(&causal.reshape((1, 1, l, l))?)?;
    // allowed 1 → 0, allowed 0 → MASKED (1e9 is exact in f32, so 1e9 − 1e9 is exactly 0)
    Ok(allowed.affine(-MASKED, MASKED)?)
}

/// The reference's text encoder: GPT-2's final-LayerNorm hidden state at each row's last real token, l2 optional.
pub struct Gpt2Encoder {
    pub model: Gpt2Model,
    l2: bool,
}

impl Gpt2Encoder {
    pub fn new(model: Gpt2Model, l2: bool) -> Self {
        Gpt2Encoder { model, l2 }
    }

    pub fn out_features(&self) -> usize {
        self.model.cfg.n_embd
    }

    /// (B, E) from ids (B, L) and mask (B, L), right-padded.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let hidden = self.model.forward(input_ids, attention_mask, train)?;
        self.pool(&hidden, attention_mask)
    }

    /// `hidden[b, len_b − 1]` (then l2 if asked) of a `last_hidden_state` (B, L, E), `len_b` the real tokens of
    /// row b of the right-padded mask (every row has one: [`crate::model::pad_right`] checks). The index is
    /// computed on the device.
    pub fn pool(&self, hidden: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let (b, l, e) = hidden.dims3()?;
        let lengths = attention_mask
            .to_dtype(DType::F32)?
            .ne(0f32)?
            .to_dtype(DType::F32)?
            .sum(1)?;
        let starts = Tensor::arange(0f32, b as f32, hidden.device())?.affine(l as f64, -1.0)?;
        let index = (starts + lengths)?.to_dtype(DType::U32)?;
        let out = hidden.reshape((b * l, e))?.index_select(&index, 0)?;
        l2_normalize_if(out, self.l2)
    }
}

/// A loaded GPT-2: the model, its trainable variables (named as in the checkpoint) and where it came from.
pub struct LoadedGpt2 {
    pub model: Gpt2Model,
    pub vars: VarMap,
    pub dir: PathBuf,
}

/// The name [`load`] gives a checkpoint tensor: without the `transformer.` prefix of `GPT2LMHeadModel` files;
/// `None` for `lm_head.weight` (tied to `wte`) and the `attn.bias` / `attn.masked_bias` mask buffers.
pub fn checkpoint_name(name: &str) -> Option<String> {
    let name = name.strip_prefix("transformer.").unwrap_or(name);
    let unused = name == "lm_head.weight"
        || name.ends_with(".attn.bias")
        || name.ends_with(".attn.masked_bias");
    (!unused).then(|| name.to_string())
}

/// The shape of every checkpoint tensor [`load`] needs for `cfg`, under [`checkpoint_name`]s: the model's own
/// weights, with `wte.weight` as the checkpoint holds it (vocab_size rows, before the `[PAD]` row is appended).
pub fn expected_shapes(cfg: &Config) -> Result<BTreeMap<String, Vec<usize>>> {
    let mut shapes = hub::requested_shapes(|vb| Gpt2Model::new(cfg, vb).map(|_| ()))?;
    shapes.insert("wte.weight".into(), vec![cfg.vocab_size, cfg.n_embd]);
    Ok(shapes)
}

/// Loads `config.json` and the weights (any format of [`weights`]) from a model folder (see [`hub::resolve`]) and
/// appends the `[PAD]` row, drawn N(0, 0.02) from `seed`. Names are taken as [`checkpoint_name`] gives them; a
/// tensor missing, left over or of another shape than config.json says is an error naming it.
pub fn load(dir: &Path, device: &Device, seed: u64) -> Result<LoadedGpt2> {
    let cfg = Config::from_file(&dir.join("config.json"))?;
    let checkpoint = Checkpoint::open(dir)?;
    let found = checkpoint.shapes(checkpoint_name)?;
    weights::ensure_matches(
        &checkpoint.path,
        weights::compare_shapes(&expected_shapes(&cfg)?, &found, "config.json"),
    )?;
    let mut tensors = checkpoint.read(device, checkpoint_name)?;
    let wte = tensors
        .get("wte.weight")
        .ok_or_else(|| Error::data(&checkpoint.path, "tensor `wte.weight` missing"))?;
    let pad_row = hub::normal(&[1, cfg.n_embd], 0.02, seed, device)?;
    let grown = Tensor::cat(&[&wte.to_dtype(DType::F32)?, &pad_row], 0)?;
    tensors.insert("wte.weight".to_string(), grown);
    let vars = hub::CheckpointVars::new(&checkpoint.path, tensors)?;
    let model = Gpt2Model::new(&cfg, vars.var_builder(device))?;
    let vars = vars.finish(&[])?;
    model.set_seed(seed);
    Ok(LoadedGpt2 {
        model,
        vars,
        dir: dir.to_path_buf(),
    })
}
