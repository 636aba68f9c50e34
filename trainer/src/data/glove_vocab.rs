//! The GloVe vocabulary of a dataset (docs/reference.md §3.1): prompts are tokenised with torchtext's
//! `basic_english` rules and looked up among the words of a standard `glove.*.txt` file (out-of-vocabulary tokens
//! and all-zero vectors dropped).
//!
//! Only the words that occur in the dataset's prompts are kept from the GloVe file: the other rows of the
//! embedding never receive a gradient nor take part in any prediction on this data, so dropping them changes no
//! number and saves most of the 400k×50 matrix (and its optimiser state).

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use crate::error::{Error, Result};

/// torchtext's `basic_english` tokenizer: lower-case, the same replacement table applied in the same order,
/// then split on whitespace.
pub fn basic_english(text: &str) -> Vec<String> {
    const RULES: [(&str, &str); 11] = [
        ("'", " '  "),
        ("\"", ""),
        (".", " . "),
        ("<br />", " "),
        (",", " , "),
        ("(", " ( "),
        (")", " ) "),
        ("!", " ! "),
        ("?", " ? "),
        (";", " "),
        (":", " "),
    ];
    let mut line = text.to_lowercase();
    for (pattern, replacement) in RULES {
        if line.contains(pattern) {
            line = line.replace(pattern, replacement);
        }
    }
    line.split_whitespace().map(str::to_string).collect()
}

/// The words kept from a GloVe file and their initial vectors.
#[derive(Debug, Clone)]
pub struct GloveVocab {
    pub words: Vec<String>,
    index: HashMap<String, u32>,
    pub dim: usize,
    /// Vectors, row-major (words.len() × dim); empty when the vocabulary was restored from a run folder.
    pub vectors: Vec<f32>,
    /// Number of vectors in the GloVe file (for reports).
    pub file_words: usize,
}

impl GloveVocab {
    /// Reads `path` (one `word v1 … vD` per line) keeping the words in `wanted`. Wrong dimensions are errors
    /// naming the line; all-zero vectors are dropped as the reference does.
    pub fn load(path: &Path, dim: usize, wanted: &HashSet<String>) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| {
            Error::data(
                path,
                format!("cannot open the GloVe vectors ({e}); run `make glove`, pass --glove PATH or set text_glove_path"),
            )
        })?;
        let reader = BufReader::with_capacity(1 << 20, file);
        let mut words = Vec::new();
        let mut vectors = Vec::new();
        let mut file_words = 0;
        for (n, line) in reader.split(b'\n').enumerate() {
            let line = line.map_err(|e| Error::io(path, e))?;
            if line.is_empty() {
                continue;
            }
            file_words += 1;
            let space = line.iter().position(|b| *b == b' ').ok_or_else(|| {
                Error::data(path, format!("line {}: expected `word v1 … v{dim}`", n + 1))
            })?;
            let word = String::from_utf8_lossy(&line[..space]);
            if !wanted.contains(word.as_ref()) {
                continue;
            }
            let rest = std::str::from_utf8(&line[space + 1..])
                .map_err(|_| Error::data(path, format!("line {}: not UTF-8", n + 1)))?;
            let values: Vec<f32> = rest
                .split_ascii_whitespace()
                .map(|v| v.parse::<f32>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| Error::data(path, format!("line {}: {e}", n + 1)))?;
            if values.len() != dim {
                return Err(Error::data(
                    path,
                    format!(
                        "line {}: `{word}` has {} values, the config's text_out_features is {dim}",
                        n + 1,
                        values.len()
                    ),
                ));
            }
            if values.iter().all(|v| *v == 0.0) {
                continue;
            }
            words.push(word.into_owned());
            vectors.extend(values);
        }
        if file_words == 0 {
            return Err(Error::data(path, "the GloVe file is empty"));
        }
        Ok(GloveVocab::from_parts(words, dim, vectors, file_words))
    }

    fn from_parts(words: Vec<String>, dim: usize, vectors: Vec<f32>, file_words: usize) -> Self {
        let index = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.clone(), i as u32))
            .collect();
        GloveVocab {
            words,
            index,
            dim,
            vectors,
            file_words,
        }
    }

    /// The word list a run folder keeps (`glove-vocab.txt`), one word per line, in row order.
    pub fn save_words(&self, path: &Path) -> Result<()> {
        let mut file =
            std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| Error::io(path, e))?);
        for word in &self.words {
            writeln!(file, "{word}").map_err(|e| Error::io(path, e))?;
        }
        file.flush().map_err(|e| Error::io(path, e))
    }

    /// Restores a vocabulary saved by [`GloveVocab::save_words`] (vectors come from the checkpoint).
    pub fn load_words(path: &Path, dim: usize) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let words: Vec<String> = text.lines().map(str::to_string).collect();
        let n = words.len();
        Ok(GloveVocab::from_parts(words, dim, vec![0.0; n * dim], 0))
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// The row of a token, if it is in the vocabulary.
    pub fn id(&self, token: &str) -> Option<u32> {
        self.index.get(token).copied()
    }

    /// Token ids of a text; unknown tokens are dropped.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        basic_english(text)
            .iter()
            .filter_map(|t| self.index.get(t.as_str()).copied())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_english_follows_torchtext() {
        assert_eq!(
            basic_english(
                "The speaker \"Chandler\" said:\n###\nI'm fine, (really)!? Yes; no.<br />ok"
            ),
            [
                "the", "speaker", "chandler", "said", "###", "i", "'", "m", "fine", ",", "(",
                "really", ")", "!", "?", "yes", "no", ".", "ok"
            ]
        );
    }
}
