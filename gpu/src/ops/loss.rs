//! Cross-entropy over selected rows and BCE-with-logits.

use deberta_core::Error;
use deberta_core::kernels::{check_bce_with_logits, check_cross_entropy};

use super::word;
use crate::device::Gpu;
use crate::kernels::{ELEMENTWISE_WG, Kernel};
use crate::params::LossParams;
use crate::tensor::{GpuIndices, GpuTensor};

/// Per-row cross-entropy into `losses`, `(softmax − onehot)·grad_scale` into `dlogits`.
pub(crate) fn cross_entropy(
    gpu: &Gpu,
    logits: &GpuTensor,
    targets: &GpuIndices,
    losses: &mut GpuTensor,
    dlogits: &mut GpuTensor,
    vocab: usize,
    grad_scale: f32,
) -> Result<(), Error> {
    let rows = targets.len();
    check_cross_entropy(rows, vocab, logits.len(), dlogits.len(), losses.len())?;
    let buffers = [
        gpu.buf(losses)?,
        gpu.buf(dlogits)?,
        gpu.buf(logits)?,
        gpu.buf(targets)?,
    ];
    if vocab == 0 || rows == 0 {
        return Ok(());
    }
    let params = LossParams {
        rows: word(rows)?,
        vocab: word(vocab)?,
        grad_scale,
        _pad0: 0,
    };
    gpu.dispatch(
        Kernel::CrossEntropy,
        &params,
        &buffers,
        gpu.grid(rows as u64)?,
    )
}

/// Per-token weighted BCE-with-logits and its gradient.
pub(crate) fn bce_with_logits(
    gpu: &Gpu,
    logits: &GpuTensor,
    labels: &GpuTensor,
    weights: &GpuTensor,
    losses: &mut GpuTensor,
    dlogits: &mut GpuTensor,
    grad_scale: f32,
) -> Result<(), Error> {
    let n = logits.len();
    check_bce_with_logits(n, labels.len(), weights.len(), losses.len(), dlogits.len())?;
    let buffers = [
        gpu.buf(losses)?,
        gpu.buf(dlogits)?,
        gpu.buf(logits)?,
        gpu.buf(labels)?,
        gpu.buf(weights)?,
    ];
    if n == 0 {
        return Ok(());
    }
    let params = LossParams {
        rows: word(n)?,
        vocab: 1,
        grad_scale,
        _pad0: 0,
    };
    gpu.dispatch(
        Kernel::BceWithLogits,
        &params,
        &buffers,
        gpu.grid_for(n, ELEMENTWISE_WG)?,
    )
}
