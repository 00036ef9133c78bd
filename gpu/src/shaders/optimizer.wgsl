// The Adam/XAdam update with decoupled weight decay, the gradient scaled by the global-norm
// clipping coefficient computed on the device from Σ of the per-parameter squared norms.

const ELEMENTWISE_WG: u32 = 256u;

struct Params {
    n: u32,
    bias_corrected: u32,
    has_clip: u32,
    _pad0: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    // 1 − β1ᵗ and 1 − β2ᵗ (computed on the host, as on the CPU).
    bias_correction1: f32,
    bias_correction2: f32,
    grad_scale: f32,
    max_norm: f32,
    _pad1: u32,
    _pad2: u32,
    _pad3: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read_write> m: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;
@group(0) @binding(4) var<storage, read> grad: array<f32>;
// One element: Σ of the squared gradient norms (read when `has_clip`).
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
        // PyTorch clip_grad_norm_: min(1, max_norm / (‖g‖ + 1e-6)).
        let norm = sqrt(max(squared_norm[0], 0.0));
        grad_scale = params.grad_scale * min(params.max_norm / (norm + 1e-6), 1.0);
    }
    let b1 = params.beta1;
    let b2 = params.beta2;
    let g = grad[i] * grad_scale;
    var p = param[i];
    if (params.bias_corrected != 0u) {
        p = p * (1.0 - params.lr * params.weight_decay);
    }
    let mi = b1 * m[i] + (1.0 - b1) * g;
    let vi = b2 * v[i] + (1.0 - b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    if (params.bias_corrected != 0u) {
        let denom = sqrt(vi / params.bias_correction2) + params.eps;
        p = p - params.lr * (mi / params.bias_correction1) / denom;
    } else {
        let update = mi / (sqrt(vi) + params.eps) + params.weight_decay * p;
        p = p - params.lr * update;
    }
    param[i] = p;
}
