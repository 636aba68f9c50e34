//! The model: the [`classifier`] that assembles the encoders of a config with a [`fusion`] of their embeddings
//! (concatenation or multi-head attention) and the feed-forward [`head`].

pub mod classifier;
pub mod fusion;
pub mod head;

pub use classifier::{pad_right, Backbones, Model};
pub use head::{Head, HeadOutput};
