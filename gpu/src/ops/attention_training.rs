//! The fused disentangled attention of training: a forward that writes the context and one
//! logsumexp per query row (the tiled kernel of `fused_attention.wgsl` with statistics and
//! dropout), and a backward that recomputes the probabilities from it tile by tile
//! (FlashAttention-2, `attention_backward.wgsl`) in a query-owned pass (dQ, dc2p) and a
//! key-owned pass (dK, dV, dp2c).
//!
//! Memory: per (sequence, head) the composed path keeps the probabilities `[len, len]`, under
//! attention dropout a dropped copy, and in the backward the score gradients `[len, len]`; this
//! path keeps `len` statistics and `len` scratch values instead. At `len = 512` that is
//! 3 · 512² · 4 B = 3 MiB against 2 · 512 · 4 B = 4 KiB per head (the `[heads, N, R]` c2p/p2c
//! table gradients, which the position projections' gradients are computed from, remain).

use deberta_core::backend::{AttentionDropout, AttentionLengths, AttentionSpec};
use deberta_core::kernels::require;
use deberta_core::{Error, Precision};

use super::attention::{Operands, TrainingForward, grid, optional, params};
use crate::device::Gpu;
use crate::kernels::{ATTN_MAX_HEAD_DIM, Kernel};
use crate::pool::PooledBuffer;
use crate::tensor::{GpuIndices, GpuTensor};

/// Storage buffers of the widest training kernel (the backward passes).
const STORAGE_BUFFERS: u32 = 13;

/// Where the training backward writes (see `deberta_core::backend::AttentionGrads`).
pub(crate) struct Grads<'a> {
    pub(crate) drows: &'a mut GpuTensor,
    pub(crate) dquery: &'a mut GpuTensor,
    pub(crate) dkey: &'a mut GpuTensor,
    pub(crate) dvalue: &'a mut GpuTensor,
    pub(crate) dc2p: Option<&'a mut GpuTensor>,
    pub(crate) dp2c: Option<&'a mut GpuTensor>,
}

/// Whether the training kernels take this attention on this device: heads up to
/// [`ATTN_MAX_HEAD_DIM`] wide, f32 or f16 products (the kernels round every operand to
/// binary16 for the latter, as the f16 matmuls do) and a device that binds [`STORAGE_BUFFERS`]
/// storage buffers per kernel.
pub(crate) fn supports(gpu: &Gpu, spec: &AttentionSpec, products: Precision) -> bool {
    gpu.fused_attention
        && spec.head_dim <= ATTN_MAX_HEAD_DIM as usize
        && matches!(products, Precision::F32 | Precision::F16)
        && gpu.limits.max_storage_buffers_per_shader_stage >= STORAGE_BUFFERS
}

/// The operand contract ([`AttentionSpec::check`] plus the statistics); returns `N·W`.
fn check(
    ops: &Operands<'_>,
    context: usize,
    stats: usize,
    spec: &AttentionSpec,
) -> Result<usize, Error> {
    let activation = spec.check(AttentionLengths {
        query: ops.query.len(),
        key: ops.key.len(),
        value: ops.value.len(),
        context,
        mask: ops.mask.len(),
        pos_key: ops.pos_key.map(GpuTensor::len),
        pos_query: ops.pos_query.map(GpuTensor::len),
        index: ops.index.map(GpuIndices::len),
    })?;
    require("attention_train", "stats", spec.stats(), stats)?;
    if spec.head_dim > ATTN_MAX_HEAD_DIM as usize {
        return Err(Error::ShapeMismatch {
            what: "head width beyond the fused training attention",
            expected: ATTN_MAX_HEAD_DIM as usize,
            found: spec.head_dim,
        });
    }
    Ok(activation)
}

/// The index buffer when a position term is present (a placeholder otherwise).
fn index_buffer<'a>(gpu: &'a Gpu, ops: &Operands<'a>) -> Result<&'a PooledBuffer, Error> {
    match ops.index {
        Some(index) if ops.pos_key.is_some() || ops.pos_query.is_some() => gpu.buf(index),
        _ => Ok(&gpu.absent_input),
    }
}

/// The buffer of an optional output (a placeholder when absent).
fn output<'a>(gpu: &'a Gpu, tensor: Option<&'a GpuTensor>) -> Result<&'a PooledBuffer, Error> {
    match tensor {
        Some(t) => gpu.buf(t),
        None => Ok(&gpu.absent_output),
    }
}

