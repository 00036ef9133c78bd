// The Adam/XAdam update of up to ADAM_SOURCES tensors of one optimizer in one dispatch (adam.wgsl,
// prepended, updates each element, as the one-tensor kernel does: the same bits). The grid
// holds every source's workgroups one after the other: workgroup first_group[t] + g updates
// elements g·ELEMENTWISE_WG .. of source t, at its own rates (the learning rate of its parameter
// group and its weight decay); the gradients are scaled by the optimizer's one clipping
// coefficient.

const ADAM_SOURCES: u32 = 7u;

struct Params {
    count: u32,
    bias_corrected: u32,
    has_clip: u32,
    _pad0: u32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    bias_correction2_sqrt: f32,
    grad_scale: f32,
    max_norm: f32,
    // Per source t, at [t / 4][t % 4] (sources past `count` are not read): its elements, its
    // first workgroup in the grid, and its rates (AdamConstants).
    n: array<vec4<u32>, 2>,
    first_group: array<vec4<u32>, 2>,
    weight_decay: array<vec4<f32>, 2>,
    step_size: array<vec4<f32>, 2>,
    decay_factor: array<vec4<f32>, 2>,
}

@group(0) @binding(0) var<uniform> params: Params;
// One element: Σ g² over every parameter of the optimizer (read when `has_clip`).
@group(0) @binding(1) var<storage, read> squared_norm: array<f32>;
// Each source's bindings, `param{t}`, `m{t}`, `v{t}` and `grad{t}` (bindings 2 + 4t ..), and
// `update_source(t, i, scale, c)`, which updates element i of source t with its gradient
// scaled by `scale`: a chain of tests of t (the same for the whole workgroup) whose every
// branch reads and writes its own bindings, written out by the host (gpu/src/kernels.rs). (A
// chain rather than a switch: lavapipe runs the cases of a switch for every invocation, their
// accesses masked, and took twice as long as with the chain.)
// @sources

@compute @workgroup_size(ELEMENTWISE_WG)
fn adam_update_many(@builtin(workgroup_id) wid: vec3<u32>,
                    @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) lid: u32) {
    let w = wid.y * nwg.x + wid.x;
    // The last source that starts at or before this workgroup (the same for every thread).
    var t = 0u;
    for (var u = 1u; u < params.count; u += 1u) {
        if (params.first_group[u / 4u][u % 4u] <= w) {
            t = u;
        }
    }
    let i = (w - params.first_group[t / 4u][t % 4u]) * ELEMENTWISE_WG + lid;
    if (i >= params.n[t / 4u][t % 4u]) {
        return;
    }
    let has_clip = params.has_clip != 0u;
    var norm = 0.0;
    if (has_clip) {
        norm = squared_norm[0];
    }
    let scale = clipped_grad_scale(params.grad_scale, has_clip, norm, params.max_norm);
    let c = AdamConstants(params.bias_corrected != 0u, params.beta1, params.one_minus_beta1,
                          params.beta2, params.one_minus_beta2, params.eps,
                          params.weight_decay[t / 4u][t % 4u], params.step_size[t / 4u][t % 4u],
                          params.bias_correction2_sqrt, params.decay_factor[t / 4u][t % 4u]);
    update_source(t, i, scale, c);
}
