//! LayerNorm forward and backward.

use deberta_core::Error;
use deberta_core::backend::LayerNormGrads;
use deberta_core::kernels::LayerNormSpec;

use super::memory::alloc;
use super::{flag, word};
use crate::device::Gpu;
use crate::kernels::{Kernel, PARAM_CHUNK_ROWS, ROW_WG};
use crate::params::{LayerNormParams, ReduceParams};
use crate::tensor::GpuTensor;

fn params(spec: LayerNormSpec) -> Result<LayerNormParams, Error> {
    Ok(LayerNormParams {
        rows: word(spec.rows)?,
        cols: word(spec.cols)?,
        eps: spec.eps,
        ..Default::default()
    })
}

/// Row-wise LayerNorm, recording `[mean, rstd]` per row in `stats` when given.
pub(crate) fn layer_norm(
    gpu: &Gpu,
    x: &GpuTensor,
    gamma: &GpuTensor,
    beta: &GpuTensor,
    out: &mut GpuTensor,
    stats: Option<&mut GpuTensor>,
    spec: LayerNormSpec,
) -> Result<(), Error> {
    spec.check(
        x.len(),
        gamma.len(),
        beta.len(),
        out.len(),
        stats.as_deref().map(GpuTensor::len),
    )?;
    let stats_buffer = match stats.as_deref() {
        Some(s) => gpu.buf(s)?,
        None => &gpu.absent_output,
    };
    let buffers = [
        gpu.buf(out)?,
        stats_buffer,
        gpu.buf(x)?,
        gpu.buf(gamma)?,
        gpu.buf(beta)?,
    ];
    if spec.cols == 0 || spec.rows == 0 {
        return Ok(());
    }
    let params = LayerNormParams {
        has_stats: flag(stats.is_some()),
        ..params(spec)?
    };
    gpu.dispatch(
        Kernel::LayerNorm,
        &params,
        &buffers,
        gpu.grid(spec.rows as u64)?,
    )
}

/// Backward of [`layer_norm`]: `dx` written or accumulated, `dγ`, `dβ` accumulated.
pub(crate) fn layer_norm_backward(
    gpu: &Gpu,
    x: &GpuTensor,
    gamma: &GpuTensor,
    stats: &GpuTensor,
    dout: &GpuTensor,
    grads: LayerNormGrads<'_, GpuTensor>,
    spec: LayerNormSpec,
) -> Result<(), Error> {
    let row_operands = [x.len(), dout.len(), grads.dx.len()];
    let col_operands = [gamma.len(), grads.dgamma.len(), grads.dbeta.len()];
    spec.check_backward(row_operands, stats.len(), col_operands)?;
    let (x, gamma, stats, dout) = (
        gpu.buf(x)?,
        gpu.buf(gamma)?,
        gpu.buf(stats)?,
        gpu.buf(dout)?,
    );
    let (dx, dgamma, dbeta) = (
        gpu.buf(grads.dx)?,
        gpu.buf(grads.dgamma)?,
        gpu.buf(grads.dbeta)?,
    );
    if spec.cols == 0 || spec.rows == 0 {
        return Ok(());
    }
    let base = params(spec)?;
    let dx_params = LayerNormParams {
        accumulate: flag(grads.accumulate_dx),
        ..base
    };
    gpu.dispatch(
        Kernel::LayerNormBackward,
        &dx_params,
        &[dx, x, gamma, stats, dout],
        gpu.grid(spec.rows as u64)?,
    )?;
    let chunks = spec.rows.div_ceil(PARAM_CHUNK_ROWS as usize);
    let partials: GpuTensor = alloc(gpu, chunks * 2 * spec.cols)?;
    let partial = gpu.buf(&partials)?;
    gpu.dispatch(
        Kernel::LayerNormParamPartials,
        &base,
        &[partial, x, stats, dout],
        gpu.grid_for(chunks * spec.cols, ROW_WG)?,
    )?;
    // The partials are `[chunks, 2·cols]`: the γ part of each row, then the β part, each
    // summed over the chunks in order into its gradient.
    let sums = ReduceParams {
        n: word(chunks)?,
        cols: word(spec.cols)?,
        ..Default::default()
    };
    gpu.dispatch(
        Kernel::SumColumnPairs,
        &sums,
        &[dgamma, partial, dbeta],
        gpu.grid_for(2 * spec.cols, ROW_WG)?,
    )
}