/// `context = dropout(P)·V` and `stats[b,h,i] = logsumexp_j(score[i,j])` (masked), the
/// products' operands rounded to binary16 when `products` is [`Precision::F16`].
pub(crate) fn forward(
    gpu: &Gpu,
    ops: Operands<'_>,
    context: &mut GpuTensor,
    stats: &mut GpuTensor,
    dropout: Option<AttentionDropout>,
    spec: AttentionSpec,
    products: Precision,
) -> Result<(), Error> {
    check(&ops, context.len(), stats.len(), &spec)?;
    super::attention::fused_attention(
        gpu,
        ops,
        context,
        Some(TrainingForward {
            stats,
            dropout,
            f16_operands: products == Precision::F16,
        }),
        spec,
    )
}

/// A c2p or p2c table gradient of `table` elements (`name` in errors): needed exactly where
/// its position projection is given (`projected`), refused as `what` when missing.
fn table_grad<'t>(
    projected: bool,
    grad: Option<&'t mut GpuTensor>,
    table: usize,
    (name, what): (&'static str, &'static str),
) -> Result<Option<&'t mut GpuTensor>, Error> {
    match (projected, grad) {
        (true, Some(t)) => {
            require("attention_backward", name, table, t.len())?;
            Ok(Some(t))
        }
        (true, None) => Err(Error::Missing { what }),
        (false, _) => Ok(None),
    }
}

/// The backward from `dcontext`, given the forward's operands, `context` and `stats` (and its
/// `products`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    gpu: &Gpu,
    ops: Operands<'_>,
    context: &GpuTensor,
    stats: &GpuTensor,
    dcontext: &GpuTensor,
    dropout: Option<AttentionDropout>,
    grads: Grads<'_>,
    spec: AttentionSpec,
    products: Precision,
) -> Result<(), Error> {
    let activation = check(&ops, context.len(), stats.len(), &spec)?;
    const KERNEL: &str = "attention_backward";
    require(KERNEL, "dcontext", activation, dcontext.len())?;
    require(KERNEL, "dquery", activation, grads.dquery.len())?;
    require(KERNEL, "dkey", activation, grads.dkey.len())?;
    require(KERNEL, "dvalue", activation, grads.dvalue.len())?;
    require(KERNEL, "drows", spec.stats(), grads.drows.len())?;
    let relative = ops.pos_key.is_some() || ops.pos_query.is_some();
    let table = if relative { spec.table() } else { 0 };
    let dc2p = table_grad(
        ops.pos_key.is_some(),
        grads.dc2p,
        table,
        ("dc2p", "c2p gradient buffer"),
    )?;
    let dp2c = table_grad(
        ops.pos_query.is_some(),
        grads.dp2c,
        table,
        ("dp2c", "p2c gradient buffer"),
    )?;
    let params = params(&ops, &spec, dropout, products == Precision::F16)?;
    let grid = grid(gpu, &spec)?;
    let shared = [
        gpu.buf(stats)?,
        gpu.buf(ops.query)?,
        gpu.buf(ops.key)?,
        gpu.buf(ops.value)?,
        optional(gpu, ops.pos_key)?,
        optional(gpu, ops.pos_query)?,
        index_buffer(gpu, &ops)?,
        gpu.buf(ops.mask)?,
    ];
    let mut query_pass = vec![
        gpu.buf(grads.dquery)?,
        output(gpu, dc2p.as_deref())?,
        gpu.buf(grads.drows)?,
        gpu.buf(dcontext)?,
        gpu.buf(context)?,
    ];
    query_pass.extend(shared);
    let mut key_pass = vec![
        gpu.buf(grads.dkey)?,
        gpu.buf(grads.dvalue)?,
        output(gpu, dp2c.as_deref())?,
        gpu.buf(dcontext)?,
        gpu.buf(grads.drows)?,
    ];
    key_pass.extend(shared);
    if activation == 0 {
        return Ok(());
    }
    // The key-owned pass reads the query-owned pass's `drows`.
    gpu.dispatch(Kernel::AttentionBackwardQuery, &params, &query_pass, grid)?;
    gpu.dispatch(Kernel::AttentionBackwardKey, &params, &key_pass, grid)
}
