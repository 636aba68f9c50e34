//! The model: the [`classifier`] that assembles the encoders of a config with a [`fusion`] of their embeddings
//! (concatenation, multi-head attention, TMN's Tensor Mixer of [`mixer`], or cross-attention) and the feed-forward
//! [`head`] (and, with a sentiment task, a second head).

pub mod classifier;
pub mod face_net;
pub mod frames_lstm;
pub mod fusion;
pub mod head;
pub mod mixer;
pub mod sparse_attention;

pub use classifier::{pad_right, Backbones, Model};
pub use head::{Head, HeadOutput};
