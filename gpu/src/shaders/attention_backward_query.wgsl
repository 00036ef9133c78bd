// Training attention backward, query-owned pass (attention_backward.wgsl): one workgroup per
// tile of ATTN_TILE query rows of one (sequence, head) walks the key tiles, recomputing the
// probabilities from the logsumexp in `stats`, and writes `drows[t] = dO_i·O_i`,
// `dQ_i = Σ_j dS[i,j]/s·(K_j + Kr[idx(i,j)])` and the rows of the c2p table gradient
// `dc2p[h, b·len + i, r] = Σ_{j: idx(i,j) = r} dS[i,j]/s` (the binding `dtable`), with
// `dS = P ∘ (dP − drows)` and `dP = dropout(dO·Vᵀ)`. Runs before the key-owned pass, which
// reads `drows`.

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

@compute @workgroup_size(ATTN_THREADS, ATTN_THREADS, 1)
fn attention_backward_query(@builtin(workgroup_id) wid: vec3<u32>,
                            @builtin(num_workgroups) nwg: vec3<u32>,
                            @builtin(local_invocation_id) local: vec3<u32>,
                            @builtin(local_invocation_index) lid: u32) {
    let group = wid.y * nwg.x + wid.x;
    // Uniform across the workgroup: either every thread returns or none does.
    if (group >= params.batch * params.heads * params.tiles) {
        return;
    }
    let len = params.len;
    let d = params.head_dim;
    let width = params.width;
    let bh = group / params.tiles;
    let b = bh / params.heads;
    let h = bh % params.heads;
    let i0 = (group % params.tiles) * ATTN_TILE;
    let ti = local.y;
    let tj = local.x;
    let tokens0 = b * len;
    let column0 = h * d;
    let c2p = params.has_c2p != 0u;
    let rows = tile_rows(tokens0, i0, ti);

    // drows and the logsumexp of the thread's rows (the threads of a row sum the same terms in
    // the same order).
    var delta = vec4<f32>(0.0);
    var lse = vec4<f32>(0.0);
    for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
        if (rows.inside[a]) {
            let row = bh * len + i0 + ti + ATTN_THREADS * a;
            let out = (tokens0 + i0 + ti + ATTN_THREADS * a) * width + column0;
            var x = 0.0;
            for (var c = 0u; c < d; c += 1u) {
                x += dcontext[out + c] * context[out + c];
            }
            delta[a] = x;
            lse[a] = stats[row];
            if (tj == 0u) {
                drows[row] = x;
            }
        }
    }
    // Thread `lid` owns the c2p row of query i0 + lid: zeroed here, added to by it alone.
    let own_row = i0 + lid;
    let owner = c2p && lid < ATTN_TILE && own_row < len;
    let table = (h * params.batch * len + tokens0 + own_row) * params.rows;
    if (owner) {
        for (var r = 0u; r < params.rows; r += 1u) {
            dtable[table + r] = 0.0;
        }
    }

    var acc: array<vec4<f32>, 8>;
    for (var e = 0u; e < 8u; e += 1u) {
        acc[e] = vec4<f32>(0.0);
    }
    for (var j0 = 0u; j0 < len; j0 += ATTN_TILE) {
        let pair = tile_pair(tokens0, column0, i0, j0, ti, tj, lid);
        let block = pair.scores;
        let dp = pair.dout_value;
        // dS/s (content) and dS/s (position) of the thread's block; 0 for pairs that pass no
        // gradient (padded query rows included).
        var content: array<vec4<f32>, 4>;
        var position: array<vec4<f32>, 4>;
        for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
            content[a] = vec4<f32>(0.0);
            position[a] = vec4<f32>(0.0);
            if (!rows.valid[a]) {
                continue;
            }
            let row = bh * len + i0 + ti + ATTN_THREADS * a;
            for (var bb = 0u; bb < ATTN_BLOCK; bb += 1u) {
                if (block.live[a][bb]) {
                    let p = exp(block.score[a][bb] - lse[a]);
                    let keep = dropout_factor(row * len + j0 + tj + ATTN_THREADS * bb);
                    let ds = p * (dp[a][bb] * keep - delta[a]);
                    content[a][bb] = ds * params.inv_scale;
                    position[a][bb] = ds / params.scale;
                }
            }
        }
        let count = min(ATTN_TILE, len - j0);
        // dQ += (dS/s)·K.
        stage_query_coefficients(content, ti, tj);
        stage_rows(ROWS_KEY, tokens0, column0, j0, lid);
        workgroupBarrier();
        accumulate_rows(&acc, ti, tj, count);
        workgroupBarrier();
        if (c2p) {
            // dQ += (dS/s)·Kr[idx], and the c2p rows.
            stage_query_coefficients(position, ti, tj);
            for (var g = 0u; g < COL_GROUPS; g += 1u) {
                if (4u * HALF_VECS * g >= d) {
                    break;
                }
                stage_band(ROWS_POS_KEY, column0, i0, j0, g, lid);
                workgroupBarrier();
                if (g == 0u && owner) {
                    add_table_row(table, lid, own_row, j0, count, true);
                }
                accumulate_band(&acc, g, ti, tj, count, true);
                workgroupBarrier();
            }
        }
    }

    for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
        if (rows.inside[a]) {
            let out = (tokens0 + i0 + ti + ATTN_THREADS * a) * width + column0;
            for (var g = 0u; g < COL_GROUPS; g += 1u) {
                let c = 4u * (tj + ATTN_THREADS * g);
                for (var u = 0u; u < 4u; u += 1u) {
                    if (c + u < d) {
                        dquery[out + c + u] = acc[a * COL_GROUPS + g][u];
                    }
                }
            }
        }
    }
}
