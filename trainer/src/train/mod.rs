//! Training (docs/reference.md §5): the [`losses`], the optimiser and its schedule ([`optim`]), the [`metrics`],
//! the loop ([`run`]: prepare the data, train with early stopping, evaluate; resumable from [`checkpoint`]s), the
//! run folder with its reports ([`report`]) and the [`memory`] it held. [`heap`] keeps the allocator from returning memory that every step needs again.

pub mod checkpoint;
pub mod class_weights;
pub mod device;
pub mod diagnostics;
pub mod heap;
pub mod interrupt;
pub mod losses;
pub mod memory;
pub mod metrics;
pub mod optim;
pub mod report;
pub mod run;
pub mod scheduler;

pub use run::{
    config_fingerprint, data_fingerprint, encode_text, epoch_len, epoch_order, evaluate,
    glove_path, planned_steps, prepare, text_tokenizer, train, EpochHook, Evaluation, Prepared,
    Progress, TrainOptions, VocabSource, EARLY_STOPPING_THRESHOLD,
};
