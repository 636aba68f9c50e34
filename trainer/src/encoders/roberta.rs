//! RoBERTa (HF `roberta-base` / `roberta-large` layout), trainable, its byte-level BPE tokenizer, and a text encoder
//! that pools it (the encoder most recent MELD results use).
//!
//! ```text
//! pos[b, l] = cumsum_l(ids ≠ pad)·(ids ≠ pad) + pad      (real tokens from pad + 1, padding at pad)
//! h₀ = LayerNorm(word[ids] + position[pos] + token_type[0])          (B, L, H)
//! each of the L layers (post-LN, as BERT):
//!   a = LayerNorm(h + dense(attn(h)));   h = LayerNorm(a + dense(gelu(intermediate(a))))
//! last_hidden_state = h                                               (B, L, H)
//! encoder output = h[b, 0] (`cls`: the `<s>` token) or the mean over real tokens (`mean`), then l2 if asked
//! ```
//!
//! Attention is bidirectional and masks padding keys; scores are scaled by 1/√head_dim. Weights are PyTorch
//! `Linear`s (`[out, in]`) named as in the checkpoint (`embeddings.word_embeddings.weight`,
//! `encoder.layer.0.attention.self.query.weight`, `encoder.layer.0.output.LayerNorm.bias`, …), so it loads by name.
//! The hub's files hold a `RobertaForMaskedLM`: everything under `roberta.` is the encoder, and [`load`] ignores
//! the rest (`lm_head.*`, a classifier), the pooler (unused: CLS pooling reads the `<s>` state itself, as
//! `RobertaForSequenceClassification` does) and the `position_ids` / `token_type_ids` buffers.
//!
//! The tokenizer ([`RobertaTokenizer`]) is the model folder's `tokenizer.json`, or `vocab.json` + `merges.txt` as
//! byte-level BPE without a prefix space; a text becomes `<s> … </s>`. A text longer than the model's positions
//! (512 tokens for the released models) keeps its LAST tokens: with the dialogue as context the row's own turn
//! comes last (GPT-2's reference encoder cuts on the right instead, one of the reference's quirks).
//!
//! Built from ops that back-propagate (`ops::layer_norm`, `ops::softmax_dropout`, `ops::linear`,
//! `ops::gelu_erf`); dropout (hidden_dropout_prob, attention_probs_dropout_prob) only when `train` is true, masks
//! from the model's own seeded generator.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::encoders::hub;
use crate::encoders::weights::{self, Checkpoint};
use crate::error::{Error, Result};
use crate::nn::{dropout_shared, masked_mean, LayerNorm};
use crate::ops::{l2_normalize_if, softmax_dropout};

fn default_act() -> String {
    "gelu".to_string()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_type_vocab() -> usize {
    1
}
fn default_eps() -> f64 {
    1e-5
}
fn default_pad() -> u32 {
    1
}

/// The checkpoint's own `config.json` (HF `RobertaConfig`); keys not listed are ignored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_pad")]
    pub pad_token_id: u32,
    /// Only `absolute` (every released RoBERTa) is implemented.
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

impl Config {
    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cfg: Config = serde_json::from_str(&text)
            .map_err(|e| Error::data(path, format!("not a RoBERTa config.json: {e}")))?;
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(Error::data(
                path,
                format!(
                    "hidden_size {} is not a multiple of num_attention_heads {}",
                    cfg.hidden_size, cfg.num_attention_heads
                ),
            ));
        }
        if cfg.hidden_act != "gelu" {
            return Err(Error::data(
                path,
                format!(
                    "hidden_act `{}` is not supported (RoBERTa uses `gelu`)",
                    cfg.hidden_act
                ),
            ));
        }
        if let Some(kind) = cfg.position_embedding_type.as_deref() {
            if kind != "absolute" {
                return Err(Error::data(
                    path,
                    format!("position_embedding_type `{kind}` is not supported (only `absolute`)"),
                ));
            }
        }
        if cfg.max_tokens() < 3 || cfg.type_vocab_size == 0 {
            return Err(Error::data(
                path,
                format!(
                    "max_position_embeddings {} leaves no room for a text after the padding index {}",
                    cfg.max_position_embeddings, cfg.pad_token_id
                ),
            ));
        }
        Ok(cfg)
    }

    /// The longest input, `<s>` and `</s>` included: positions start after the padding index (512 for the
    /// released models' 514 positions).
    pub fn max_tokens(&self) -> usize {
        self.max_position_embeddings
            .saturating_sub(self.pad_token_id as usize + 1)
    }

    /// The tokenizer must pad with the model's padding index (positions are computed from it) and fit its
    /// vocabulary; `dir` is the model folder, for the message.
    pub fn check_tokenizer(&self, tokenizer: &RobertaTokenizer, dir: &Path) -> Result<()> {
        if tokenizer.pad_id() != self.pad_token_id {
            return Err(Error::data(
                dir,
                format!(
                    "the tokenizer's <pad> id is {} but config.json's pad_token_id is {}",
                    tokenizer.pad_id(),
                    self.pad_token_id
                ),
            ));
        }
        if tokenizer.vocab_size() > self.vocab_size {
            return Err(Error::data(
                dir,
                format!(
                    "the tokenizer has {} tokens, the model's embedding {} rows",
                    tokenizer.vocab_size(),
                    self.vocab_size
                ),
            ));
        }
        Ok(())
    }
}

