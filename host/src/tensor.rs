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

/// An integer tensor of an inputs file, as [`int_tensor`] reads it.
pub struct IntTensor<'t> {
    /// Its values, row-major.
    pub values: &'t [i64],
    /// Its shape.
    pub shape: &'t [usize],
    path: &'t Path,
    name: &'t str,
}

impl IntTensor<'_> {
    /// The error saying what is wrong with this tensor.
    pub fn bad(&self, reason: String) -> Error {
        Error::BadTensor {
            path: self.path.to_path_buf(),
            name: self.name.into(),
            reason,
        }
    }
}

/// The integer tensor `name` of an inputs file at `path`.
pub fn int_tensor<'t>(
    tensors: &'t TensorMap,
    name: &'t str,
    path: &'t Path,
) -> Result<IntTensor<'t>> {
    let tensor = tensors
        .get(name)
        .ok_or_else(|| Error::format(path, format!("no `{name}` tensor")))?;
    let mut found = IntTensor {
        values: &[],
        shape: &tensor.shape,
        path,
        name,
    };
    found.values = tensor.as_int().ok_or_else(|| {
        found.bad(format!(
            "dtype {} is not an integer type (expected I64 or I32)",
            tensor.stored_as
        ))
    })?;
    Ok(found)
}

/// Reads a `[B, S]` integer tensor named `name` from an inputs file.
pub fn int_matrix(
    tensors: &TensorMap,
    name: &str,
    path: &Path,
) -> Result<(Vec<i64>, usize, usize)> {
    let tensor = int_tensor(tensors, name, path)?;
    match tensor.shape {
        [b, s] => Ok((tensor.values.to_vec(), *b, *s)),
        other => Err(tensor.bad(format!("shape {other:?} is not [batch, sequence]"))),
    }
}
