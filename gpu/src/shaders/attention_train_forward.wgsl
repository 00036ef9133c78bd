// Training attention forward: one thread per (sequence, head, query) row, an online softmax over
// the keys (attention_rows.wgsl), the context of the dropped probabilities and the row's
// logsumexp into `stats` [batch, heads, len].

@group(0) @binding(1) var<storage, read_write> context: array<f32>;
@group(0) @binding(2) var<storage, read_write> stats: array<f32>;
@group(0) @binding(3) var<storage, read> query: array<f32>;
@group(0) @binding(4) var<storage, read> key: array<f32>;
@group(0) @binding(5) var<storage, read> value: array<f32>;
@group(0) @binding(6) var<storage, read> pos_key: array<f32>;
@group(0) @binding(7) var<storage, read> pos_query: array<f32>;
@group(0) @binding(8) var<storage, read> index: array<u32>;
@group(0) @binding(9) var<storage, read> mask: array<f32>;

@compute @workgroup_size(ATTN_ROWS_WG)
fn attention_train_forward(@builtin(workgroup_id) wid: vec3<u32>,
                           @builtin(num_workgroups) nwg: vec3<u32>,
                           @builtin(local_invocation_index) lid: u32) {
    let t = (wid.y * nwg.x + wid.x) * ATTN_ROWS_WG + lid;
    let len = params.len;
    if (t >= params.batch * params.heads * len) {
        return;
    }
    let i = t % len;
    let bh = t / len;
    let b = bh / params.heads;
    let h = bh % params.heads;
    let tokens0 = b * len;
    let tq = tokens0 + i;
    let column0 = h * params.head_dim;
    let d = params.head_dim;
    let row_valid = mask[tq] != 0.0;

    var m = LOWEST;
    var l = 0.0;
    var acc: array<f32, ATTN_MAX_HEAD_DIM>;
    for (var c = 0u; c < ATTN_MAX_HEAD_DIM; c += 1u) {
        acc[c] = 0.0;
    }
    for (var j = 0u; j < len; j += 1u) {
        let tk = tokens0 + j;
        // A padded query attends uniformly to every key (score 0); a valid one to the valid
        // keys only.
        var x = 0.0;
        if (row_valid) {
            if (mask[tk] == 0.0) {
                continue;
            }
            x = score(tq, tk, column0, i, j);
        }
        let new_max = max(m, x);
        let correction = exp(m - new_max);
        let p = exp(x - new_max);
        m = new_max;
        l = l * correction + p;
        let w = p * dropout_factor(t * len + j);
        let v_at = tk * params.width + column0;
        for (var c = 0u; c < d; c += 1u) {
            acc[c] = acc[c] * correction + w * value[v_at + c];
        }
    }
    let out = tq * params.width + column0;
    let inv = 1.0 / l;
    for (var c = 0u; c < d; c += 1u) {
        context[out + c] = acc[c] * inv;
    }
    stats[t] = m + log(l);
}