/// `y = x·Wᵀ + b`, W stored `[out, in]`; any rank, the last dimension the feature one.
#[derive(Debug, Clone)]
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn new(d_in: usize, d_out: usize, vb: VarBuilder) -> Result<Self> {
        let init = candle_nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        Ok(Linear {
            weight: vb.get_with_hints((d_out, d_in), "weight", init)?,
            bias: vb.get_with_hints(d_out, "bias", candle_nn::Init::Const(0.0))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // as a 2-D product: the op's CPU kernel takes rank 2, and a broadcasted batched matmul is slower
        let mut dims = x.dims().to_vec();
        let d_in = dims.pop().unwrap_or(0);
        let rows: usize = dims.iter().product();
        let y = crate::ops::linear(
            &x.reshape((rows, d_in))?,
            &self.weight,
            &self.bias,
            false,
            None,
        )?;
        dims.push(self.weight.dim(0)?);
        Ok(y.reshape(dims)?)
    }
}

type Rng8 = Mutex<ChaCha8Rng>;

struct Embeddings {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    layer_norm: LayerNorm,
    padding_idx: u32,
    dropout: f64,
    hidden: usize,
}

impl Embeddings {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let init = candle_nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let h = cfg.hidden_size;
        Ok(Embeddings {
            word_embeddings: vb.get_with_hints(
                (cfg.vocab_size, h),
                "word_embeddings.weight",
                init,
            )?,
            position_embeddings: vb.get_with_hints(
                (cfg.max_position_embeddings, h),
                "position_embeddings.weight",
                init,
            )?,
            token_type_embeddings: vb.get_with_hints(
                (cfg.type_vocab_size, h),
                "token_type_embeddings.weight",
                init,
            )?,
            layer_norm: LayerNorm::load(h, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
            padding_idx: cfg.pad_token_id,
            dropout: cfg.hidden_dropout_prob,
            hidden: h,
        })
    }

    /// HF `create_position_ids_from_input_ids`: `cumsum(ids ≠ pad)·(ids ≠ pad) + pad`, on the device.
    fn position_ids(&self, input_ids: &Tensor) -> Result<Tensor> {
        let real = input_ids.ne(self.padding_idx)?.to_dtype(DType::F32)?;
        let positions = (real.cumsum(1)? * &real)?.affine(1.0, self.padding_idx as f64)?;
        Ok(positions.to_dtype(DType::U32)?)
    }

    fn forward(&self, input_ids: &Tensor, train: bool, rng: &Rng8) -> Result<Tensor> {
        let (b, l) = input_ids.dims2()?;
        let lookup = |table: &Tensor, ids: &Tensor| -> Result<Tensor> {
            Ok(table
                .index_select(&ids.flatten_all()?, 0)?
                .reshape((b, l, self.hidden))?)
        };
        let words = lookup(&self.word_embeddings, input_ids)?;
        let positions = lookup(&self.position_embeddings, &self.position_ids(input_ids)?)?;
        // every token has type 0 (the released models have one type)
        let token_type =
            self.token_type_embeddings
                .narrow(0, 0, 1)?
                .reshape((1, 1, self.hidden))?;
        let h = (words + positions)?.broadcast_add(&token_type)?;
        dropout_shared(&self.layer_norm.forward(&h)?, self.dropout, train, rng)
    }
}

/// `attention.self` (query, key, value) and `attention.output` (dense, LayerNorm).
struct Attention {
    query: Linear,
    key: Linear,
    value: Linear,
    dense: Linear,
    layer_norm: LayerNorm,
    heads: usize,
    head_dim: usize,
    attention_dropout: f64,
    hidden_dropout: f64,
}

impl Attention {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let (this, out) = (vb.pp("self"), vb.pp("output"));
        Ok(Attention {
            query: Linear::new(h, h, this.pp("query"))?,
            key: Linear::new(h, h, this.pp("key"))?,
            value: Linear::new(h, h, this.pp("value"))?,
            dense: Linear::new(h, h, out.pp("dense"))?,
            layer_norm: LayerNorm::load(h, cfg.layer_norm_eps, out.pp("LayerNorm"))?,
            heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
            attention_dropout: cfg.attention_probs_dropout_prob,
            hidden_dropout: cfg.hidden_dropout_prob,
        })
    }

    /// `LayerNorm(x + dense(softmax(q·kᵀ/√d + mask)·v))`; `mask_bias` (B, 1, 1, L).
    fn forward(&self, x: &Tensor, mask_bias: &Tensor, train: bool, rng: &Rng8) -> Result<Tensor> {
        let (b, l, h) = x.dims3()?;
        let split = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((b, l, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.query.forward(x)?)?;
        let k = split(self.key.forward(x)?)?;
        let v = split(self.value.forward(x)?)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(mask_bias)?;
        let weights = softmax_dropout(&scores, self.attention_dropout, train, rng)?;
        let mixed = weights
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, l, h))?;
        let out = dropout_shared(
            &self.dense.forward(&mixed)?,
            self.hidden_dropout,
            train,
            rng,
        )?;
        self.layer_norm.forward(&(x + out)?)
    }
}

