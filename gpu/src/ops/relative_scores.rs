//! The disentangled c2p/p2c gather-add and its scatter backward.

use deberta_core::Error;
use deberta_core::kernels::RelativeScoresSpec;

use super::{flag, word};
use crate::device::Gpu;
use crate::kernels::{ELEMENTWISE_WG, Kernel};
use crate::params::RelativeParams;
use crate::tensor::{GpuIndices, GpuTensor};

fn params(spec: RelativeScoresSpec, c2p: bool, p2c: bool) -> Result<RelativeParams, Error> {
    Ok(RelativeParams {
        batch: word(spec.batch)?,
        heads: word(spec.heads)?,
        len: word(spec.len)?,
        rows: word(spec.rows)?,
        scale: spec.scale,
        has_c2p: flag(c2p),
        has_p2c: flag(p2c),
        _pad0: 0,
    })
}

/// `scores[b,h,i,j] += c2p[h,b,i,idx[i,j]]/s + p2c[h,b,j,idx[i,j]]/s`.
pub(crate) fn add_relative_scores(
    gpu: &Gpu,
    scores: &mut GpuTensor,
    c2p: Option<&GpuTensor>,
    p2c: Option<&GpuTensor>,
    index: &GpuIndices,
    spec: RelativeScoresSpec,
) -> Result<(), Error> {
    // The index values are validated on the host where the index is built.
    let total = spec.check(
        scores.len(),
        [c2p.map(GpuTensor::len), p2c.map(GpuTensor::len)],
        index.len(),
    )?;
    let c2p_buffer = match c2p {
        Some(t) => gpu.buf(t)?,
        None => &gpu.absent_input,
    };
    let p2c_buffer = match p2c {
        Some(t) => gpu.buf(t)?,
        None => &gpu.absent_input,
    };
    let buffers = [gpu.buf(scores)?, c2p_buffer, p2c_buffer, gpu.buf(index)?];
    if total == 0 || (c2p.is_none() && p2c.is_none()) {
        return Ok(());
    }
    gpu.dispatch(
        Kernel::AddRelativeScores,
        &params(spec, c2p.is_some(), p2c.is_some())?,
        &buffers,
        gpu.grid_for(total, ELEMENTWISE_WG)?,
    )
}

/// `dc2p`, `dp2c` (written) from `dscores`: one owner workgroup per output row.
pub(crate) fn relative_scores_backward(
    gpu: &Gpu,
    dscores: &GpuTensor,
    index: &GpuIndices,
    dc2p: Option<&mut GpuTensor>,
    dp2c: Option<&mut GpuTensor>,
    spec: RelativeScoresSpec,
) -> Result<(), Error> {
    spec.check_backward(
        dscores.len(),
        [
            dc2p.as_deref().map(GpuTensor::len),
            dp2c.as_deref().map(GpuTensor::len),
        ],
        index.len(),
    )?;
    let (source, index_buffer) = (gpu.buf(dscores)?, gpu.buf(index)?);
    let lines = spec.batch * spec.heads * spec.len;
    let params = params(spec, dc2p.is_some(), dp2c.is_some())?;
    for (kernel, table) in [
        (Kernel::RelativeBackwardC2p, dc2p),
        (Kernel::RelativeBackwardP2c, dp2c),
    ] {
        if let Some(table) = table {
            let out = gpu.buf(table)?;
            if lines > 0 && spec.rows > 0 {
                gpu.dispatch(
                    kernel,
                    &params,
                    &[out, source, index_buffer],
                    gpu.grid(lines as u64)?,
                )?;
            }
        }
    }
    Ok(())
}
