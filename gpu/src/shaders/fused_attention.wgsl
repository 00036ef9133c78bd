// Fused disentangled self-attention forward, for inference and for training (philox.wgsl,
// f16_round.wgsl and attention_tile.wgsl are prepended): for one (sequence, head) and a tile of
// ATTN_TILE queries, one pass over the keys in tiles of ATTN_TILE computes the scores of the
// tile pair (attention_tile.wgsl), folds them into an online softmax (running max and sum per
// query) and accumulates P·V, writing only the context.
//
// Training (the forward of the fused training attention, attention_backward.wgsl): with dropout
// the probabilities are multiplied by the dropout mask of element ((b·heads + h)·len + i)·len + j
// before P·V (the row sums are of the kept-and-dropped probabilities alike), and with `stats`
// each query row's logsumexp `m + log(l)` goes to stats[(b·heads + h)·len + i], which the
// backward recomputes the probabilities from. Under mixed precision (`f16_operands`) every
// operand of a product is rounded to binary16 as it is loaded: Q, K, V, Kr, Qr and the
// unnormalised probabilities P·V multiplies; the sums, the softmax and its statistics stay f32.
//
// Threads. In the P·V step thread (ti, tj) owns the rows of its score block and the column
// groups tj, tj + ATTN_THREADS of the head (four columns each), so a row's running max and sum
// are kept, identically, by the threads of that row. Workgroup memory holds either the chunks
// of the score phase or the value tile and the probabilities of the P·V phase (one array,
// reused), plus the per-thread partial row maxima and sums: 14.3 KB, under WebGPU's 16 KB
// default. Heads wider than ATTN_MAX_HEAD_DIM use the unfused kernels (the host decides).

// The staging array (attention_tile.wgsl), 12 KiB: with the partial maxima and sums below, under
// WebGPU's 16 KiB of workgroup memory.
const SHARED_VECS: u32 = 768u;
var<workgroup> staged: array<vec4<f32>, SHARED_VECS>;

// P·V phase layout of `staged`: value tile [key][head vector], probabilities [key][ti] as vec4
// over a.
const V_AT: u32 = 0u;
const P_AT: u32 = V_AT + ATTN_TILE * HEAD_VECS;
const PV_PHASE: u32 = P_AT + ATTN_TILE * ATTN_THREADS;
const_assert PV_PHASE <= SHARED_VECS;

@group(0) @binding(1) var<storage, read_write> context: array<f32>;
@group(0) @binding(2) var<storage, read_write> stats: array<f32>;
@group(0) @binding(3) var<storage, read> query: array<f32>;
@group(0) @binding(4) var<storage, read> key: array<f32>;
@group(0) @binding(5) var<storage, read> value: array<f32>;
@group(0) @binding(6) var<storage, read> pos_key: array<f32>;
@group(0) @binding(7) var<storage, read> pos_query: array<f32>;
@group(0) @binding(8) var<storage, read> index: array<u32>;
@group(0) @binding(9) var<storage, read> mask: array<f32>;

// Partial row maxima and sums of one key tile: [ti][tj], vec4 over the thread's rows a.
var<workgroup> partial_max: array<vec4<f32>, THREADS>;
var<workgroup> partial_sum: array<vec4<f32>, THREADS>;

