// Training attention backward, query-owned pass: one workgroup per (sequence, head, query) row
// recomputes its probabilities from the logsumexp in `stats` (attention_rows.wgsl) and writes
// `drows[t] = dO_i·O_i`, `dQ_i = Σ_j dS[i,j]/s·(K_j + Kr[idx(i,j)])` and its row of the c2p
// table gradient `dc2p[h, b·len + i, r] = Σ_{j: idx(i,j) = r} dS[i,j]/s`, with
// `dS = P ∘ (dP − drows)` and `dP = dropout(dO·Vᵀ)`. Runs before the key-owned pass, which
// reads `drows`.
//
// The row's keys go in chunks of ATTN_ROWS_WG: each thread computes the score terms of one key
// of the chunk into workgroup memory, then thread c adds the chunk's terms to column c of dQ
// (and thread 0 adds them to the c2p row), keys in order: the same sums in the same order as one
// thread per row would add them, with a head's columns spread over the threads instead of held
// in one thread's array. The c2p row is the binding `dtable` (attention_backward_rows.wgsl sums
// it in workgroup memory).

@group(0) @binding(1) var<storage, read_write> dquery: array<f32>;
@group(0) @binding(2) var<storage, read_write> dtable: array<f32>;
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

// One chunk of keys: whether key j0 + u passes a gradient, dS/s (content) and dS/s at its
// window row (position).
var<workgroup> chunk_live: array<u32, ATTN_ROWS_WG>;
var<workgroup> chunk_content: array<f32, ATTN_ROWS_WG>;
var<workgroup> chunk_position: array<f32, ATTN_ROWS_WG>;
var<workgroup> chunk_row: array<u32, ATTN_ROWS_WG>;

@compute @workgroup_size(ATTN_ROWS_WG)
fn attention_backward_query(@builtin(workgroup_id) wid: vec3<u32>,
                            @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_index) lid: u32) {
    let t = wid.y * nwg.x + wid.x;
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

    // Every thread sums the same terms in the same order: the same value in all.
    var delta = 0.0;
    for (var c = 0u; c < d; c += 1u) {
        delta += dcontext[out + c] * context[out + c];
    }
    if (lid == 0u) {
        drows[t] = delta;
    }
    if (c2p) {
        table_row_clear(lid, table);
    }
    // The zeros are in place before thread 0 adds to them.
    storageBarrier();
    workgroupBarrier();
    // A padded query row passes no gradient to its scores.
    let row_valid = mask[tq] != 0.0;
    let lse = stats[t];
    var dq = 0.0;
    for (var j0 = 0u; j0 < len; j0 += ATTN_ROWS_WG) {
        let j = j0 + lid;
        var live = 0u;
        var content = 0.0;
        var position = 0.0;
        var row = 0u;
        if (row_valid && j < len && mask[tokens0 + j] != 0.0) {
            let tk = tokens0 + j;
            let p = exp(score(tq, tk, column0, i, j) - lse);
            let dp = dout_dot_value(tq, tk, column0) * dropout_factor(t * len + j);
            let ds = p * (dp - delta);
            live = 1u;
            content = ds * params.inv_scale;
            if (c2p) {
                row = relative_index(i, j);
                position = ds / params.scale;
            }
        }
        chunk_live[lid] = live;
        chunk_content[lid] = content;
        chunk_position[lid] = position;
        chunk_row[lid] = row;
        workgroupBarrier();
        let count = min(ATTN_ROWS_WG, len - j0);
        if (lid < d) {
            for (var u = 0u; u < count; u += 1u) {
                if (chunk_live[u] == 0u) {
                    continue;
                }
                dq += operand(chunk_content[u])
                    * operand(key[(tokens0 + j0 + u) * width + column0 + lid]);
                if (c2p) {
                    let r_at = (chunk_row[u] + params.first_row) * width + column0;
                    dq += operand(chunk_position[u]) * operand(pos_key[r_at + lid]);
                }
            }
        }
        if (c2p && lid == 0u) {
            for (var u = 0u; u < count; u += 1u) {
                if (chunk_live[u] != 0u) {
                    table_row_add(table, chunk_row[u], chunk_position[u]);
                }
            }
        }
        // The chunk is read before the next one overwrites it.
        workgroupBarrier();
    }
    if (c2p) {
        table_row_store(lid, table);
    }
    if (lid < d) {
        dquery[out + lid] = dq;
    }
}
