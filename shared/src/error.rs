use std::path::PathBuf;

/// Errors of the shared readers and parsers. Every variant names the file (and where it applies the 1-based
/// line of the file and the column) so a user can go straight to the bad input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: line {line}: column `{column}`: {message}")]
    Field {
        path: PathBuf,
        line: u64,
        column: String,
        message: String,
    },
    #[error("{path}: line {line}: {message}")]
    Row {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("{path}: header: {message}")]
    Header { path: PathBuf, message: String },
    #[error("unknown {what} `{value}`; expected one of: {expected}")]
    Unknown {
        what: &'static str,
        value: String,
        expected: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
