//! Tensors on the host as read from or written to files.

use std::path::Path;

use crate::checkpoint::TensorMap;
use crate::error::{Error, Result};

/// The elements of a host tensor: every floating type widens to `f32`, every integer type to
/// `i64` (booleans become 0/1).
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// Floating-point elements.
    Float(Vec<f32>),
    /// Integer elements.
    Int(Vec<i64>),
}

/// A named tensor's shape, elements and the dtype it was stored as.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first (empty for a scalar).
    pub shape: Vec<usize>,
    /// The elements, row-major.
    pub data: TensorData,
    /// The stored dtype, as the file format names it (`"F32"`, `"BF16"`, `"I64"`, …).
    pub stored_as: String,
}

impl HostTensor {
    /// A float tensor stored as F32.
    pub fn float(shape: Vec<usize>, values: Vec<f32>) -> Self {
        HostTensor {
            shape,
            data: TensorData::Float(values),
            stored_as: "F32".to_string(),
        }
    }

    /// Number of elements implied by the shape.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The float elements, or `None` for an integer tensor.
    pub fn as_float(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::Float(v) => Some(v),
            TensorData::Int(_) => None,
        }
    }

    /// The integer elements, or `None` for a float tensor.
    pub fn as_int(&self) -> Option<&[i64]> {
        match &self.data {
            TensorData::Int(v) => Some(v),
            TensorData::Float(_) => None,
        }
    }
}

/// Reads a `[B, S]` integer tensor named `name` from an inputs file.
pub fn int_matrix(
    tensors: &TensorMap,
    name: &str,
    path: &Path,
) -> Result<(Vec<i64>, usize, usize)> {
    let tensor = tensors
        .get(name)
        .ok_or_else(|| Error::format(path, format!("no `{name}` tensor")))?;
    let bad = |reason: String| Error::BadTensor {
        path: path.to_path_buf(),
        name: name.into(),
        reason,
    };
    let values = tensor.as_int().ok_or_else(|| {
        bad(format!(
            "dtype {} is not an integer type (expected I64 or I32)",
            tensor.stored_as
        ))
    })?;
    match tensor.shape.as_slice() {
        [b, s] => Ok((values.to_vec(), *b, *s)),
        other => Err(bad(format!("shape {other:?} is not [batch, sequence]"))),
    }
}
