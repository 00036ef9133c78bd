// The Adam/XAdam update with decoupled weight decay, the gradient scaled by the global-norm
// clipping coefficient computed on the device from the global Σ g² (one element).

const ELEMENTWISE_WG: u32 = 256u;

struct Params {
    n: u32,
    bias_corrected: u32,
    has_clip: u32,
    _pad0: u32,
    lr: f32,
    // β and 1 − β, rounded from f64 on the host (AdamSpec::constants, as on the CPU).
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
    grad_scale: f32,
    max_norm: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read_write> m: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;
@group(0) @binding(4) var<storage, read> grad: array<f32>;
// One element: Σ g² over every parameter of the optimizer (read when `has_clip`).
@group(0) @binding(5) var<storage, read> squared_norm: array<f32>;

@compute @workgroup_size(ELEMENTWISE_WG)
fn adam_update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * ELEMENTWISE_WG + lid;
    if (i >= params.n) {
        return;
    }
    var grad_scale = params.grad_scale;
    if (params.has_clip != 0u) {
        // microsoft/DeBERTa Fp16Optimizer._grad_scale: g·(1/(‖g‖/max_norm)) when
        // ‖g‖ > max_norm (no +1e-6), as the CPU's clip_coefficient.
        let scale = sqrt(max(squared_norm[0], 0.0)) / params.max_norm;
        if (scale > 1.0) {
            grad_scale = params.grad_scale * (1.0 / scale);
        }
    }
    let g = grad[i] * grad_scale;
    var p = param[i];
    if (params.bias_corrected != 0u) {
        p = p * params.decay_factor;
    }
    let mi = params.beta1 * m[i] + params.one_minus_beta1 * g;
    let vi = params.beta2 * v[i] + params.one_minus_beta2 * g * g;
    m[i] = mi;
    v[i] = vi;
    if (params.bias_corrected != 0u) {
        let denom = sqrt(vi) / params.bias_correction2_sqrt + params.eps;
        p = p - params.step_size * mi / denom;
    } else {
        let update = mi / (sqrt(vi) + params.eps) + params.weight_decay * p;
        p = p - params.step_size * update;
    }
    param[i] = p;
}
