//! What the MELD ETL (`meld-etl`) and the trainer (`erc-train`) must agree on, and nothing else:
//!
//! * [`Split`]: MELD's three splits, their raw CSV and clip-folder names, and our output names;
//! * [`Emotion`] and [`Sentiment`]: the labels, indexed in the reference's (alphabetical) order;
//! * [`dataset`]: the output dataset CSV schema (`train.csv`, `valid.csv`, `test.csv`) with its reader and writer;
//! * [`Error`]: errors that name the file, row and column they concern.

pub mod dataset;
mod error;
mod label;
mod split;

pub use dataset::{DatasetRow, DatasetWriter};
pub use error::{Error, Result};
pub use label::{Emotion, Sentiment};
pub use split::Split;
