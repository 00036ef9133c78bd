//! The Adam/XAdam update, with the global-norm clipping coefficient computed on the device
//! from the optimizer's device scalar `Σ g²`.

use deberta_core::Error;
use deberta_core::backend::{Clip, check_range};
use deberta_core::kernels::AdamSpec;

use super::{flag, word};
use crate::device::Gpu;
use crate::kernels::{ELEMENTWISE_WG, Kernel};
use crate::params::AdamParams;
use crate::tensor::GpuTensor;

/// One update of `param` and its moments from `grad`.
pub(crate) fn adam_update(
    gpu: &Gpu,
    param: &mut GpuTensor,
    grad: &GpuTensor,
    moments: (&mut GpuTensor, &mut GpuTensor),
    spec: AdamSpec,
    clip: Option<Clip<'_, GpuTensor>>,
) -> Result<(), Error> {
    let n = param.len();
    let (m, v) = moments;
    spec.check(n, grad.len(), m.len(), v.len())?;
    let buffers = [gpu.buf(param)?, gpu.buf(m)?, gpu.buf(v)?, gpu.buf(grad)?];
    let squared_norm = match &clip {
        Some(clip) => {
            check_range("adam_update", 0, 1, clip.squared_norm.len())?;
            gpu.buf(clip.squared_norm)?
        }
        None => &gpu.absent_input,
    };
    if n == 0 {
        return Ok(());
    }
    // The CPU kernel's constants, derived by the same function.
    let c = spec.constants();
    let params = AdamParams {
        n: word(n)?,
        bias_corrected: flag(spec.bias_correction_step.is_some()),
        has_clip: flag(clip.is_some()),
        lr: spec.lr,
        beta1: c.beta1,
        one_minus_beta1: c.one_minus_beta1,
        beta2: c.beta2,
        one_minus_beta2: c.one_minus_beta2,
        eps: spec.eps,
        weight_decay: spec.weight_decay,
        step_size: c.step_size,
        bias_correction2_sqrt: c.bias_correction2_sqrt,
        decay_factor: c.decay_factor,
        grad_scale: spec.grad_scale,
        max_norm: clip.as_ref().map_or(0.0, |c| c.max_norm),
        ..Default::default()
    };
    let [param, m, v, grad] = buffers;
    gpu.dispatch(
        Kernel::AdamUpdate,
        &params,
        &[param, m, v, grad, squared_norm],
        gpu.grid_for(n, ELEMENTWISE_WG)?,
    )
}
