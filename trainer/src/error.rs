//! The trainer's error type: every variant names what it concerns (a file, a config key, a data row) so a user
//! can go straight to the bad input.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config file that does not parse, or a key with a wrong or missing value.
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },

    /// The data folder (or a file in it) does not fit what the config needs.
    #[error("{path}: {message}")]
    Data { path: PathBuf, message: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Dataset(#[from] meld_shared::Error),

    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),

    /// A stop signal ended the run at a step boundary ([`crate::train::interrupt`]): not a failure, a rerun
    /// resumes it.
    #[error("interrupted: {0}")]
    Interrupted(String),

    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub fn data(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
