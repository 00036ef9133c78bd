//! The Adam/XAdam update, with the global-norm clipping coefficient computed on the device
//! from the optimizer's device scalar `Σ g²`.

use deberta_core::Error;
use deberta_core::backend::{AdamTensors, Clip, check_range};
use deberta_core::kernels::AdamSpec;

use super::{flag, word};
use crate::device::Gpu;
use crate::kernels::{ADAM_SOURCES, ELEMENTWISE_WG, Kernel};
use crate::params::{AdamManyParams, AdamParams};
use crate::pool::PooledBuffer;
use crate::tensor::GpuTensor;

/// The buffer the update kernels bind as the global Σ g²: `clip`'s (checked to hold it), or
/// an unread stand-in without clipping.
fn squared_norm_buffer<'a>(
    gpu: &'a Gpu,
    clip: Option<Clip<'a, GpuTensor>>,
) -> Result<&'a PooledBuffer, Error> {
    match clip {
        Some(clip) => {
            check_range("adam_update", 0, 1, clip.squared_norm.len())?;
            gpu.buf(clip.squared_norm)
        }
        None => Ok(&gpu.absent_input),
    }
}

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
    let squared_norm = squared_norm_buffer(gpu, clip)?;
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

/// What the tensors of one `adam_update_many` dispatch share: whether the update is bias
/// corrected, and the bits of every constant but the rates that follow from a tensor's
/// learning rate and weight decay.
fn shared(spec: &AdamSpec) -> (bool, [u32; 7]) {
    let c = spec.constants();
    (
        spec.bias_correction_step.is_some(),
        [
            c.beta1,
            c.one_minus_beta1,
            c.beta2,
            c.one_minus_beta2,
            c.bias_correction2_sqrt,
            spec.eps,
            spec.grad_scale,
        ]
        .map(f32::to_bits),
    )
}

/// Every update of `updates`, each checked as [`adam_update`] checks it: where the device binds
/// the [`ADAM_SOURCES`] tensors' buffers of an `adam_update_many` dispatch (and its tensors
/// share kernels, `multi_tensor`), up to that many neighbours that share their constants
/// ([`shared`]) per dispatch, else one at a time.
pub(crate) fn adam_updates(
    gpu: &Gpu,
    updates: &mut [AdamTensors<'_, GpuTensor>],
    clip: Option<Clip<'_, GpuTensor>>,
) -> Result<(), Error> {
    for update in updates.iter() {
        let n = update.param.len();
        let spec = update.spec;
        spec.check(n, update.grad.len(), update.m.len(), update.v.len())?;
    }
    let bindings = Kernel::AdamUpdateMany.bindings().len() as u32;
    if !gpu.multi_tensor || gpu.limits.max_storage_buffers_per_shader_stage < bindings {
        for update in updates {
            let moments = (&mut *update.m, &mut *update.v);
            adam_update(gpu, update.param, update.grad, moments, update.spec, clip)?;
        }
        return Ok(());
    }
    let squared_norm = squared_norm_buffer(gpu, clip)?;
    let mut rest = &updates[..];
    while let Some(first) = rest.first() {
        let key = shared(&first.spec);
        let count = rest
            .iter()
            .take(ADAM_SOURCES as usize)
            .take_while(|u| shared(&u.spec) == key)
            .count();
        let (batch, after) = rest.split_at(count);
        update_many(gpu, batch, squared_norm, clip.map(|c| c.max_norm))?;
        rest = after;
    }
    Ok(())
}

/// One `adam_update_many` dispatch over `batch` (at most [`ADAM_SOURCES`] tensors that share
/// their constants; an empty one has no workgroup).
fn update_many(
    gpu: &Gpu,
    batch: &[AdamTensors<'_, GpuTensor>],
    squared_norm: &PooledBuffer,
    max_norm: Option<f32>,
) -> Result<(), Error> {
    let spec = batch[0].spec;
    let c = spec.constants();
    let mut params = AdamManyParams {
        count: word(batch.len())?,
        bias_corrected: flag(spec.bias_correction_step.is_some()),
        has_clip: flag(max_norm.is_some()),
        beta1: c.beta1,
        one_minus_beta1: c.one_minus_beta1,
        beta2: c.beta2,
        one_minus_beta2: c.one_minus_beta2,
        eps: spec.eps,
        bias_correction2_sqrt: c.bias_correction2_sqrt,
        grad_scale: spec.grad_scale,
        max_norm: max_norm.unwrap_or(0.0),
        ..Default::default()
    };
    let mut bound = vec![squared_norm];
    let mut groups = 0;
    for (t, update) in batch.iter().enumerate() {
        let rates = update.spec.constants();
        let n = update.param.len();
        params.n[t] = word(n)?;
        params.first_group[t] = word(groups)?;
        params.weight_decay[t] = update.spec.weight_decay;
        params.step_size[t] = rates.step_size;
        params.decay_factor[t] = rates.decay_factor;
        groups += n.div_ceil(ELEMENTWISE_WG as usize);
        bound.extend([
            gpu.buf(update.param)?,
            gpu.buf(update.m)?,
            gpu.buf(update.v)?,
            gpu.buf(update.grad)?,
        ]);
    }
    // The sources past `count` bind the first one's buffers again, which the kernel does not
    // touch there.
    let first_source: Vec<_> = bound[1..5].to_vec();
    while bound.len() < Kernel::AdamUpdateMany.bindings().len() {
        bound.extend(&first_source);
    }
    gpu.dispatch(
        Kernel::AdamUpdateMany,
        &params,
        &bound,
        gpu.grid(groups as u64)?,
    )
}
