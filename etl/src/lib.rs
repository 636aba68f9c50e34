//! `meld-etl`: MELD.Raw → the training dataset, and a generator of MELD.Raw-shaped trees.
//!
//! One module per stage, in the order the data flows: [`layout`] (where MELD.Raw keeps things),
//! [`meld`] (its CSV and clip names), then the stages of `extract`. [`synth`] writes MELD-shaped trees for tests
//! and demos.

pub mod layout;
pub mod meld;
pub mod synth;
