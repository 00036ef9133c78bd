//! Host-side launchers of the kernels: each validates its operands with the kernel's contract
//! in `deberta_core::kernels` (the check the CPU backend runs, so the same [`Error`] values),
//! fills the kernel's `Params` and records the dispatch.

pub(crate) mod attention;
pub(crate) mod attention_training;
pub(crate) mod elementwise;
pub(crate) mod embedding;
pub(crate) mod layer_norm;
pub(crate) mod loss;
pub(crate) mod matmul;
pub(crate) mod memory;
pub(crate) mod optimizer;
pub(crate) mod random;
pub(crate) mod reduce;
pub(crate) mod relative_scores;
pub(crate) mod softmax;

use deberta_core::Error;

use crate::device::Gpu;
use crate::error::device_error;
use crate::pool::PooledBuffer;
use crate::tensor::DeviceBuffer;

/// A size or index as the kernels' 32-bit integers.
pub(crate) fn word(value: usize) -> Result<u32, Error> {
    u32::try_from(value).map_err(|_| Error::ShapeMismatch {
        what: "a size beyond the GPU kernels' 32-bit indexing",
        expected: u32::MAX as usize,
        found: value,
    })
}

/// A boolean kernel flag.
pub(crate) fn flag(value: bool) -> u32 {
    u32::from(value)
}

impl Gpu {
    /// The buffer of a tensor, if it was made by this backend.
    pub(crate) fn buf<'t, T>(
        &self,
        tensor: &'t DeviceBuffer<T>,
    ) -> Result<&'t PooledBuffer, Error> {
        if tensor.belongs_to(&self.pool) {
            Ok(tensor.pooled())
        } else {
            Err(device_error("a tensor of another WgpuBackend was passed"))
        }
    }

    /// The grid of a one-thread-per-item launch over `items` items, `threads` per workgroup.
    pub(crate) fn grid_for(&self, items: usize, threads: u32) -> Result<[u32; 3], Error> {
        self.grid((items as u64).div_ceil(u64::from(threads)))
    }
}
