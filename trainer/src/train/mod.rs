//! Training (docs/reference.md §5): the [`losses`], the optimiser and its schedule ([`optim`]), the [`metrics`],
//! the loop ([`run`]: prepare the data, train with early stopping, evaluate), and the run folder with its reports
//! ([`report`]). [`heap`] keeps the allocator from returning memory that every step needs again.

pub mod heap;
pub mod losses;
pub mod metrics;
pub mod optim;
pub mod report;
pub mod run;

pub use run::{
    epoch_len, epoch_order, evaluate, glove_path, planned_steps, prepare, train, Evaluation,
    Prepared, TrainOptions, VocabSource, EARLY_STOPPING_THRESHOLD,
};
