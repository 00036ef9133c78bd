//! The Adam/XAdam update, with the global-norm clipping coefficient computed on the device.

use deberta_core::Error;
use deberta_core::backend::Clip;
use deberta_core::kernels::AdamSpec;

use super::memory::alloc;
use super::reduce::reduce_into;
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
    // Σ squared norms into a one-element scratch buffer, read by every thread of the update.
    let squared: Option<GpuTensor> = match &clip {
        Some(clip) => {
            let scratch: GpuTensor = alloc(gpu, 1)?;
            let norms = gpu.buf(clip.squared_norms)?;
            reduce_into(
                gpu,
                norms,
                clip.squared_norms.len(),
                false,
                gpu.buf(&scratch)?,
                0,
                1.0,
            )?;
            Some(scratch)
        }
        None => None,
    };
    if n == 0 {
        return Ok(());
    }
    let squared_buffer = match &squared {
        Some(s) => gpu.buf(s)?,
        None => &gpu.absent_input,
    };
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
        &[param, m, v, grad, squared_buffer],
        gpu.grid_for(n, ELEMENTWISE_WG)?,
    )
}
