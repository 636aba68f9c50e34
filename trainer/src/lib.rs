//! `erc-train`: a multimodal emotion-recognition trainer (candle) for MELD, a faithful re-implementation of the
//! HLM12ERC experiments (see `shared/reference/hlm12erc-behaviour.md` §2, §3, §5, §6).
//!
//! The way through the code: [`config`] → [`dataset`] → [`model`] (encoders [`glove`], [`resnet`],
//! [`waveform`]; [`fusion`]; [`head`]) → [`losses`] → [`train`] (with [`optim`] and [`metrics`]) → [`report`].

pub mod attention;
pub mod batch_norm;
pub mod config;
pub mod conv1d;
pub mod dataset;
pub mod error;
pub mod fused;
pub mod fusion;
pub mod gelu;
pub mod glove;
pub mod gpt2;
pub mod group_norm;
pub mod head;
pub mod heap;
pub mod hub;
pub mod im2col;
pub mod layer_norm;
pub mod losses;
pub mod metrics;
pub mod model;
pub mod nn;
pub mod optim;
pub mod params;
pub mod pool;
pub mod report;
pub mod resnet;
pub mod softmax_dropout;
pub mod tokenizer;
pub mod train;
pub mod wav2vec2;
pub mod waveform;

pub use config::{Config, LoadedConfig};
pub use error::{Error, Result};

/// Fixes candle's CPU thread count once, before any thread starts. candle asks for it on every CPU operation and,
/// when `RAYON_NUM_THREADS` is unset, works it out each time from `/proc/cpuinfo` (and as the *physical* core
/// count): in a profile of the baseline head's training step ~3% of the time went to the kernel formatting that
/// file. All logical cores, unless the user set the variable.
pub fn init_cpu_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}
#[cfg(test)]
mod testing;
