//! GPT-2's byte-level BPE tokenizer as the reference sets it up (docs/reference.md §3.2), through the `tokenizers` crate.
//!
//! Built from a model folder's `tokenizer.json`, or from `vocab.json` + `merges.txt` (OpenAI's `encoder.json` +
//! `vocab.bpe` are the same files) as `BPE` + `ByteLevel` pre-tokenizer (no prefix space, GPT-2's regex) +
//! `ByteLevel` decoder. No BOS/EOS. A special `[PAD]` token is added after the vocabulary (id 50257 for the real
//! vocabulary); batches are padded on the RIGHT with it to the longest row and truncated on the RIGHT at 1024
//! tokens (the first 1024 are kept), with an attention mask of 1 on real tokens. The same ids as transformers'
//! `GPT2Tokenizer` (checked on MELD-like prompts with cp1252 C1 characters in `tests/backbones.rs`).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

use crate::error::{Error, Result};

/// GPT-2's context length, the tokenizer's `model_max_length`.
pub const MAX_TOKENS: usize = 1024;
pub const PAD_TOKEN: &str = "[PAD]";

/// A batch of token ids and its attention mask, both (B, L), right-padded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBatch {
    pub input_ids: Vec<Vec<u32>>,
    pub attention_mask: Vec<Vec<u32>>,
}

impl TokenBatch {
    /// `(input_ids, attention_mask)` as u32 tensors (B, L).
    pub fn to_tensors(&self, device: &Device) -> Result<(Tensor, Tensor)> {
        let b = self.input_ids.len();
        let l = self.input_ids.first().map_or(0, Vec::len);
        let ids = Tensor::from_vec(self.input_ids.concat(), (b, l), device)?;
        let mask = Tensor::from_vec(self.attention_mask.concat(), (b, l), device)?;
        Ok((ids, mask))
    }
}

pub struct Gpt2Tokenizer {
    /// pads and truncates (batches)
    inner: Tokenizer,
    /// neither pads nor truncates (single texts)
    plain: Tokenizer,
    pad_id: u32,
}

fn tok_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::data(path, format!("GPT-2 tokenizer: {e}"))
}

impl Gpt2Tokenizer {
    /// From a folder with `tokenizer.json`, or else `vocab.json` + `merges.txt`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_tokenizer_json(&json);
        }
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if vocab.is_file() && merges.is_file() {
            return Self::from_vocab_merges(&vocab, &merges);
        }
        Err(Error::data(
            dir,
            "no GPT-2 tokenizer here: expected tokenizer.json, or vocab.json and merges.txt \
             (scripts/fetch-gpt2-tokenizer.sh puts the latter into models/gpt2-tokenizer/)",
        ))
    }

    pub fn from_tokenizer_json(path: &Path) -> Result<Self> {
        let inner = Tokenizer::from_file(path).map_err(|e| tok_err(path, e))?;
        Self::configure(inner, path)
    }

    pub fn from_vocab_merges(vocab: &Path, merges: &Path) -> Result<Self> {
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
        Self::configure(inner, vocab)
    }

    /// Adds `[PAD]`, right padding with it and right truncation at [`MAX_TOKENS`].
    fn configure(mut inner: Tokenizer, path: &Path) -> Result<Self> {
        // A fresh token takes the first id past the vocabulary (GPT2Tokenizer.add_special_tokens does the same).
        inner
            .add_special_tokens([AddedToken::from(PAD_TOKEN, true)])
            .map_err(|e| tok_err(path, e))?;
        let pad_id = inner
            .token_to_id(PAD_TOKEN)
            .ok_or_else(|| tok_err(path, "[PAD] could not be added"))?;
        let plain = inner.clone();
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: MAX_TOKENS,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| tok_err(path, e))?;
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token: PAD_TOKEN.to_string(),
        }));
        Ok(Gpt2Tokenizer {
            inner,
            plain,
            pad_id,
        })
    }

    /// Id of `[PAD]` (50257 with the real vocabulary): must equal the model's `vocab_size`.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Untruncated ids of one text, no special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .plain
            .encode(text, false)
            .map_err(|e| Error::Other(format!("GPT-2 tokenizer: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// A right-padded, right-truncated batch.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<TokenBatch> {
        let encodings = self
            .inner
            .encode_batch(texts.to_vec(), false)
            .map_err(|e| Error::Other(format!("GPT-2 tokenizer: {e}")))?;
        Ok(TokenBatch {
            input_ids: encodings.iter().map(|e| e.get_ids().to_vec()).collect(),
            attention_mask: encodings
                .iter()
                .map(|e| e.get_attention_mask().to_vec())
                .collect(),
        })
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::Other(format!("GPT-2 tokenizer: {e}")))
    }
}

/// Where `scripts/fetch-gpt2-tokenizer.sh` puts the real vocabulary, relative to the repository root.
pub fn default_tokenizer_dir(repo_root: &Path) -> PathBuf {
    repo_root.join("models").join("gpt2-tokenizer")
}
