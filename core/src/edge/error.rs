//! Errors of the edge runtime: parsing a model file and running it. They carry no heap data.

use core::fmt;

/// Everything that can go wrong while parsing an edge model file or running inference on it.
#[derive(Debug, Clone, PartialEq)]
pub enum EdgeError {
    /// The file ends before a section it declares.
    Truncated {
        /// Bytes the section needs (from the start of the file).
        needed: usize,
        /// Bytes the file has.
        len: usize,
    },
    /// The file does not start with `DBTE`.
    BadMagic,
    /// A format version this runtime does not read.
    UnsupportedVersion {
        /// The version in the file.
        version: u32,
    },
    /// A stored CRC-32 does not match the bytes it covers.
    Checksum {
        /// `"header"`, `"payload"` or `"tokenizer"`.
        section: &'static str,
        /// The CRC in the file.
        stored: u32,
        /// The CRC of the bytes.
        computed: u32,
    },
    /// A header field has a value the format does not allow.
    InvalidField {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// The header describes a model configuration the core model rejects.
    Config(crate::Error),
    /// A tensor-table entry disagrees with what the header implies.
    BadTensor {
        /// Index of the entry in the table.
        index: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A tensor the runtime asked for is not part of the file's configuration.
    MissingTensor {
        /// The tensor.
        kind: super::layout::TensorKind,
        /// Its layer.
        layer: usize,
    },
    /// A tensor was read as another storage type than it has.
    TensorType {
        /// The tensor.
        kind: super::layout::TensorKind,
        /// The type the reader needs.
        expected: super::format::DType,
        /// The tensor's type.
        found: super::format::DType,
    },
    /// The model bytes do not start at a 4-byte boundary (f32 weights are read in place).
    Misaligned {
        /// The alignment required of the buffer's start.
        align: usize,
    },
    /// The runtime needs a little-endian target to read weights in place.
    UnsupportedTarget,
    /// No tokens were given.
    EmptyInput,
    /// More tokens than the file was exported for.
    SequenceTooLong {
        /// Tokens given.
        len: usize,
        /// The file's `max_seq_len`.
        max: usize,
    },
    /// A token id is not a row of the word embeddings.
    TokenOutOfRange {
        /// Position of the token.
        position: usize,
        /// The id.
        id: u32,
        /// Rows of the word embeddings.
        vocab: usize,
    },
    /// The arena is smaller than [`arena_bytes`](super::arena_bytes) says.
    ArenaTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        len: usize,
    },
    /// The output buffer holds fewer values than there are tokens.
    OutputTooSmall {
        /// Values needed.
        needed: usize,
        /// Values the buffer holds.
        len: usize,
    },
    /// A slice kernel rejected its operands (a bug: shapes are validated before).
    Kernel(crate::Error),
}

impl From<crate::Error> for EdgeError {
    fn from(e: crate::Error) -> Self {
        EdgeError::Kernel(e)
    }
}

impl fmt::Display for EdgeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EdgeError::Truncated { needed, len } => write!(
                f,
                "edge model truncated: {needed} bytes needed, the file has {len}"
            ),
            EdgeError::BadMagic => write!(f, "not an edge model (no DBTE magic)"),
            EdgeError::UnsupportedVersion { version } => {
                write!(f, "edge model format version {version} is not supported")
            }
            EdgeError::Checksum {
                section,
                stored,
                computed,
            } => write!(
                f,
                "edge model {section} checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
            EdgeError::InvalidField {
                field,
                value,
                reason,
            } => write!(f, "edge model header field `{field}` = {value}: {reason}"),
            EdgeError::Config(e) => write!(f, "edge model configuration: {e}"),
            EdgeError::BadTensor { index, reason } => {
                write!(f, "edge model tensor table entry {index}: {reason}")
            }
            EdgeError::MissingTensor { kind, layer } => {
                write!(f, "edge model has no tensor {kind:?} in layer {layer}")
            }
            EdgeError::TensorType {
                kind,
                expected,
                found,
            } => write!(
                f,
                "edge model tensor {kind:?} is {}, not {}",
                found.name(),
                expected.name()
            ),
            EdgeError::Misaligned { align } => {
                write!(f, "edge model bytes must start at a {align}-byte boundary")
            }
            EdgeError::UnsupportedTarget => {
                write!(f, "the edge runtime needs a little-endian target")
            }
            EdgeError::EmptyInput => write!(f, "no tokens to run"),
            EdgeError::SequenceTooLong { len, max } => write!(
                f,
                "{len} tokens exceed the model file's max_seq_len of {max}"
            ),
            EdgeError::TokenOutOfRange {
                position,
                id,
                vocab,
            } => write!(
                f,
                "token id {id} at position {position} is outside the vocabulary ({vocab} ids)"
            ),
            EdgeError::ArenaTooSmall { needed, len } => {
                write!(f, "arena of {len} bytes is too small: {needed} needed")
            }
            EdgeError::OutputTooSmall { needed, len } => {
                write!(
                    f,
                    "output buffer of {len} values is too small: {needed} needed"
                )
            }
            EdgeError::Kernel(e) => write!(f, "edge inference kernel: {e}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for EdgeError {}
