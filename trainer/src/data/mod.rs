//! The dataset at training time: a split's rows and media ([`dataset`]), the GloVe vocabulary ([`glove_vocab`]) and
//! GPT-2 tokenizer ([`tokenizer`]) that turn prompts into ids, and batches decoded ahead of the model
//! ([`loader`]).

pub mod dataset;
pub mod face_crops;
pub mod faces;
pub mod glove_vocab;
pub mod loader;
pub mod tokenizer;

pub use dataset::{MediaCounts, Preprocess, SplitData};
pub use glove_vocab::{basic_english, GloveVocab};
pub use loader::{Batch, Loader};
pub use tokenizer::Gpt2Tokenizer;
