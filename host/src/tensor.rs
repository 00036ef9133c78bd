//! Tensors on the host as read from or written to files.

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
