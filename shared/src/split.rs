use std::fmt;
use std::str::FromStr;

use crate::Error;

/// One of MELD's three splits. MELD calls the validation split `dev`; the reference's dataset files call it
/// `valid`. Both spellings are accepted wherever a user types a split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    Train,
    Dev,
    Test,
}

impl Split {
    /// In the order the reference processes them (and the order of every table we print).
    pub const ALL: [Split; 3] = [Split::Train, Split::Dev, Split::Test];

    /// MELD's own name of the split (`train`, `dev`, `test`): the Kaggle copy's folder names.
    pub fn meld_name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
            Split::Test => "test",
        }
    }

    /// The raw annotation CSV of the split in MELD.Raw.
    pub fn meld_csv(self) -> &'static str {
        match self {
            Split::Train => "train_sent_emo.csv",
            Split::Dev => "dev_sent_emo.csv",
            Split::Test => "test_sent_emo.csv",
        }
    }

    /// The folder of the split's `dia{D}_utt{U}.mp4` clips in MELD.Raw.
    pub fn meld_clip_dir(self) -> &'static str {
        match self {
            Split::Train => "train_splits",
            Split::Dev => "dev_splits_complete",
            Split::Test => "output_repeated_splits_test",
        }
    }

    /// Our name of the split in the dataset: the CSV stem and the media folder (`train`, `valid`, `test`).
    pub fn dataset_name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "valid",
            Split::Test => "test",
        }
    }

    /// The dataset CSV file of the split (`train.csv`, `valid.csv`, `test.csv`).
    pub fn dataset_csv(self) -> String {
        format!("{}.csv", self.dataset_name())
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.dataset_name())
    }
}

impl FromStr for Split {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "dev" | "valid" | "validation" => Ok(Split::Dev),
            "test" => Ok(Split::Test),
            _ => Err(Error::Unknown {
                what: "split",
                value: s.to_string(),
                expected: "train, dev (or valid), test".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_dev_is_valid() {
        for split in Split::ALL {
            assert_eq!(split.meld_name().parse::<Split>().unwrap(), split);
            assert_eq!(split.dataset_name().parse::<Split>().unwrap(), split);
        }
        assert_eq!(Split::Dev.dataset_csv(), "valid.csv");
        assert_eq!(Split::Test.meld_clip_dir(), "output_repeated_splits_test");
        assert!("validate".parse::<Split>().is_err());
    }
}
