//! `meld-etl`: MELD.Raw → the training dataset, and a generator of MELD.Raw-shaped trees.
//!
//! One module per stage, in the order the data flows: [`layout`] (where MELD.Raw keeps things) and [`meld`] (its
//! CSV and clip names), then the stages of `extract`: [`discover`] (find the CSVs and clip folders) →
//! [`raw_csv`] (read the annotations) → [`decode`] (one demux pass per clip: sampled frames and audio) →
//! [`mosaic`] (stacked JPEG), [`audio`] (down-mix, resample, WAV) and, with `--faces`, [`faces`] (RetinaFace
//! face-only mosaics and boxes) → [`extract`] (the parallel, resumable driver). [`segment`] cuts a long video's
//! utterances ([`subtitles`]) through the same stages. [`scan`] reports what a tree
//! holds without writing; [`verify`] checks a written dataset. [`synth`] writes MELD-shaped trees for tests and
//! demos.

pub mod layout;
pub mod meld;

// The stages of `extract`, in the order the data flows through them.
// 1. where each split's CSV and clip folder are
pub mod discover;
// 2. the annotations
pub mod raw_csv;
// 3. one demux pass per clip: sampled frames and audio
pub mod decode;
// 4a. the stacked JPEG
pub mod mosaic;
// 4b. down-mix, resample, WAV
pub mod audio;
// 4c. face-only mosaics and face boxes (`--faces`)
pub mod faces;
// 5. the parallel, resumable driver
pub mod extract;

// A long video and its subtitles as utterances, through the same stages (`segment`).
pub mod segment;
pub mod subtitles;

// Reports on a raw tree and on a written dataset.
pub mod scan;
pub mod verify;

pub mod synth;