@compute @workgroup_size(ATTN_THREADS, ATTN_THREADS, 1)
fn fused_attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
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
    let rows = tile_rows(tokens0, i0, ti);

    var row_max = vec4<f32>(LOWEST);
    var row_sum = vec4<f32>(0.0);
    // acc[a * COL_GROUPS + g]: row a, head columns 4·(tj + ATTN_THREADS·g) ..
    var acc: array<vec4<f32>, 8>;
    for (var e = 0u; e < 8u; e += 1u) {
        acc[e] = vec4<f32>(0.0);
    }

    for (var j0 = 0u; j0 < len; j0 += ATTN_TILE) {
        let block = tile_scores(tokens0, column0, i0, j0, ti, tj, lid);
        let score = block.score;
        let live = block.live;
        // This thread's partial row maxima.
        var local_max = vec4<f32>(LOWEST);
        for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
            local_max[a] = max(max(score[a].x, score[a].y), max(score[a].z, score[a].w));
        }
        partial_max[ti * ATTN_THREADS + tj] = local_max;
        // The value tile (over the score-phase chunks, which every thread is done reading).
        for (var e = lid; e < ATTN_TILE * HEAD_VECS; e += THREADS) {
            let r = e / HEAD_VECS;
            let c = 4u * (e % HEAD_VECS);
            var v = vec4<f32>(0.0);
            if (j0 + r < len && c < d) {
                v = row4(ROWS_VALUE, (tokens0 + j0 + r) * width + column0, c);
            }
            staged[V_AT + e] = v;
        }
        workgroupBarrier();

        // Online softmax: the tile's row maxima, the rescaling of what was accumulated, and
        // this tile's probabilities, stored [key][ti] as vec4 over the thread's rows.
        var tile_max = vec4<f32>(LOWEST);
        for (var c = 0u; c < ATTN_THREADS; c += 1u) {
            tile_max = max(tile_max, partial_max[ti * ATTN_THREADS + c]);
        }
        let new_max = max(row_max, tile_max);
        let correction = exp(row_max - new_max);
        row_max = new_max;
        row_sum = row_sum * correction;
        for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
            for (var g = 0u; g < COL_GROUPS; g += 1u) {
                acc[a * COL_GROUPS + g] = acc[a * COL_GROUPS + g] * correction[a];
            }
        }
        var p: array<vec4<f32>, 4>;
        var local_sum = vec4<f32>(0.0);
        for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
            p[a] = select(vec4<f32>(0.0), exp(score[a] - vec4<f32>(new_max[a])), live[a]);
            local_sum[a] = (p[a].x + p[a].y) + (p[a].z + p[a].w);
        }
        partial_sum[ti * ATTN_THREADS + tj] = local_sum;
        if (params.has_dropout != 0u) {
            for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
                let row = (bh * len + i0 + ti + ATTN_THREADS * a) * len;
                for (var bb = 0u; bb < ATTN_BLOCK; bb += 1u) {
                    if (live[a][bb]) {
                        p[a][bb] *= dropout_factor(row + j0 + tj + ATTN_THREADS * bb);
                    }
                }
            }
        }
        // The (unnormalised, dropped) probabilities as P·V's operand.
        for (var bb = 0u; bb < ATTN_BLOCK; bb += 1u) {
            staged[P_AT + (tj + ATTN_THREADS * bb) * ATTN_THREADS + ti] =
                operand4(vec4<f32>(p[0][bb], p[1][bb], p[2][bb], p[3][bb]));
        }
        workgroupBarrier();

        // The row sums (every thread of a row adds the same partials in the same order), then
        // P·V for the thread's rows and column groups.
        for (var c = 0u; c < ATTN_THREADS; c += 1u) {
            row_sum += partial_sum[ti * ATTN_THREADS + c];
        }
        let keys = min(ATTN_TILE, len - j0);
        for (var j = 0u; j < keys; j += 1u) {
            let pj = staged[P_AT + j * ATTN_THREADS + ti];
            for (var g = 0u; g < COL_GROUPS; g += 1u) {
                let column = tj + ATTN_THREADS * g;
                if (4u * column < d) {
                    let v = staged[V_AT + j * HEAD_VECS + column];
                    for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
                        acc[a * COL_GROUPS + g] += pj[a] * v;
                    }
                }
            }
        }
        workgroupBarrier();
    }

    for (var a = 0u; a < ATTN_BLOCK; a += 1u) {
        if (rows.inside[a]) {
            let i = i0 + ti + ATTN_THREADS * a;
            if (params.has_stats != 0u && tj == 0u) {
                stats[bh * len + i] = row_max[a] + log(row_sum[a]);
            }
            let out = (tokens0 + i) * width + column0;
            let inv = 1.0 / row_sum[a];
            for (var g = 0u; g < COL_GROUPS; g += 1u) {
                let c = 4u * (tj + ATTN_THREADS * g);
                let x = acc[a * COL_GROUPS + g] * inv;
                for (var u = 0u; u < 4u; u += 1u) {
                    if (c + u < d) {
                        context[out + c + u] = x[u];
                    }
                }
            }
        }
    }
}