/// One encoder layer: attention, then `intermediate` (dense + GELU) and `output` (dense, LayerNorm).
struct Layer {
    attention: Attention,
    intermediate: Linear,
    output: Linear,
    output_layer_norm: LayerNorm,
    hidden_dropout: f64,
}

impl Layer {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Layer {
            attention: Attention::new(cfg, vb.pp("attention"))?,
            intermediate: Linear::new(h, i, vb.pp("intermediate").pp("dense"))?,
            output: Linear::new(i, h, vb.pp("output").pp("dense"))?,
            output_layer_norm: LayerNorm::load(
                h,
                cfg.layer_norm_eps,
                vb.pp("output").pp("LayerNorm"),
            )?,
            hidden_dropout: cfg.hidden_dropout_prob,
        })
    }

    fn forward(&self, x: &Tensor, mask_bias: &Tensor, train: bool, rng: &Rng8) -> Result<Tensor> {
        let a = self.attention.forward(x, mask_bias, train, rng)?;
        let f = crate::ops::gelu_erf(&self.intermediate.forward(&a)?)?;
        let f = dropout_shared(&self.output.forward(&f)?, self.hidden_dropout, train, rng)?;
        self.output_layer_norm.forward(&(a + f)?)
    }
}

/// The RoBERTa transformer (HF `RobertaModel` without its pooler), weights named as in the checkpoint without the
/// `roberta.` prefix.
pub struct RobertaModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    cfg: Config,
    rng: Rng8,
}

impl RobertaModel {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(cfg, vb.pp(format!("encoder.layer.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(RobertaModel {
            embeddings: Embeddings::new(cfg, vb.pp("embeddings"))?,
            layers,
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

    /// `last_hidden_state` (B, L, H) of integer ids (B, L) and an attention mask (B, L) of 0/1.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let mut states = self.hidden_states(input_ids, attention_mask, train)?;
        states
            .pop()
            .ok_or_else(|| Error::Other("RoBERTa without layers".into()))
    }

    /// HF's `hidden_states`: the embeddings' output, then every layer's (the last is `last_hidden_state`).
    pub fn hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<Vec<Tensor>> {
        let (b, l) = input_ids.dims2()?;
        if l > self.cfg.max_tokens() {
            return Err(Error::Other(format!(
                "RoBERTa input of {l} tokens is longer than the model's {} positions",
                self.cfg.max_tokens()
            )));
        }
        if attention_mask.dims() != [b, l] {
            return Err(Error::Other(format!(
                "RoBERTa attention mask {:?} for inputs of {b} x {l} tokens",
                attention_mask.dims()
            )));
        }
        let ids = input_ids.to_dtype(DType::U32)?;
        let mut h = self.embeddings.forward(&ids, train, &self.rng)?;
        // 0 for a real key, a large negative number for padding: exp() of it is exactly 0 in fp32
        const MASKED: f64 = -1e9;
        let mask_bias = attention_mask
            .to_dtype(DType::U32)?
            .ne(0u32)?
            .to_dtype(h.dtype())?
            .affine(-MASKED, MASKED)?
            .reshape((b, 1, 1, l))?;
        let mut states = vec![h.clone()];
        for layer in &self.layers {
            h = layer.forward(&h, &mask_bias, train, &self.rng)?;
            states.push(h.clone());
        }
        Ok(states)
    }
}

/// How the text encoder turns RoBERTa's hidden states into one vector (`text_pooling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The `<s>` token's hidden state (what `RobertaForSequenceClassification`'s head reads).
    Cls,
    /// The mean over the real tokens (`<s>` and `</s>` included).
    Mean,
}

/// RoBERTa pooled to one vector per text, l2 optional.
pub struct RobertaEncoder {
    pub model: RobertaModel,
    pooling: Pooling,
    l2: bool,
}

impl RobertaEncoder {
    pub fn new(model: RobertaModel, pooling: Pooling, l2: bool) -> Self {
        RobertaEncoder { model, pooling, l2 }
    }

