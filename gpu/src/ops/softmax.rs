//! Masked softmax over attention scores and its backward.

use deberta_core::Error;
use deberta_core::kernels::SoftmaxSpec;

use super::word;
use crate::device::Gpu;
use crate::kernels::Kernel;
use crate::params::SoftmaxParams;
use crate::tensor::GpuTensor;

fn params(spec: SoftmaxSpec, rows: usize) -> Result<SoftmaxParams, Error> {
    Ok(SoftmaxParams {
        rows: word(rows)?,
        heads: word(spec.heads)?,
        len: word(spec.len)?,
        uniform_value: 1.0 / spec.len as f32,
    })
}

/// In-place softmax under the product padding mask.
pub(crate) fn masked_softmax(
    gpu: &Gpu,
    scores: &mut GpuTensor,
    mask: &GpuTensor,
    spec: SoftmaxSpec,
) -> Result<(), Error> {
    spec.check(scores.len(), mask.len())?;
    let rows = spec.batch * spec.heads * spec.len;
    let buffers = [gpu.buf(scores)?, gpu.buf(mask)?];
    if rows == 0 {
        return Ok(());
    }
    gpu.dispatch(
        Kernel::MaskedSoftmax,
        &params(spec, rows)?,
        &buffers,
        gpu.grid(rows as u64)?,
    )
}

/// In place: `grad` holds dP on entry and dS on return.
pub(crate) fn masked_softmax_backward(
    gpu: &Gpu,
    probs: &GpuTensor,
    grad: &mut GpuTensor,
    mask: &GpuTensor,
    spec: SoftmaxSpec,
) -> Result<(), Error> {
    spec.check_backward(probs.len(), grad.len(), mask.len())?;
    let rows = spec.batch * spec.heads * spec.len;
    let buffers = [gpu.buf(grad)?, gpu.buf(mask)?, gpu.buf(probs)?];
    if rows == 0 {
        return Ok(());
    }
    gpu.dispatch(
        Kernel::MaskedSoftmaxBackward,
        &params(spec, rows)?,
        &buffers,
        gpu.grid(rows as u64)?,
    )
}
