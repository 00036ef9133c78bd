// Training attention backward, key-owned pass: one thread per (sequence, head, key) row
// recomputes the probabilities of its column (attention_rows.wgsl) and writes
// `dV_j = Σ_i dropout(P)[i,j]·dO_i` (padded query rows included, uniform as in the forward),
// `dK_j = Σ_i dS[i,j]/s·(Q_i + Qr[idx(i,j)])` and its row of the p2c table gradient
// `dp2c[h, b·len + j, r] = Σ_{i: idx(i,j) = r} dS[i,j]/s`, reading `drows` from the
// query-owned pass.

@group(0) @binding(1) var<storage, read_write> dkey: array<f32>;
@group(0) @binding(2) var<storage, read_write> dvalue: array<f32>;
@group(0) @binding(3) var<storage, read_write> dp2c: array<f32>;
@group(0) @binding(4) var<storage, read> dcontext: array<f32>;
@group(0) @binding(5) var<storage, read> drows: array<f32>;
@group(0) @binding(6) var<storage, read> stats: array<f32>;
@group(0) @binding(7) var<storage, read> query: array<f32>;
@group(0) @binding(8) var<storage, read> key: array<f32>;
@group(0) @binding(9) var<storage, read> value: array<f32>;
@group(0) @binding(10) var<storage, read> pos_key: array<f32>;
@group(0) @binding(11) var<storage, read> pos_query: array<f32>;
@group(0) @binding(12) var<storage, read> index: array<u32>;
@group(0) @binding(13) var<storage, read> mask: array<f32>;

@compute @workgroup_size(ATTN_ROWS_WG)
fn attention_backward_key(@builtin(workgroup_id) wid: vec3<u32>,
                          @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let t = (wid.y * nwg.x + wid.x) * ATTN_ROWS_WG + lid;
    let len = params.len;
    if (t >= params.batch * params.heads * len) {
        return;
    }
    let j = t % len;
    let bh = t / len;
    let b = bh / params.heads;
    let h = bh % params.heads;
    let tokens0 = b * len;
    let tk = tokens0 + j;
    let column0 = h * params.head_dim;
    let d = params.head_dim;
    let width = params.width;
    let out = tk * width + column0;
    let p2c = params.has_p2c != 0u;
    let table = (h * params.batch * len + tk) * params.rows;
    let key_valid = mask[tk] != 0.0;

    if (p2c) {
        for (var r = 0u; r < params.rows; r += 1u) {
            dp2c[table + r] = 0.0;
        }
    }
    var dk: array<f32, ATTN_MAX_HEAD_DIM>;
    var dv: array<f32, ATTN_MAX_HEAD_DIM>;
    for (var c = 0u; c < ATTN_MAX_HEAD_DIM; c += 1u) {
        dk[c] = 0.0;
        dv[c] = 0.0;
    }
    for (var i = 0u; i < len; i += 1u) {
        let tq = tokens0 + i;
        let row = bh * len + i;
        let row_valid = mask[tq] != 0.0;
        if (row_valid && !key_valid) {
            continue;
        }
        var p = params.uniform;
        if (row_valid) {
            p = exp(score(tq, tk, column0, i, j) - stats[row]);
        }
        let keep = dropout_factor(row * len + j);
        let w = p * keep;
        let q_at = tq * width + column0;
        for (var c = 0u; c < d; c += 1u) {
            dv[c] += w * dcontext[q_at + c];
        }
        if (!row_valid) {
            continue;
        }
        let ds = p * (dout_dot_value(tq, tk, column0) * keep - drows[row]);
        let content = ds * params.inv_scale;
        for (var c = 0u; c < d; c += 1u) {
            dk[c] += content * query[q_at + c];
        }
        if (p2c) {
            let r = relative_index(i, j);
            let g = ds / params.scale;
            dp2c[table + r] += g;
            let r_at = (r + params.first_row) * width + column0;
            for (var c = 0u; c < d; c += 1u) {
                dk[c] += g * pos_query[r_at + c];
            }
        }
    }
    for (var c = 0u; c < d; c += 1u) {
        dkey[out + c] = dk[c];
        dvalue[out + c] = dv[c];
    }
}
