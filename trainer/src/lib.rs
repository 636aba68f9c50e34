//! `erc-train`: a multimodal emotion-recognition trainer (candle) for MELD, a faithful re-implementation of the
//! HLM12ERC experiments (`docs/reference.md` describes the original system, docs/reference.md §2, docs/reference.md §3, docs/reference.md §5, docs/reference.md §6, and its quirks).
//!
//! # Where things live
//! The modules follow the data's way through a run. [`config`] reads an experiment's YAML. [`data`] loads a
//! split of the `meld-etl` dataset, turns prompts into token ids and decodes batches ahead of the model.
//! [`encoders`] are the per-modality networks (GloVe, GPT-2, ResNet-50, raw waveform, wav2vec2) and `hub`, where
//! their pretrained weights come from; [`model`] assembles them with the fusion and the head into the
//! classifier. [`train`] holds the losses, the optimiser, the loop, the metrics and the run folder's reports;
//! [`table4`] runs the report's 30 experiments and sets our numbers beside the paper's; [`predict`] labels
//! conversations a trained run has never seen; [`selfcheck`] is what a GPU
//! machine runs to confirm parity and measure speed.
//! Beneath them, [`nn`] has the layers (Linear, LayerNorm, BatchNorm, attention, the parameter store) and
//! [`ops`] the numeric ops those layers run, each owning which implementation runs on which device (a CPU
//! kernel, a CUDA kernel, or composed candle ops): no code outside `ops/` chooses a kernel.

pub mod config;
pub mod data;
pub mod encoders;
pub mod error;
pub mod model;
pub mod nn;
pub mod ops;
pub mod predict;
pub mod selfcheck;
pub mod table4;
pub mod train;

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
