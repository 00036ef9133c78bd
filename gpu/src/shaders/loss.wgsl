// Loss kernels: per-row cross-entropy with the gradient of its logits (one workgroup per row,
// fixed-order workgroup reductions: row_reduce.wgsl, prepended) and per-token BCE-with-logits (one
// thread per token).

const ELEMENTWISE_WG: u32 = 256u;

struct Params {
    rows: u32,
    vocab: u32,
    grad_scale: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> losses: array<f32>;
@group(0) @binding(2) var<storage, read_write> dlogits: array<f32>;
@group(0) @binding(3) var<storage, read> logits: array<f32>;
// cross_entropy: the target ids (as u32). bce_with_logits: labels then weights.
@group(0) @binding(4) var<storage, read> targets: array<u32>;
@group(0) @binding(4) var<storage, read> labels: array<f32>;
@group(0) @binding(5) var<storage, read> weights: array<f32>;

// losses[r] = lse(z) − z[t]; dlogits = (softmax(z) − onehot(t))·grad_scale. A target beyond the
// vocabulary (ids are validated on the host) gives a NaN loss.
@compute @workgroup_size(ROW_WG)
fn cross_entropy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                 thread: RowThread) {
    let lid = row_thread(thread);
    let row = workgroup_index(wid, nwg);
    if (row >= params.rows) {
        return;
    }
    let vocab = params.vocab;
    let base = row * vocab;
    var m = -3.4028235e38;
    for (var c = lid; c < vocab; c += ROW_WG) {
        m = max(m, logits[base + c]);
    }
    let row_max = workgroup_max(lid, m);
    var s = 0.0;
    for (var c = lid; c < vocab; c += ROW_WG) {
        let e = exp(logits[base + c] - row_max);
        dlogits[base + c] = e;
        s += e;
    }
    let total = workgroup_sum(lid, s);
    let t = targets[row];
    let inv = params.grad_scale / total;
    for (var c = lid; c < vocab; c += ROW_WG) {
        var d = dlogits[base + c] * inv;
        if (c == t) {
            d -= params.grad_scale;
        }
        dlogits[base + c] = d;
    }
    if (lid == 0u) {
        if (t < vocab) {
            losses[row] = log(total) + row_max - logits[base + t];
        } else {
            losses[row] = bitcast<f32>(0x7fc00000u);
        }
    }
}

// log(1 + x) for x in [0, 1], accurate near 0.
fn log1p_small(x: f32) -> f32 {
    let u = 1.0 + x;
    if (u == 1.0) {
        return x;
    }
    return log(u) * (x / (u - 1.0));
}

@compute @workgroup_size(ELEMENTWISE_WG)
fn bce_with_logits(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let i = workgroup_index(wid, nwg) * ELEMENTWISE_WG + lid;
    if (i >= params.rows) {
        return;
    }
    let z = logits[i];
    let y = labels[i];
    let w = weights[i];
    losses[i] = w * (max(z, 0.0) - z * y + log1p_small(exp(-abs(z))));
    let sigmoid = 1.0 / (1.0 + exp(-z));
    dlogits[i] = w * (sigmoid - y) * params.grad_scale;
}
