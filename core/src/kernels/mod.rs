//! Slice kernels: the CPU implementation of every operation in the [`Backend`](crate::Backend)
//! trait, forward and backward, written over plain `&[f32]` so that
//! [`CpuBackend`](crate::CpuBackend) and the heap-free edge runtime share them.
//!
//! Every kernel validates the lengths of its operands against the shape it is given and returns
//! [`Error::BufferTooSmall`] instead of reading out of bounds. Each kernel's operand contract is
//! public, written once, and shared by every backend: a method `check` (and `check_backward`)
//! of its spec type ([`MatmulSpec::check`], [`LayerNormSpec::check`], …), or a `check_*`
//! function beside a kernel that takes no spec ([`check_cross_entropy`], …).
//! Reductions run in a fixed order: outputs are bit-for-bit reproducible.

#[cfg(all(feature = "std", target_arch = "x86_64"))]
mod amx;
#[cfg(feature = "alloc")]
mod bf16_rows;
mod dropout;
mod elementwise;
mod embedding;
#[cfg(feature = "alloc")]
mod int8_rows;
mod lanes;
mod layer_norm;
mod loss;
mod matmul;
mod optimizer;
#[cfg(feature = "alloc")]
mod packed;
#[cfg(feature = "alloc")]
mod reduced;
mod relative_scores;
mod sampling;
mod softmax;
#[cfg(all(test, feature = "alloc"))]
pub(crate) mod test_values;

#[cfg(all(feature = "std", target_arch = "x86_64"))]
pub use amx::{available as amx_available, set_amx};
pub use dropout::dropout;
pub use elementwise::{
    activation, activation_backward, add_assign, add_bias, add_sequence_row,
    add_sequence_row_backward, check_activation, check_activation_backward, check_add_assign,
    check_add_bias, check_add_sequence_row, check_add_sequence_row_backward, check_scale_rows,
    check_sum_rows, scale, scale_rows, sum_rows,
};
pub use embedding::{
    check_embedding_backward, check_embedding_lookup, embedding_backward, embedding_lookup,
};
pub use layer_norm::{LayerNormSpec, layer_norm, layer_norm_backward};
pub use loss::{bce_with_logits, check_bce_with_logits, check_cross_entropy, cross_entropy, sum};
#[cfg(feature = "std")]
pub(crate) use matmul::TINY_OUTPUT;
pub use matmul::{MatmulBlock, MatmulSpec, MatrixLayout};
#[cfg(feature = "alloc")]
pub use matmul::{matmul, matmul_block};

pub(crate) use optimizer::sum_of_squares_f64;
pub use optimizer::{AdamConstants, AdamSpec, adam_update, clip_coefficient, sum_of_squares};
#[cfg(feature = "alloc")]
pub use packed::{
    Bf16Instructions, PANEL, PackedWeight, check_linear_packed, f32_packing_pays, linear_packed,
    packed_kernel_name, round_bf16, set_bf16_instructions, vnni_hardware,
};
#[cfg(feature = "alloc")]
pub(crate) use packed::{
    Bf16Source, bf16_product, bf16_words_len, check_weight, linear_packed_rows, packed_piece_rows,
};
#[cfg(feature = "alloc")]
pub use reduced::store_product;
#[cfg(feature = "alloc")]
pub(crate) use reduced::{a_rows, b_source};
pub use relative_scores::{RelativeScoresSpec, add_relative_scores, relative_scores_backward};
pub use sampling::{check_sample_categorical, sample_categorical};
pub use softmax::{SoftmaxSpec, masked_softmax, masked_softmax_backward};

// Row- and element-range forms of the kernels above, for backends that split the work.
#[cfg(feature = "alloc")]
pub(crate) use dropout::dropout_from;
#[cfg(feature = "alloc")]
pub(crate) use layer_norm::{layer_norm_backward_input, layer_norm_backward_params};
#[cfg(feature = "alloc")]
pub(crate) use loss::cross_entropy_rows;
#[cfg(feature = "alloc")]
pub(crate) use relative_scores::{RelativeTerm, add_relative_scores_rows, relative_table_backward};
#[cfg(feature = "alloc")]
pub(crate) use sampling::sample_categorical_rows;
#[cfg(feature = "alloc")]
pub(crate) use softmax::masked_softmax_backward_rows;
// The edge runtime (built without `alloc` too) runs one score row at a time.
pub(crate) use softmax::masked_softmax_rows;

use crate::Error;

/// Checks that an operand holds at least `needed` elements.
#[inline]
pub fn require(
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

/// The product of `dims`, with overflow reported as a too-small buffer (no shape this large
/// can exist).
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
