// The Adam/XAdam update of one tensor (adam.wgsl, prepended, updates each element), the
// gradient scaled by the global-norm clipping coefficient computed on the device from the
// global Σ g² (one element).

struct Params {
    n: u32,
    bias_corrected: u32,
    has_clip: u32,
    _pad0: u32,
    lr: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    weight_decay: f32,
    step_size: f32,
    bias_correction2_sqrt: f32,
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
    let has_clip = params.has_clip != 0u;
    var norm = 0.0;
    if (has_clip) {
        norm = squared_norm[0];
    }
    let g = grad[i] * clipped_grad_scale(params.grad_scale, has_clip, norm, params.max_norm);
    let c = AdamConstants(params.bias_corrected != 0u, params.beta1, params.one_minus_beta1,
                          params.beta2, params.one_minus_beta2, params.eps, params.weight_decay,
                          params.step_size, params.bias_correction2_sqrt, params.decay_factor);
    let updated = adam_element(param[i], m[i], v[i], g, c);
    param[i] = updated.x;
    m[i] = updated.y;
    v[i] = updated.z;
}
