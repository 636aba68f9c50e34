//! GloVe text encoder (docs/reference.md §3.1): a trainable embedding initialised from the vectors of the
//! dataset's [`GloveVocab`]; a prompt's token vectors are summed, divided by the longest token count of the batch
//! (the reference's mean over the zero-padded length), then l2-normalised if `text_l2norm`.

use candle_core::{Device, Tensor};

use crate::data::glove_vocab::GloveVocab;
use crate::error::Result;
use crate::nn::ParamStore;
use crate::ops::l2_normalize_if;

#[derive(Debug, Clone)]
pub struct GloveEncoder {
    embedding: Tensor,
    l2norm: bool,
    dim: usize,
}

impl GloveEncoder {
    /// The embedding is the trainable parameter `<name>.embedding.weight`, initialised from the vectors.
    pub fn new(
        store: &mut ParamStore,
        name: &str,
        vocab: &GloveVocab,
        l2norm: bool,
    ) -> Result<Self> {
        let rows = vocab.len().max(1);
        let mut values = vocab.vectors.clone();
        values.resize(rows * vocab.dim, 0.0);
        let embedding = store.values(
            &format!("{name}.embedding.weight"),
            &[rows, vocab.dim],
            values,
        )?;
        Ok(GloveEncoder {
            embedding,
            l2norm,
            dim: vocab.dim,
        })
    }

    pub fn out_features(&self) -> usize {
        self.dim
    }

    /// (B) token-id lists → (B, dim).
    pub fn forward(&self, ids: &[Vec<u32>], device: &Device) -> Result<Tensor> {
        let b = ids.len();
        let max_len = ids.iter().map(Vec::len).max().unwrap_or(0);
        let total: usize = ids.iter().map(Vec::len).sum();
        if total == 0 {
            return Ok(Tensor::zeros(
                (b, self.dim),
                candle_core::DType::F32,
                device,
            )?);
        }
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let flat = Tensor::from_vec(flat, total, device)?;
        let vectors = self.embedding.index_select(&flat, 0)?; // (total, dim)
                                                              // Sum each sample's tokens with one matmul against a (B, total) 0/1 segment matrix, divided by the
                                                              // padded length (the reference zero-pads to the longest sequence, then averages).
        let mut segments = vec![0f32; b * total];
        let mut offset = 0;
        for (row, seq) in ids.iter().enumerate() {
            for j in 0..seq.len() {
                segments[row * total + offset + j] = 1.0 / max_len as f32;
            }
            offset += seq.len();
        }
        let segments = Tensor::from_vec(segments, (b, total), device)?;
        let pooled = segments.matmul(&vectors)?;
        l2_normalize_if(pooled, self.l2norm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn loads_wanted_words_and_pools_like_the_reference() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.txt");
        std::fs::write(&path, "hello 1 0\nworld 0 2\nzero 0 0\nother 5 5\n").unwrap();
        let wanted: HashSet<String> = ["hello", "world", "zero"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let vocab = GloveVocab::load(&path, 2, &wanted).unwrap();
        assert_eq!(vocab.words, ["hello", "world"]);
        assert_eq!(vocab.file_words, 4);
        assert_eq!(vocab.encode("Hello, zero WORLD!"), [0, 1]);
        let mut store = ParamStore::new(&Device::Cpu, 0);
        let enc = GloveEncoder::new(&mut store, "text", &vocab, false).unwrap();
        let out = enc
            .forward(&[vec![0, 1], vec![1]], &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        // padded length 2: (1,0)+(0,2) over 2, and (0,2) over 2
        assert_eq!(out, [[0.5, 1.0], [0.0, 1.0]]);
        let err = GloveVocab::load(&path, 3, &wanted).unwrap_err().to_string();
        assert!(
            err.contains("line 1") && err.contains("text_out_features"),
            "{err}"
        );
    }
}