    pub fn out_features(&self) -> usize {
        self.model.cfg.hidden_size
    }

    /// (B, H) from ids (B, L) and mask (B, L), right-padded.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let hidden = self.model.forward(input_ids, attention_mask, train)?;
        self.pool(&hidden, attention_mask)
    }

    /// The pooled vector of a `last_hidden_state` (B, L, H), then l2 if asked.
    pub fn pool(&self, hidden: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let out = match self.pooling {
            Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => masked_mean(hidden, attention_mask)?,
        };
        l2_normalize_if(out, self.l2)
    }
}

/// RoBERTa's tokenizer: `<s>` + byte-level BPE ids (no prefix space) + `</s>`, the last tokens kept when a text is
/// longer than the model's positions. The same ids as transformers' `RobertaTokenizer` (checked in
/// `tests/roberta.rs`).
pub struct RobertaTokenizer {
    inner: Tokenizer,
    cls: u32,
    sep: u32,
    pad: u32,
    max_tokens: usize,
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::data(path, format!("RoBERTa tokenizer: {e}"))
}

impl RobertaTokenizer {
    /// From a model folder's `tokenizer.json`, or else its `vocab.json` + `merges.txt`; `max_tokens` is the
    /// model's [`Config::max_tokens`].
    pub fn from_dir(dir: &Path, max_tokens: usize) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        let (inner, source) = if json.is_file() {
            (
                Tokenizer::from_file(&json).map_err(|e| tok_err(&json, e))?,
                json,
            )
        } else if vocab.is_file() && merges.is_file() {
            (Self::from_vocab_merges(&vocab, &merges)?, vocab)
        } else {
            return Err(Error::data(
                dir,
                "no RoBERTa tokenizer here: expected tokenizer.json, or vocab.json and merges.txt",
            ));
        };
        Self::configure(inner, &source, max_tokens)
    }

    /// `BPE(vocab.json, merges.txt)` + `ByteLevel` pre-tokenizer (no prefix space, GPT-2's regex) as the hub's
    /// `tokenizer.json` sets them up; the special tokens are those of the vocabulary.
    pub fn from_vocab_merges(vocab: &Path, merges: &Path) -> Result<Tokenizer> {
        let as_str = |p: &Path| -> Result<String> {
            p.to_str()
                .map(str::to_string)
                .ok_or_else(|| Error::data(p, "path is not valid UTF-8"))
        };
        let bpe = BPE::from_file(&as_str(vocab)?, &as_str(merges)?)
            .build()
            .map_err(|e| tok_err(vocab, e))?;
        let mut inner = Tokenizer::new(bpe);
        inner
            .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
            .with_decoder(Some(ByteLevelDecoder::default()));
        // special tokens are matched whole in a text, never split into bytes (as transformers does)
        let specials =
            ["<s>", "<pad>", "</s>", "<unk>", "<mask>"].map(|t| AddedToken::from(t, true));
        inner
            .add_special_tokens(specials)
            .map_err(|e| tok_err(vocab, e))?;
        Ok(inner)
    }

    fn configure(inner: Tokenizer, path: &Path, max_tokens: usize) -> Result<Self> {
        let id = |token: &str| {
            inner
                .token_to_id(token)
                .ok_or_else(|| tok_err(path, format!("no `{token}` token in the vocabulary")))
        };
        Ok(RobertaTokenizer {
            cls: id("<s>")?,
            sep: id("</s>")?,
            pad: id("<pad>")?,
            max_tokens: max_tokens.max(3),
            inner,
        })
    }

    /// Id of `<pad>`: the model's padding index.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// Tokens of the vocabulary, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// `<s>`, the text's ids (its last `max_tokens − 2` when longer), `</s>`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Other(format!("RoBERTa tokenizer: {e}")))?;
        let ids = encoding.get_ids();
        let keep = ids.len().min(self.max_tokens - 2);
        let mut out = Vec::with_capacity(keep + 2);
        out.push(self.cls);
        out.extend_from_slice(&ids[ids.len() - keep..]);
        out.push(self.sep);
        Ok(out)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::Other(format!("RoBERTa tokenizer: {e}")))
    }
}

