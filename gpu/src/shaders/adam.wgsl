// One element of the Adam/XAdam update with decoupled weight decay, shared by the one-tensor
// kernel (optimizer.wgsl) and the many-tensor one (optimizer_many.wgsl, whose every source
// calls it), so that both give the same bits.

const ELEMENTWISE_WG: u32 = 256u;

// What an element's update takes besides its values: the optimizer's constants (β and 1 − β
// rounded from f64 on the host, AdamSpec::constants, as on the CPU) and the tensor's rates.
struct AdamConstants {
    bias_corrected: bool,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    weight_decay: f32,
    // XAdam: lr; AdamW: lr/(1 − β1ᵗ).
    step_size: f32,
    // XAdam: 1; AdamW: sqrt(1 − β2ᵗ).
    bias_correction2_sqrt: f32,
    // AdamW: 1 − lr·wd.
    decay_factor: f32,
}

// The gradient's factor: `grad_scale` times the global-norm clipping coefficient from the
// global Σ g² (`has_clip`): microsoft/DeBERTa Fp16Optimizer._grad_scale, g·(1/(‖g‖/max_norm))
// when ‖g‖ > max_norm (no +1e-6), as the CPU's clip_coefficient.
fn clipped_grad_scale(grad_scale: f32, has_clip: bool, squared_norm: f32, max_norm: f32) -> f32 {
    if (has_clip) {
        let scale = sqrt(max(squared_norm, 0.0)) / max_norm;
        if (scale > 1.0) {
            return grad_scale * (1.0 / scale);
        }
    }
    return grad_scale;
}

// The updated (parameter, first moment, second moment) of one element from its values and its
// scaled gradient `g`.
fn adam_element(param: f32, m: f32, v: f32, g: f32, c: AdamConstants) -> vec3<f32> {
    var p = param;
    if (c.bias_corrected) {
        p = p * c.decay_factor;
    }
    let mi = c.beta1 * m + c.one_minus_beta1 * g;
    let vi = c.beta2 * v + c.one_minus_beta2 * g * g;
    if (c.bias_corrected) {
        let denom = sqrt(vi) / c.bias_correction2_sqrt + c.eps;
        p = p - c.step_size * mi / denom;
    } else {
        let update = mi / (sqrt(vi) + c.eps) + c.weight_decay * p;
        p = p - c.step_size * update;
    }
    return vec3<f32>(p, mi, vi);
}
