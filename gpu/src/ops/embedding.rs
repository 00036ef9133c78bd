//! Embedding gather and its owner-ordered scatter-add backward.

use deberta_core::Error;
use deberta_core::kernels::{check_embedding_backward, check_embedding_lookup};

use super::{flag, word};
use crate::device::Gpu;
use crate::kernels::{ELEMENTWISE_WG, Kernel};
use crate::params::EmbeddingParams;
use crate::tensor::{GpuIndices, GpuTensor};

/// `out[r] (+)= table[ids[r]]` for rows of width `dim`.
pub(crate) fn embedding_lookup(
    gpu: &Gpu,
    table: &GpuTensor,
    ids: &GpuIndices,
    out: &mut GpuTensor,
    dim: usize,
    accumulate: bool,
) -> Result<(), Error> {
    let needed = check_embedding_lookup(ids.len(), dim, out.len())?;
    let buffers = [gpu.buf(out)?, gpu.buf(table)?, gpu.buf(ids)?];
    if dim == 0 || needed == 0 {
        return Ok(());
    }
    let params = EmbeddingParams {
        positions: word(ids.len())?,
        dim: word(dim)?,
        table_rows: word(table.len() / dim)?,
        accumulate: flag(accumulate),
        ..Default::default()
    };
    gpu.dispatch(
        Kernel::EmbeddingLookup,
        &params,
        &buffers,
        gpu.grid_for(needed, ELEMENTWISE_WG)?,
    )
}

/// `dtable[ids[r]] += dout[r]` in position order, skipping ids equal to `skip`.
pub(crate) fn embedding_backward(
    gpu: &Gpu,
    ids: &GpuIndices,
    dout: &GpuTensor,
    dtable: &mut GpuTensor,
    dim: usize,
    skip: Option<u32>,
) -> Result<(), Error> {
    check_embedding_backward(ids.len(), dim, dout.len())?;
    let buffers = [gpu.buf(dtable)?, gpu.buf(dout)?, gpu.buf(ids)?];
    if dim == 0 || ids.is_empty() {
        return Ok(());
    }
    let params = EmbeddingParams {
        positions: word(ids.len())?,
        dim: word(dim)?,
        table_rows: word(dtable.len() / dim)?,
        has_skip: flag(skip.is_some()),
        skip: skip.unwrap_or(0),
        ..Default::default()
    };
    gpu.dispatch(
        Kernel::EmbeddingBackward,
        &params,
        &buffers,
        gpu.grid(ids.len() as u64)?,
    )
}
