//! The host's error type: every failure says what went wrong and where, in one line.

use std::path::PathBuf;

/// Everything that can fail in the host tools.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// A file's contents are not what its format requires.
    #[error("{}: {reason}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where inside the file when known.
        reason: String,
    },
    /// A model directory or checkpoint lacks tensors the configuration requires.
    #[error("{}: missing tensors: {}", path.display(), names.join(", "))]
    MissingTensors {
        /// The checkpoint.
        path: PathBuf,
        /// The missing names.
        names: Vec<String>,
    },
    /// A tensor has a different shape or dtype than required.
    #[error("{}: tensor `{name}`: {reason}", path.display())]
    BadTensor {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The model rejected an input or configuration.
    #[error("{context}: {source}")]
    Model {
        /// What was being done.
        context: String,
        /// The core error.
        source: deberta_core::Error,
    },
    /// A command-line argument is malformed.
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A format error in `path`.
    pub fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// A core error while doing `context`.
    pub fn model(context: impl Into<String>, source: deberta_core::Error) -> Self {
        Error::Model {
            context: context.into(),
            source,
        }
    }
}

/// Result type of the host crate.
pub type Result<T> = std::result::Result<T, Error>;
