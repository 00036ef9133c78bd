//! Slice kernels: the CPU implementation of every operation in the [`Backend`](crate::Backend)
//! trait, written over plain `&[f32]` so that [`CpuBackend`](crate::CpuBackend) and the
//! heap-free edge runtime share them.
//!
//! Every kernel validates the lengths of its operands against the shape it is given and returns
//! [`Error::BufferTooSmall`](crate::Error::BufferTooSmall) instead of reading out of bounds.
//! Reductions run in a fixed order: outputs are bit-for-bit reproducible.

mod elementwise;
mod embedding;
mod layer_norm;
mod matmul;
mod relative_scores;
mod softmax;

pub use elementwise::{activation, add_assign, add_bias, add_sequence_row, scale_rows};
pub use embedding::embedding_lookup;
pub use layer_norm::{LayerNormSpec, layer_norm};
pub use matmul::{MatmulSpec, MatrixLayout, matmul};
pub use relative_scores::{RelativeScoresSpec, add_relative_scores};
pub use softmax::{SoftmaxSpec, masked_softmax};

use crate::Error;

/// Checks that an operand holds at least `needed` elements.
#[inline]
pub(crate) fn require(
    kernel: &'static str,
    operand: &'static str,
    needed: usize,
    len: usize,
) -> Result<(), Error> {
    if len < needed {
        Err(Error::BufferTooSmall {
            kernel,
            operand,
            needed,
            len,
        })
    } else {
        Ok(())
    }
}

/// `a · b` with overflow reported as a too-small buffer (no shape this large can exist).
#[inline]
pub(crate) fn product(kernel: &'static str, dims: &[usize]) -> Result<usize, Error> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or(Error::BufferTooSmall {
            kernel,
            operand: "shape",
            needed: usize::MAX,
            len: 0,
        })
}
