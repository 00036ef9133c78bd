//! The fused disentangled attention forward (`fused_attention.wgsl`).

use deberta_core::Error;
use deberta_core::backend::{AttentionLengths, AttentionSpec};

use super::{flag, word};
use crate::device::Gpu;
use crate::kernels::{ATTN_BLOCK, ATTN_CHUNK, ATTN_MAX_HEAD_DIM, ATTN_THREADS, ATTN_TILE, Kernel};
use crate::params::FusedAttentionParams;
use crate::tensor::{GpuIndices, GpuTensor};

// The kernel's layout (its `const_assert`s): 4 × 4 scores and two column groups of four per
// thread, whole four-column vectors per chunk.
const _: () = assert!(
    ATTN_TILE == ATTN_THREADS * ATTN_BLOCK
        && ATTN_BLOCK == 4
        && ATTN_MAX_HEAD_DIM == 8 * ATTN_THREADS
        && ATTN_CHUNK.is_multiple_of(4)
);

/// The operands of [`fused_attention`] (see `deberta_core::backend::AttentionOperands`).
pub(crate) struct Operands<'a> {
    pub(crate) query: &'a GpuTensor,
    pub(crate) key: &'a GpuTensor,
    pub(crate) value: &'a GpuTensor,
    pub(crate) pos_key: Option<&'a GpuTensor>,
    pub(crate) pos_query: Option<&'a GpuTensor>,
    pub(crate) index: Option<&'a GpuIndices>,
    pub(crate) mask: &'a GpuTensor,
}

/// The buffer of an optional read-only operand (a placeholder when absent).
pub(crate) fn optional<'a>(
    gpu: &'a Gpu,
    tensor: Option<&'a GpuTensor>,
) -> Result<&'a crate::pool::PooledBuffer, Error> {
    match tensor {
        Some(t) => gpu.buf(t),
        None => Ok(&gpu.absent_input),
    }
}

/// Whether the fused kernel takes this shape (heads up to [`ATTN_MAX_HEAD_DIM`] wide).
pub(crate) fn supports(spec: &AttentionSpec) -> bool {
    spec.head_dim <= ATTN_MAX_HEAD_DIM as usize
}

/// `context = masked_softmax(Q·Kᵀ/s + c2p/s + p2c/s)·V` in one pass over key tiles.
pub(crate) fn fused_attention(
    gpu: &Gpu,
    ops: Operands<'_>,
    context: &mut GpuTensor,
    spec: AttentionSpec,
) -> Result<(), Error> {
    let activation = spec.check(AttentionLengths {
        query: ops.query.len(),
        key: ops.key.len(),
        value: ops.value.len(),
        context: context.len(),
        mask: ops.mask.len(),
        pos_key: ops.pos_key.map(GpuTensor::len),
        pos_query: ops.pos_query.map(GpuTensor::len),
        index: ops.index.map(GpuIndices::len),
    })?;
    let relative = ops.pos_key.is_some() || ops.pos_query.is_some();
    let index = ops.index.filter(|_| relative);
    let buffers = [
        gpu.buf(context)?,
        gpu.buf(ops.query)?,
        gpu.buf(ops.key)?,
        gpu.buf(ops.value)?,
        optional(gpu, ops.pos_key)?,
        optional(gpu, ops.pos_query)?,
        match index {
            Some(index) => gpu.buf(index)?,
            None => &gpu.absent_input,
        },
        gpu.buf(ops.mask)?,
    ];
    if activation == 0 {
        return Ok(());
    }
    if !supports(&spec) {
        return Err(Error::ShapeMismatch {
            what: "head width beyond the fused attention kernel",
            expected: ATTN_MAX_HEAD_DIM as usize,
            found: spec.head_dim,
        });
    }
    let tiles = spec.len.div_ceil(ATTN_TILE as usize);
    let params = FusedAttentionParams {
        batch: word(spec.batch)?,
        heads: word(spec.heads)?,
        len: word(spec.len)?,
        head_dim: word(spec.head_dim)?,
        width: word(spec.width())?,
        first_row: word(spec.first_row)?,
        tiles: word(tiles)?,
        has_c2p: flag(ops.pos_key.is_some()),
        has_p2c: flag(ops.pos_query.is_some()),
        inv_scale: 1.0 / spec.scale,
        scale: spec.scale,
        _pad0: 0,
    };
    // No larger than `batch·heads·len`, which `check` has bounded.
    let groups = spec.batch * spec.heads * tiles;
    gpu.dispatch(
        Kernel::FusedAttention,
        &params,
        &buffers,
        gpu.grid(groups as u64)?,
    )
}
