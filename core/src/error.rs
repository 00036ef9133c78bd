//! Typed errors of the core crate. They carry no heap data, so the edge runtime can use
//! them too; [`core::fmt::Display`] gives a one-line human message.

use core::fmt;

/// The value of a rejected configuration field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ConfigValue {
    /// An integer value.
    Int(i64),
    /// A floating-point value.
    Float(f64),
    /// A value that is not a number (a string, a list).
    Other,
}

/// Everything that can go wrong inside `deberta-core`.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// A configuration value is out of range or inconsistent with another one.
    InvalidConfig {
        /// The config key (Hugging Face spelling) that is wrong.
        field: &'static str,
        /// Why it is wrong.
        reason: &'static str,
        /// The offending value.
        value: ConfigValue,
    },
    /// An activation name that Hugging Face's `ACT2FN` would not map to a function we implement.
    UnknownActivation,
    /// A kernel was handed a buffer too small for the shape it was asked to process.
    BufferTooSmall {
        /// The kernel that noticed.
        kernel: &'static str,
        /// Which operand.
        operand: &'static str,
        /// Elements the operation needs.
        needed: usize,
        /// Elements the buffer has.
        len: usize,
    },
    /// Two shapes that must agree do not.
    ShapeMismatch {
        /// What was being checked.
        what: &'static str,
        /// The expected size.
        expected: usize,
        /// The size found.
        found: usize,
    },
    /// An operand, buffer or part of the model that an operation needs was not given (a
    /// relative index for relative attention, the MLM head of an MLM step, …).
    Missing {
        /// What is missing.
        what: &'static str,
    },
    /// A token (or token-type) id is not a row of its embedding table.
    TokenOutOfRange {
        /// Which table.
        table: &'static str,
        /// Flat position of the offending id in the input.
        position: usize,
        /// The id.
        id: u64,
        /// Rows in the table.
        rows: usize,
    },
    /// The input sequence is longer than the model allows.
    SequenceTooLong {
        /// Input length.
        len: usize,
        /// Maximum length (`max_position_embeddings` when absolute positions are used).
        max: usize,
    },
    /// An attention-mask value other than 0 or 1.
    InvalidMask {
        /// Flat position of the value.
        position: usize,
    },
    /// An input is empty where at least one element is required.
    EmptyInput {
        /// Which input.
        what: &'static str,
    },
    /// A backend could not allocate or transfer a buffer.
    Device {
        /// What failed.
        what: &'static str,
    },
    /// A tensor larger than the device allows in one buffer binding (e.g. a vocabulary's
    /// embedding table on an adapter binding at most 128 MiB).
    DeviceLimit {
        /// Which limit.
        what: &'static str,
        /// Bytes asked for.
        requested: u64,
        /// The device's limit in bytes.
        limit: u64,
    },
    /// The backend or build has no implementation of an operation (e.g. reduced-precision
    /// products on wgpu).
    Unsupported {
        /// What was asked for.
        what: &'static str,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidConfig {
                field,
                reason,
                value,
            } => match value {
                ConfigValue::Int(v) => write!(f, "invalid config: `{field}` = {v}: {reason}"),
                ConfigValue::Float(v) => write!(f, "invalid config: `{field}` = {v}: {reason}"),
                ConfigValue::Other => write!(f, "invalid config: `{field}`: {reason}"),
            },
            Error::UnknownActivation => write!(f, "unknown activation function"),
            Error::BufferTooSmall {
                kernel,
                operand,
                needed,
                len,
            } => write!(
                f,
                "kernel `{kernel}`: operand `{operand}` needs {needed} elements but has {len}"
            ),
            Error::ShapeMismatch {
                what,
                expected,
                found,
            } => write!(
                f,
                "shape mismatch in {what}: expected {expected}, found {found}"
            ),
            Error::Missing { what } => write!(f, "missing {what}"),
            Error::TokenOutOfRange {
                table,
                position,
                id,
                rows,
            } => write!(
                f,
                "id {id} at flat position {position} is out of range for {table} ({rows} rows)"
            ),
            Error::SequenceTooLong { len, max } => write!(
                f,
                "sequence length {len} exceeds the model's maximum of {max} positions"
            ),
            Error::InvalidMask { position } => write!(
                f,
                "attention mask value at flat position {position} is neither 0 nor 1"
            ),
            Error::EmptyInput { what } => write!(f, "{what} is empty"),
            Error::Device { what } => write!(f, "device error: {what}"),
            Error::DeviceLimit {
                what,
                requested,
                limit,
            } => write!(
                f,
                "device limit: a tensor of {requested} bytes exceeds {what} ({limit} bytes)"
            ),
            Error::Unsupported { what } => write!(f, "unsupported: {what}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}
