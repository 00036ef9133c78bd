// Training attention backward, key-owned pass: one workgroup per (sequence, head, key) row
// recomputes the probabilities of its column (attention_rows.wgsl) and writes
// `dV_j = Σ_i dropout(P)[i,j]·dO_i` (padded query rows included, uniform as in the forward),
// `dK_j = Σ_i dS[i,j]/s·(Q_i + Qr[idx(i,j)])` and its row of the p2c table gradient
// `dp2c[h, b·len + j, r] = Σ_{i: idx(i,j) = r} dS[i,j]/s`, reading `drows` from the
// query-owned pass.
//
// The column's queries go in chunks of ATTN_ROWS_WG: each thread computes the terms of one query
// of the chunk into workgroup memory, then thread c adds the chunk's terms to column c of dV and
// dK (and thread 0 adds them to the p2c row), queries in order: the same sums in the same order
// as one thread per row would add them. The p2c row is the binding `dtable`
// (attention_backward_rows.wgsl sums it in workgroup memory).

@group(0) @binding(1) var<storage, read_write> dkey: array<f32>;
@group(0) @binding(2) var<storage, read_write> dvalue: array<f32>;
@group(0) @binding(3) var<storage, read_write> dtable: array<f32>;
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

// Which terms query i0 + u adds (0: none; 1: dV only, a padded query row; 2: dV, dK and p2c),
// its dropout(P) weight, dS/s (content) and dS/s at its window row (position).
var<workgroup> chunk_terms: array<u32, ATTN_ROWS_WG>;
var<workgroup> chunk_weight: array<f32, ATTN_ROWS_WG>;
var<workgroup> chunk_content: array<f32, ATTN_ROWS_WG>;
var<workgroup> chunk_position: array<f32, ATTN_ROWS_WG>;
var<workgroup> chunk_row: array<u32, ATTN_ROWS_WG>;

@compute @workgroup_size(ATTN_ROWS_WG)
fn attention_backward_key(@builtin(workgroup_id) wid: vec3<u32>,
                          @builtin(num_workgroups) nwg: vec3<u32>,
                          @builtin(local_invocation_index) lid: u32) {
    let t = wid.y * nwg.x + wid.x;
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
        table_row_clear(lid, table);
    }
    // The zeros are in place before thread 0 adds to them.
    storageBarrier();
    workgroupBarrier();
    var dk = 0.0;
    var dv = 0.0;
    for (var i0 = 0u; i0 < len; i0 += ATTN_ROWS_WG) {
        let i = i0 + lid;
        var terms = 0u;
        var weight = 0.0;
        var content = 0.0;
        var position = 0.0;
        var row_index = 0u;
        if (i < len) {
            let tq = tokens0 + i;
            let row = bh * len + i;
            let row_valid = mask[tq] != 0.0;
            // A masked key gets nothing from a valid query row.
            if (!row_valid || key_valid) {
                var p = params.uniform;
                if (row_valid) {
                    p = exp(score(tq, tk, column0, i, j) - stats[row]);
                }
                let keep = dropout_factor(row * len + j);
                terms = 1u;
                weight = p * keep;
                if (row_valid) {
                    let ds = p * (dout_dot_value(tq, tk, column0) * keep - drows[row]);
                    terms = 2u;
                    content = ds * params.inv_scale;
                    if (p2c) {
                        row_index = relative_index(i, j);
                        position = ds / params.scale;
                    }
                }
            }
        }
        chunk_terms[lid] = terms;
        chunk_weight[lid] = weight;
        chunk_content[lid] = content;
        chunk_position[lid] = position;
        chunk_row[lid] = row_index;
        workgroupBarrier();
        let count = min(ATTN_ROWS_WG, len - i0);
        if (lid < d) {
            for (var u = 0u; u < count; u += 1u) {
                let terms_u = chunk_terms[u];
                if (terms_u == 0u) {
                    continue;
                }
                let q_at = (tokens0 + i0 + u) * width + column0 + lid;
                dv += operand(chunk_weight[u]) * operand(dcontext[q_at]);
                if (terms_u == 1u) {
                    continue;
                }
                dk += operand(chunk_content[u]) * operand(query[q_at]);
                if (p2c) {
                    let r_at = (chunk_row[u] + params.first_row) * width + column0;
                    dk += operand(chunk_position[u]) * operand(pos_query[r_at + lid]);
                }
            }
        }
        if (p2c && lid == 0u) {
            for (var u = 0u; u < count; u += 1u) {
                if (chunk_terms[u] == 2u) {
                    table_row_add(table, chunk_row[u], chunk_position[u]);
                }
            }
        }
        // The chunk is read before the next one overwrites it.
        workgroupBarrier();
    }
    if (p2c) {
        table_row_store(lid, table);
    }
    if (lid < d) {
        dkey[out + lid] = dk;
        dvalue[out + lid] = dv;
    }
}
