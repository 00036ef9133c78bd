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
    #[error("{}: missing tensors: {}", path.display(), name_list(names))]
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
    /// A step of a larger task failed (e.g. one training run of `compare-sharing`).
    #[error("{context}: {source}")]
    Context {
        /// The step, e.g. `sharing mode es`.
        context: String,
        /// Its error.
        source: Box<Error>,
    },
    /// Ctrl-C or SIGTERM stopped a task before it produced its result.
    #[error("interrupted: {0}")]
    Interrupted(String),
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

    /// `source`, prefixed with the step of a larger task it happened in.
    pub fn context(context: impl Into<String>, source: Error) -> Self {
        Error::Context {
            context: context.into(),
            source: Box::new(source),
        }
    }
}

/// Result type of the host crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Names shown in full by [`Error::MissingTensors`]; the rest are counted.
const SHOWN_NAMES: usize = 16;

/// `a, b, c`, or the first [`SHOWN_NAMES`] and `and N more`, so that a config that asks for
/// thousands of absent tensors still gives a readable line.
fn name_list(names: &[String]) -> String {
    let mut list = names
        .iter()
        .take(SHOWN_NAMES)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN_NAMES {
        list.push_str(&format!(" and {} more", names.len() - SHOWN_NAMES));
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tensor_lists_are_bounded() {
        let error = |n: usize| Error::MissingTensors {
            path: "m.safetensors".into(),
            names: (0..n).map(|i| format!("t{i}")).collect(),
        };
        assert_eq!(
            error(2).to_string(),
            "m.safetensors: missing tensors: t0, t1"
        );
        let many = error(1000).to_string();
        assert!(many.ends_with(", t15 and 984 more"), "{many}");
    }
}