/// A loaded RoBERTa encoder, its trainable variables (named as in the checkpoint) and its folder.
pub struct LoadedRoberta {
    pub encoder: RobertaEncoder,
    pub vars: VarMap,
    pub dir: PathBuf,
}

/// The encoder's name for a checkpoint tensor, `None` for what it does not use: with the `roberta.` prefix
/// (`RobertaForMaskedLM` and other task models) only the tensors under it; never the pooler or the index buffers.
fn rename(name: &str, prefixed: bool) -> Option<String> {
    let name = if prefixed {
        name.strip_prefix("roberta.")?
    } else {
        name
    };
    let unused = name.starts_with("pooler.")
        || name.starts_with("lm_head.")
        || name.starts_with("classifier.")
        || name == "embeddings.position_ids"
        || name == "embeddings.token_type_ids";
    (!unused).then(|| name.to_string())
}

/// The renaming [`load`] applies to `checkpoint`: with the `roberta.` prefix of the hub's `RobertaForMaskedLM`
/// files when any name has it (see [`rename`]).
pub fn renamer(checkpoint: &Checkpoint) -> Result<impl Fn(&str) -> Option<String>> {
    let inventory = checkpoint.inventory()?;
    let prefixed = inventory
        .shapes
        .keys()
        .chain(inventory.unreadable.keys())
        .any(|n| n.starts_with("roberta."));
    Ok(move |name: &str| rename(name, prefixed))
}

/// The shape of every checkpoint tensor [`load`] needs for `cfg`, under the names [`renamer`] gives.
pub fn expected_shapes(cfg: &Config) -> Result<BTreeMap<String, Vec<usize>>> {
    hub::requested_shapes(|vb| RobertaModel::new(cfg, vb).map(|_| ()))
}

/// Loads `config.json` and the weights (any format of [`weights`]) from a model folder (see [`hub::resolve`]);
/// `seed` seeds the dropout generator. A tensor missing, left over or of another shape than config.json says is
/// an error naming it.
pub fn load(
    dir: &Path,
    pooling: Pooling,
    l2: bool,
    device: &Device,
    seed: u64,
) -> Result<LoadedRoberta> {
    let cfg = Config::from_file(&dir.join("config.json"))?;
    let checkpoint = Checkpoint::open(dir)?;
    let found = checkpoint.shapes(renamer(&checkpoint)?)?;
    weights::ensure_matches(
        &checkpoint.path,
        weights::compare_shapes(&expected_shapes(&cfg)?, &found, "config.json"),
    )?;
    let tensors = checkpoint.read(device, renamer(&checkpoint)?)?;
    let vars = hub::CheckpointVars::new(&checkpoint.path, tensors)?;
    let model = RobertaModel::new(&cfg, vars.var_builder(device))?;
    let vars = vars.finish(&[])?;
    model.set_seed(seed);
    Ok(LoadedRoberta {
        encoder: RobertaEncoder::new(model, pooling, l2),
        vars,
        dir: dir.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_names_keep_the_encoder_only() {
        assert_eq!(
            rename("roberta.encoder.layer.3.output.LayerNorm.weight", true).as_deref(),
            Some("encoder.layer.3.output.LayerNorm.weight")
        );
        for unused in [
            "lm_head.dense.weight",
            "roberta.pooler.dense.weight",
            "roberta.embeddings.position_ids",
            "classifier.out_proj.weight",
        ] {
            assert_eq!(rename(unused, true), None, "{unused}");
        }
        assert_eq!(
            rename("embeddings.word_embeddings.weight", false).as_deref(),
            Some("embeddings.word_embeddings.weight")
        );
        assert_eq!(rename("pooler.dense.bias", false), None);
    }
}
