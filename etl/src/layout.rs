//! Where MELD.Raw keeps each split's annotation CSV and clip folder, in the two layouts people have:
//!
//! * `plain` — the official tarball, extracted: `ROOT/train_sent_emo.csv`, `ROOT/train_splits/` …
//! * `kaggle` — the Kaggle copy: `ROOT/MELD-RAW/MELD.Raw/{train,dev,test}/` with each split's CSV beside its
//!   clip folder.

use std::path::{Path, PathBuf};

use meld_shared::Split;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    Plain,
    Kaggle,
}

impl Layout {
    /// The folder that holds the split's CSV and clip folder.
    pub fn split_root(self, root: &Path, split: Split) -> PathBuf {
        match self {
            Layout::Plain => root.to_path_buf(),
            Layout::Kaggle => root
                .join("MELD-RAW")
                .join("MELD.Raw")
                .join(split.meld_name()),
        }
    }

    pub fn csv_path(self, root: &Path, split: Split) -> PathBuf {
        self.split_root(root, split).join(split.meld_csv())
    }

    pub fn clip_dir(self, root: &Path, split: Split) -> PathBuf {
        self.split_root(root, split).join(split.meld_clip_dir())
    }

    pub fn name(self) -> &'static str {
        match self {
            Layout::Plain => "plain",
            Layout::Kaggle => "kaggle",
        }
    }
}
