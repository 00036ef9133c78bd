// Training attention backward, key-owned pass (attention_backward.wgsl): one workgroup per tile
// of ATTN_TILE key rows of one (sequence, head) walks the query tiles, recomputing the
// probabilities of its columns, and writes `dV_j = Σ_i dropout(P)[i,j]·dO_i` (padded query rows
// included, uniform as in the forward), `dK_j = Σ_i dS[i,j]/s·(Q_i + Qr[idx(i,j)])` and the rows
// of the p2c table gradient `dp2c[h, b·len + j, r] = Σ_{i: idx(i,j) = r} dS[i,j]/s` (the binding
// `dtable`), reading `drows` from the query-owned pass.

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

@compute @workgroup_size(ATTN_THREADS, ATTN_THREADS, 1)
fn attention_backward_key(@builtin(workgroup_id) wid: vec3<u32>,
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
    let j0 = (group % params.tiles) * ATTN_TILE;
    let ti = local.y;
    let tj = local.x;
    let tokens0 = b * len;
    let column0 = h * d;
    let p2c = params.has_p2c != 0u;

    // Thread `lid` owns the p2c row of key j0 + lid: zeroed here, added to by it alone.
    let own_row = j0 + lid;
    let owner = p2c && lid < ATTN_TILE && own_row < len;
    let table = (h * params.batch * len + tokens0 + own_row) * params.rows;
    if (owner) {
        for (var r = 0u; r < params.rows; r += 1u) {
            dtable[table + r] = 0.0;
        }
    }

    var dk: array<vec4<f32>, 8>;
    var dv: array<vec4<f32>, 8>;
    for (var e = 0u; e < 8u; e += 1u) {
        dk[e] = vec4<f32>(0.0);
        dv[e] = vec4<f32>(0.0);
    }
    for (var i0 = 0u; i0 < len; i0 += ATTN_TILE) {
        let rows = tile_rows(tokens0, i0, ti);
        let pair = tile_pair(tokens0, column0, i0, j0, ti, tj, lid);
        let block = pair.scores;
        let dp = pair.dout_value;
        // The thread's block: dropout(P) (weight), dS/s (content) and dS/s (position); 0 for
        // pairs that take no part (a padded query row's are weights only).
        var weight: array<vec4<f32>, 4>;
        var content: array<vec4<f32>, 4>;
        var position: array<vec4<f32>, 4>;
        for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
            weight[a] = vec4<f32>(0.0);
            content[a] = vec4<f32>(0.0);
            position[a] = vec4<f32>(0.0);
            if (!rows.inside[a]) {
                continue;
            }
            let row = bh * len + i0 + ti + ATTN_THREADS * a;
            let valid = rows.valid[a];
            var lse = 0.0;
            var delta = 0.0;
            if (valid) {
                lse = stats[row];
                delta = drows[row];
            }
            for (var bb = 0u; bb < ATTN_BLOCK; bb += 1u) {
                if (block.live[a][bb]) {
                    var p = params.uniform;
                    if (valid) {
                        p = exp(block.score[a][bb] - lse);
                    }
                    let keep = dropout_factor(row * len + j0 + tj + ATTN_THREADS * bb);
                    weight[a][bb] = p * keep;
                    if (valid) {
                        let ds = p * (dp[a][bb] * keep - delta);
                        content[a][bb] = ds * params.inv_scale;
                        position[a][bb] = ds / params.scale;
                    }
                }
            }
        }
        let count = min(ATTN_TILE, len - i0);
        // dV += dropout(P)ᵀ·dO.
        stage_key_coefficients(weight, ti, tj);
        stage_rows(ROWS_DCONTEXT, tokens0, column0, i0, lid);
        workgroupBarrier();
        accumulate_rows(&dv, ti, tj, count);
        workgroupBarrier();
        // dK += (dS/s)ᵀ·Q.
        stage_key_coefficients(content, ti, tj);
        stage_rows(ROWS_QUERY, tokens0, column0, i0, lid);
        workgroupBarrier();
        accumulate_rows(&dk, ti, tj, count);
        workgroupBarrier();
        if (p2c) {
            // dK += (dS/s)ᵀ·Qr[idx], and the p2c rows.
            stage_key_coefficients(position, ti, tj);
            for (var g = 0u; g < COL_GROUPS; g += 1u) {
                if (4u * HALF_VECS * g >= d) {
                    break;
                }
                stage_band(ROWS_POS_QUERY, column0, i0, j0, g, lid);
                workgroupBarrier();
                if (g == 0u && owner) {
                    add_table_row(table, lid, own_row, i0, count, false);
                }
                accumulate_band(&dk, g, ti, tj, count, false);
                workgroupBarrier();
            }
        }
    }

    for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
        let j = j0 + ti + ATTN_THREADS * a;
        if (j < len) {
            let out = (tokens0 + j) * width + column0;
            for (var g = 0u; g < COL_GROUPS; g += 1u) {
                let c = 4u * (tj + ATTN_THREADS * g);
                for (var u = 0u; u < 4u; u += 1u) {
                    if (c + u < d) {
                        dkey[out + c + u] = dk[a * COL_GROUPS + g][u];
                        dvalue[out + c + u] = dv[a * COL_GROUPS + g][u];
                    }
                }
            }
        }
    }
}
