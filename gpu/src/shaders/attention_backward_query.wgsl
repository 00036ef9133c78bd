// Training attention backward, query-owned pass: one thread per (sequence, head, query) row
// recomputes its probabilities from the logsumexp in `stats` (attention_rows.wgsl) and writes
// `drows[t] = dO_i·O_i`, `dQ_i = Σ_j dS[i,j]/s·(K_j + Kr[idx(i,j)])` and its row of the c2p
// table gradient `dc2p[h, b·len + i, r] = Σ_{j: idx(i,j) = r} dS[i,j]/s`, with
// `dS = P ∘ (dP − drows)` and `dP = dropout(dO·Vᵀ)`. Runs before the key-owned pass, which
// reads `drows`.

@group(0) @binding(1) var<storage, read_write> dquery: array<f32>;
@group(0) @binding(2) var<storage, read_write> dc2p: array<f32>;
@group(0) @binding(3) var<storage, read_write> drows: array<f32>;
@group(0) @binding(4) var<storage, read> dcontext: array<f32>;
@group(0) @binding(5) var<storage, read> context: array<f32>;
@group(0) @binding(6) var<storage, read> stats: array<f32>;
@group(0) @binding(7) var<storage, read> query: array<f32>;
@group(0) @binding(8) var<storage, read> key: array<f32>;
@group(0) @binding(9) var<storage, read> value: array<f32>;
@group(0) @binding(10) var<storage, read> pos_key: array<f32>;
@group(0) @binding(11) var<storage, read> pos_query: array<f32>;
@group(0) @binding(12) var<storage, read> index: array<u32>;
@group(0) @binding(13) var<storage, read> mask: array<f32>;

@compute @workgroup_size(ATTN_ROWS_WG)
fn attention_backward_query(@builtin(workgroup_id) wid: vec3<u32>,
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
    let width = params.width;
    let out = tq * width + column0;
    let c2p = params.has_c2p != 0u;
    let table = (h * params.batch * len + tq) * params.rows;

    var delta = 0.0;
    for (var c = 0u; c < d; c += 1u) {
        delta += dcontext[out + c] * context[out + c];
    }
    drows[t] = delta;
    if (c2p) {
        for (var r = 0u; r < params.rows; r += 1u) {
            dc2p[table + r] = 0.0;
        }
    }
    var dq: array<f32, ATTN_MAX_HEAD_DIM>;
    for (var c = 0u; c < ATTN_MAX_HEAD_DIM; c += 1u) {
        dq[c] = 0.0;
    }
    // A padded query row passes no gradient to its scores.
    if (mask[tq] != 0.0) {
        let lse = stats[t];
        for (var j = 0u; j < len; j += 1u) {
            let tk = tokens0 + j;
            if (mask[tk] == 0.0) {
                continue;
            }
            let p = exp(score(tq, tk, column0, i, j) - lse);
            let dp = dout_dot_value(tq, tk, column0) * dropout_factor(t * len + j);
            let ds = p * (dp - delta);
            let content = ds * params.inv_scale;
            let k_at = tk * width + column0;
            for (var c = 0u; c < d; c += 1u) {
                dq[c] += content * key[k_at + c];
            }
            if (c2p) {
                let r = relative_index(i, j);
                let g = ds / params.scale;
                dc2p[table + r] += g;
                let r_at = (r + params.first_row) * width + column0;
                for (var c = 0u; c < d; c += 1u) {
                    dq[c] += g * pos_key[r_at + c];
                }
            }
        }
    }
    for (var c = 0u; c < d; c += 1u) {
        dquery[out + c] = dq[c];
    }
}
