//! The fused disentangled attention forward (`fused_attention.wgsl`): inference's, and the
//! forward of the fused training attention (with its per-row statistics and dropout).

use deberta_core::Error;
use deberta_core::backend::{AttentionDropout, AttentionLengths, AttentionSpec};

use super::{flag, word};
use crate::device::Gpu;
use crate::kernels::{ATTN_BLOCK, ATTN_CHUNK, ATTN_MAX_HEAD_DIM, ATTN_THREADS, ATTN_TILE, Kernel};
use crate::params::AttentionParams;
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

/// Storage buffers the kernel binds.
pub(crate) const STORAGE_BUFFERS: u32 = 9;

/// Whether the fused kernel runs this shape on this device: the device runs fused attention
/// ([`crate::DeviceOptions::fused_attention`]), heads up to
/// [`ATTN_MAX_HEAD_DIM`] wide, a device that binds [`STORAGE_BUFFERS`] per kernel (WebGPU's
/// default is 8; the adapters seen here offer more).
pub(crate) fn supports(gpu: &Gpu, spec: &AttentionSpec) -> bool {
    gpu.fused_attention
        && spec.head_dim <= ATTN_MAX_HEAD_DIM as usize
        && gpu.limits.max_storage_buffers_per_shader_stage >= STORAGE_BUFFERS
}

/// What the training forward adds to inference's: each query row's logsumexp into `stats`
/// (`[batch, heads, len]`, length checked by the caller) and attention dropout.
pub(crate) struct TrainingForward<'a> {
    pub(crate) stats: &'a mut GpuTensor,
    pub(crate) dropout: Option<AttentionDropout>,
    /// Round every operand of a product to binary16 (mixed precision's f16 products).
    pub(crate) f16_operands: bool,
}

/// `context = dropout(masked_softmax(Q·Kᵀ/s + c2p/s + p2c/s))·V` in one pass over key tiles
/// (no dropout and no statistics for inference, `training` `None`).
pub(crate) fn fused_attention(
    gpu: &Gpu,
    ops: Operands<'_>,
    context: &mut GpuTensor,
    training: Option<TrainingForward<'_>>,
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
    let (stats, dropout, f16_operands) = match training {
        Some(TrainingForward {
            stats,
            dropout,
            f16_operands,
        }) => (Some(stats), dropout, f16_operands),
        None => (None, None, false),
    };
    let buffers = [
        gpu.buf(context)?,
        match &stats {
            Some(stats) => gpu.buf(stats)?,
            None => &gpu.absent_output,
        },
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
    if !supports(gpu, &spec) {
        return Err(Error::Unsupported {
            what: "this attention in the fused kernel (heads over 64 wide, or a device binding \
                   fewer than 9 storage buffers per kernel)",
        });
    }
    let params = AttentionParams {
        has_stats: flag(stats.is_some()),
        ..params(&ops, &spec, dropout, f16_operands)?
    };
    gpu.dispatch(Kernel::FusedAttention, &params, &buffers, grid(gpu, &spec)?)
}

/// One workgroup per tile of [`ATTN_TILE`] queries (keys) of each sequence and head: the grid
/// of all three attention kernels.
pub(crate) fn grid(gpu: &Gpu, spec: &AttentionSpec) -> Result<[u32; 3], Error> {
    // No larger than `batch·heads·len`, which the operand checks have bounded.
    let tiles = spec.len.div_ceil(ATTN_TILE as usize);
    gpu.grid((spec.batch * spec.heads * tiles) as u64)
}

/// The kernels' parameters, without statistics (the forward sets `has_stats`), the products'
/// operands rounded to binary16 where `f16_operands`.
pub(crate) fn params(
    ops: &Operands<'_>,
    spec: &AttentionSpec,
    dropout: Option<AttentionDropout>,
    f16_operands: bool,
) -> Result<AttentionParams, Error> {
    let tiles = spec.len.div_ceil(ATTN_TILE as usize);
    let ((seed, step, stream), (p, keep_scale)) = dropout_words(dropout);
    Ok(AttentionParams {
        batch: word(spec.batch)?,
        heads: word(spec.heads)?,
        len: word(spec.len)?,
        head_dim: word(spec.head_dim)?,
        width: word(spec.width())?,
        first_row: word(spec.first_row)?,
        rows: word(spec.rows)?,
        tiles: word(tiles)?,
        has_c2p: flag(ops.pos_key.is_some()),
        has_p2c: flag(ops.pos_query.is_some()),
        inv_scale: 1.0 / spec.scale,
        scale: spec.scale,
        uniform: 1.0 / spec.len as f32,
        has_stats: 0,
        has_dropout: flag(dropout.is_some()),
        p,
        keep_scale,
        seed_lo: seed as u32,
        seed_hi: (seed >> 32) as u32,
        step,
        stream,
        f16_operands: flag(f16_operands),
        ..AttentionParams::default()
    })
}

/// The dropout stream `(seed, step, stream)` and `(p, 1/(1 − p))` of the attention kernels
/// (zeros and 1 without dropout): `1/(1 − p)` in the host's f32 arithmetic, as the dropout
/// kernel's, so that kept values are scaled identically.
pub(crate) fn dropout_words(dropout: Option<AttentionDropout>) -> ((u64, u32, u32), (f32, f32)) {
    let stream = dropout.map_or((0, 0, 0), |d| {
        (d.stream.seed, d.stream.step, d.stream.stream)
    });
    let p = dropout.map_or(0.0, |d| d.p);
    (stream, (p, 1.0 / (1.0 - p)))
}
